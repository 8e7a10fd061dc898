//! Fuzzes the Q&A WebSocket's text-message parser (body: `../checks.rs`).
//!
//!   deploy/fuzz.sh 60 ws_message
#![no_main]

#[allow(dead_code)] // each target uses one of the checks, and none its seeds
#[path = "../checks.rs"]
mod checks;

libfuzzer_sys::fuzz_target!(|data: &[u8]| checks::ws_message(data));
