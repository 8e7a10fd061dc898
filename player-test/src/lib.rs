//! player-test: an adaptive HLS player harness that tests the service from outside, over HTTP
//! only. It depends on nothing of the server (it must stay a pure client): it reads playlists
//! with an independent parser (m3u8-rs), picks rungs with a documented ABR rule ([`abr`]),
//! downloads segments in order while simulating playback and a buffer under a bandwidth trace
//! ([`trace`], [`player`]), and checks what it reads with FFmpeg's own tools ([`decode`]).

#![forbid(unsafe_code)]

pub mod abr;
pub mod decode;
pub mod hls;
pub mod player;
pub mod trace;

pub use player::{Options, Report, play};
