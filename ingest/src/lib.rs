//! Ingest: resumable uploads of moments. Will hold the tus 1.0 protocol core (no I/O), the one
//! handler that serves it over HTTP/1.1, HTTP/2 and HTTP/3, upload sessions in the metadata
//! database with bytes in the object store, and the `moments upload` client.
//!
//! Position in the data flow: phone → **ingest** → transcode queue. It must never decode media.
//! (Built by the Ingest issue; nothing lives here yet.)

#![forbid(unsafe_code)]
