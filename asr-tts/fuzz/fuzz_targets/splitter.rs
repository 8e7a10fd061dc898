//! Fuzzes the streaming sentence splitter (body: `../checks.rs`).
//!
//!   deploy/fuzz.sh 60 splitter
#![no_main]

#[path = "../checks.rs"]
mod checks;

libfuzzer_sys::fuzz_target!(|data: &[u8]| checks::splitter(data));
