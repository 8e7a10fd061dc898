//! Transcode: the `transcode` job kind on the shared durable queue and the worker that turns an
//! uploaded source into the H.264/AAC ladder, handing encoded samples to the packager.
//!
//! Position in the data flow: ingest (enqueues) → **transcode** → packager (publishes). A job
//! may start while its upload is still arriving: its input is a byte stream over the upload's
//! durable extent ([`source`]), and the container's first bytes decide whether it can be read
//! that way ([`container`]). The ladder policy, rotation and container sniffing are plain
//! functions ([`ladder`], [`rotate`], [`container`]); every ffmpeg-next call is in [`media`]
//! (and the few raw fields it needs in `ffi`). It must never serve HTTP itself beyond the
//! moment status routes in [`api`].

pub mod api;
pub mod container;
mod ffi;
pub mod job;
pub mod ladder;
pub mod media;
pub mod rotate;
pub mod source;

use serde::Deserialize;

/// `[transcode]` section.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// x264 preset (`MOMENTS_X264_PRESET`).
    pub x264_preset: String,
    /// Threads per x264 encoder; 0 lets x264 decide.
    pub x264_threads: u32,
    /// Transcode jobs one process runs at once.
    pub workers: usize,
    /// Longest accepted video (seconds).
    pub max_duration_secs: f64,
    /// Shortest accepted video (seconds).
    pub min_duration_secs: f64,
    /// Largest accepted width or height.
    pub max_dimension: u32,
    /// Longest a single transcode attempt may run (seconds).
    pub job_time_limit_secs: u64,
    /// Start on uploads while they arrive, when a worker has nothing else to do
    /// (`MOMENTS_TRANSCODE_STREAMING`).
    pub streaming: bool,
    /// A streaming transcode whose upload brings no new bytes for this long gives its worker
    /// back and waits (seconds).
    pub stream_idle_secs: u64,
    /// A streaming transcode gives its worker back when a job of a finished upload has waited
    /// this long for one (seconds).
    pub stream_yield_secs: u64,
    /// The ladder.
    pub rungs: Vec<ladder::RungSpec>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            x264_preset: "veryfast".into(),
            x264_threads: 0,
            workers: 1,
            max_duration_secs: 600.0,
            min_duration_secs: 0.5,
            max_dimension: 8192,
            job_time_limit_secs: 1800,
            streaming: true,
            stream_idle_secs: 20,
            stream_yield_secs: 2,
            rungs: ladder::default_rungs(),
        }
    }
}
