//! Transcode: the `transcode` job kind on the shared durable queue and the worker that turns an
//! uploaded source into the H.264/AAC ladder, handing encoded samples to the packager.
//!
//! Position in the data flow: ingest (enqueues) → **transcode** → packager (publishes). The
//! ladder policy and rotation are plain functions ([`ladder`], [`rotate`]); every ffmpeg-next
//! call is in [`media`] (and the two raw fields it needs in `ffi`). It must never serve
//! HTTP itself beyond the moment status routes in [`api`].

pub mod api;
mod ffi;
pub mod job;
pub mod ladder;
pub mod media;
pub mod rotate;

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
    /// Where sources fetched from remote storage are staged (default: the system temp dir).
    pub work_dir: Option<std::path::PathBuf>,
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
            work_dir: None,
            rungs: ladder::default_rungs(),
        }
    }
}
