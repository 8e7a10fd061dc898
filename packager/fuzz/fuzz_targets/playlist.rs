//! Fuzzes packager's `playlist` check (body: `../checks.rs`).
//!
//!   deploy/fuzz.sh 60 playlist
#![no_main]

#[allow(dead_code)] // each target uses one of the checks, and none its seeds
#[path = "../checks.rs"]
mod checks;

libfuzzer_sys::fuzz_target!(|data: &[u8]| checks::playlist(data));
