//! Ingest: resumable uploads of moments with tus 1.0.0 (creation, creation-with-upload,
//! checksum, termination, expiration) and the IETF resumable-upload draft (interop versions
//! 3–8: iOS 17+ URLSession speaks it natively) over HTTP/1.1, HTTP/2 and HTTP/3 through one
//! handler, and the `moments upload` client.
//!
//! Position in the data flow: phone → **ingest** → transcode queue. The protocol rules are a
//! core without I/O ([`tus`]); the handler ([`handler`]) streams bodies into durable storage
//! ([`sink`]) and records progress ([`record`]); a completed upload queues its transcode in the
//! same database transaction. It must never decode media.

#![forbid(unsafe_code)]

pub mod assemble;
pub mod client;
mod draft;
pub mod handler;
pub mod record;
pub mod rufh;
pub mod sink;
pub mod tus;

use serde::Deserialize;

/// The `ingest` role's share of this crate: the tus and draft routes (`/files`) and the
/// sweeper that removes expired uploads. `part_size` is the store's S3 multipart part size.
/// Nothing of an upload lives in this process between requests (the lock, offsets and S3
/// parts are in the database and the store), so any ingest node resumes any upload.
pub fn service(
    shared: &common::service::Shared,
    config: &Config,
    part_size: u64,
) -> common::service::Service {
    let state = handler::IngestState::new(
        shared.clone(),
        config.clone(),
        part_size,
        handler::IngestMetrics::register(&shared.metrics),
    );
    let sweeper = state.clone();
    common::service::Service::routes(handler::router(state)).with_task(Box::new(move |stop| {
        tokio::spawn(handler::sweep_expired(sweeper, stop))
    }))
}

/// The `worker` role's share: assembling completed S3 uploads from their parts.
pub fn jobs(shared: &common::service::Shared) -> common::service::Service {
    common::service::Service::pool(
        "uploads",
        vec![assemble::handler(shared.db.clone(), shared.store.clone())],
        1,
    )
}

/// `[ingest]` section.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Largest accepted upload (bytes; advertised as `Tus-Max-Size`).
    pub max_size: u64,
    /// Unfinished uploads expire this long after their last progress (seconds).
    pub expires_secs: u64,
    /// Unfinished uploads one user may have at once.
    pub max_active_per_user: u32,
    /// A writer silent this long loses the upload's lock to a new request (seconds).
    pub stale_lock_secs: u64,
    /// A request body silent this long is ended, keeping what is durable (seconds).
    pub body_idle_secs: u64,
    /// A request body slower than this (bytes per second, averaged over `body_rate_window_secs`)
    /// is ended the same way, so a trickling client cannot hold the upload's lock and a
    /// connection for ever. 0: no minimum.
    pub body_min_rate: u64,
    /// The window `body_min_rate` is measured over (seconds).
    pub body_rate_window_secs: u64,
    /// Without a checksum, progress is made durable at least every this many bytes…
    pub commit_every_bytes: u64,
    /// …and at least this often while bytes arrive (milliseconds), so a transcode reading the
    /// growing upload is never far behind the network (on S3 only whole parts count mid-request).
    pub commit_every_ms: u64,
    /// How often expired uploads are swept (seconds).
    pub cleanup_interval_secs: u64,
    /// On S3, parts of one request being stored at once while the body keeps arriving; with
    /// the part being filled, at most this many plus one parts are held in memory per request.
    pub s3_parts_in_flight: usize,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            max_size: 2 * 1024 * 1024 * 1024,
            expires_secs: 24 * 3600,
            max_active_per_user: 5,
            stale_lock_secs: 10,
            body_idle_secs: 30,
            // 2G's worst is some kB/s; 1 byte per second is an attack, not a phone
            body_min_rate: 256,
            body_rate_window_secs: 30,
            commit_every_bytes: 4 * 1024 * 1024,
            commit_every_ms: 500,
            cleanup_interval_secs: 60,
            s3_parts_in_flight: 4,
        }
    }
}
