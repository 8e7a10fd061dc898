//! Fuzzes the tus request parser with arbitrary header blocks ("name: value" lines).
//!
//!   cd ingest/fuzz && RUSTC_BOOTSTRAP=1 cargo fuzz run tus_headers -- -max_total_time=60
#![no_main]

use http::{HeaderMap, HeaderName, HeaderValue};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut h = HeaderMap::new();
    for line in data.split(|b| *b == b'\n') {
        let Some(i) = line.iter().position(|b| *b == b':') else { continue };
        let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(&line[..i]),
            HeaderValue::from_bytes(line[i + 1..].trim_ascii()),
        ) else {
            continue;
        };
        h.append(name, value);
    }
    let limits = ingest::tus::Limits { max_size: 1 << 31 };
    if let Err(e) = ingest::tus::parse_create(&h, &limits) {
        assert!((400..500).contains(&e.status));
    }
    if let Err(e) = ingest::tus::parse_patch(&h) {
        assert!((400..500).contains(&e.status));
    }
    if let Ok(s) = std::str::from_utf8(data) {
        let _ = ingest::tus::parse_metadata(s);
        let _ = ingest::tus::parse_checksum(s);
    }
});
