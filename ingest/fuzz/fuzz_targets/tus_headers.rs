//! Fuzzes the tus request parser with arbitrary header blocks (body: `../checks.rs`).
//!
//!   deploy/fuzz.sh 60 tus_headers
#![no_main]

#[allow(dead_code)] // each target uses one of the checks, and none its seeds
#[path = "../checks.rs"]
mod checks;

libfuzzer_sys::fuzz_target!(|data: &[u8]| checks::tus_headers(data));
