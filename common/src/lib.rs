//! Shared plumbing for every Moments crate: configuration loading, the object store (local
//! directory or S3), the metadata database (SQLite or PostgreSQL), bearer-token auth, metrics,
//! ids, the HTTP error type, and serving one router over HTTP/1.1, HTTP/2 and HTTP/3.
//!
//! Sits at the bottom of the dependency graph: `moments` → {ingest, transcode, packager,
//! asr-tts} → `common`. It must never know about media, uploads or speech — only the plumbing
//! those rooms share.

#![forbid(unsafe_code)]

pub mod api;
pub mod auth;
pub mod config;
pub mod db;
pub mod error;
pub mod events;
mod fsutil;
pub mod h3client;
pub mod http;
pub mod ids;
pub mod limit;
pub mod metrics;
pub mod moment;
pub mod ops;
pub mod queue;
pub mod server;
pub mod service;
pub mod store;
#[cfg(feature = "testing")]
pub mod testing;

pub use error::ApiError;
