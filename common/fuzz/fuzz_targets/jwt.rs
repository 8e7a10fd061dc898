//! Fuzzes JWT verification: bare tokens, `Authorization` headers, forged tokens
//! (body: `../checks.rs`).
//!
//!   deploy/fuzz.sh 60 jwt
#![no_main]

#[path = "../checks.rs"]
mod checks;

libfuzzer_sys::fuzz_target!(|data: &[u8]| checks::jwt(data));
