//! Fuzzes packager's `boxes` check (body: `../checks.rs`).
//!
//!   deploy/fuzz.sh 60 boxes
#![no_main]

#[allow(dead_code)] // each target uses one of the checks, and none its seeds
#[path = "../checks.rs"]
mod checks;

libfuzzer_sys::fuzz_target!(|data: &[u8]| checks::boxes(data));
