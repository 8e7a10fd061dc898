//! Transcode: the `transcode` job kind on the shared durable queue and the worker that turns an
//! uploaded source into the H.264/AAC ladder, handing encoded samples to the packager.
//!
//! Position in the data flow: ingest (enqueues) → **transcode** → packager (publishes). A job
//! may start while its upload is still arriving: its input is a byte stream over the upload's
//! durable extent ([`source`]), and the container's first bytes decide whether it can be read
//! that way ([`container`]). The ladder policy, rotation and container sniffing are plain
//! functions ([`ladder`], [`rotate`], [`container`]); every ffmpeg-next call is in [`media`]
//! (and the few raw fields it needs in `ffi`). It serves no HTTP: the moment status routes are
//! the packager's, next to the origin whose URLs they hand out.

pub mod container;
mod ffi;
pub mod job;
pub mod ladder;
pub mod media;
pub mod pick;
pub mod poster;
pub mod preview;
pub mod rotate;
pub mod source;

use serde::Deserialize;

/// The `worker` role's share of this crate: the `transcode` job pool (`config.workers` at
/// once) the `poster` job (the owner's choice of frame, one at a time) and the `preview` job (the
/// animated preview, one at a time). `growing` reads an upload's durable bytes while it is still arriving. Only this
/// initialises FFmpeg, so a process without the worker role never does.
pub fn jobs(
    shared: &common::service::Shared,
    config: &Config,
    packager: &packager::Config,
    growing: std::sync::Arc<dyn common::store::growing::Growing>,
) -> common::service::Service {
    let transcoder = job::Transcoder::new(
        shared.queue.clone(),
        shared.db.clone(),
        shared.store.clone(),
        growing,
        config.clone(),
        packager.clone(),
        Some(job::TranscodeMetrics::register(&shared.metrics)),
    );
    common::service::Service::pool("transcode", vec![job::handler(transcoder)], config.workers)
        .merge(common::service::Service::pool(
            "poster",
            vec![std::sync::Arc::new(pick::Picker::new(
                shared.db.clone(),
                shared.store.clone(),
            ))],
            1,
        ))
        .merge(common::service::Service::pool(
            "preview",
            vec![std::sync::Arc::new(preview::Previewer::new(
                shared.db.clone(),
                shared.store.clone(),
            ))],
            1,
        ))
}

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
    /// Make captions: keep the audio as 16 kHz mono while transcoding and queue a `captions`
    /// job once the moment is ready (`MOMENTS_CAPTIONS`). Never delays `ready`.
    pub captions: bool,
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
            captions: true,
            rungs: ladder::default_rungs(),
        }
    }
}
