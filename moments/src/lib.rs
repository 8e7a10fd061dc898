//! The `moments` binary's library half: the composed configuration, the wiring of every
//! service into one process, and the thin command implementations. Business logic lives in the
//! member crates; this crate only builds them from config and connects them.

#![forbid(unsafe_code)]

pub mod app;
pub mod cli;
pub mod config;
pub mod demo;
pub mod events;
pub mod openapi;
pub mod web;

pub use config::Config;
