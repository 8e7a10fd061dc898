//! Fuzzes packager's `playlist` check (body: `../checks.rs`).
//!
//!   deploy/fuzz.sh 60 playlist
#![no_main]

#[path = "../checks.rs"]
mod checks;

libfuzzer_sys::fuzz_target!(|data: &[u8]| checks::playlist(data));
