//! The bodies of ingest's fuzz targets, shared by the libFuzzer binaries (`fuzz_targets/`) and
//! by the test suite (`tests/fuzz.rs`, through `common::testing::fuzz::replay`).

#![allow(clippy::unwrap_used, clippy::expect_used)] // a check reports by panicking

use http::{HeaderMap, HeaderName, HeaderValue};

/// The tus request parser on arbitrary header blocks ("name: value" lines): every refusal is a
/// 4xx, never a panic.
pub fn tus_headers(data: &[u8]) {
    let mut h = HeaderMap::new();
    for line in data.split(|b| *b == b'\n') {
        let Some(i) = line.iter().position(|b| *b == b':') else {
            continue;
        };
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
        assert!((400..500).contains(&e.status), "{e:?}");
    }
    if let Err(e) = ingest::tus::parse_patch(&h) {
        assert!((400..500).contains(&e.status), "{e:?}");
    }
    if let Ok(s) = std::str::from_utf8(data) {
        let _ = ingest::tus::parse_metadata(s);
        let _ = ingest::tus::parse_checksum(s);
    }
}

/// Starting inputs: well-formed creations and patches, and the metadata forms clients send.
pub fn tus_headers_seeds() -> Vec<Vec<u8>> {
    [
        "Tus-Resumable: 1.0.0\nUpload-Length: 1048576\nUpload-Metadata: filename bW9tZW50Lm1wNA==,filetype dmlkZW8vbXA0",
        "Tus-Resumable: 1.0.0\nUpload-Defer-Length: 1\nUpload-Metadata: is_confidential",
        "Tus-Resumable: 1.0.0\nUpload-Offset: 524288\nContent-Type: application/offset+octet-stream\nContent-Length: 65536",
        "Tus-Resumable: 1.0.0\nUpload-Offset: 0\nContent-Type: application/offset+octet-stream\nUpload-Checksum: sha1 Kq5sNclPz7QV2+lfQIuc6R7oRu0=",
        "Upload-Checksum: sha256 n4bQgYhMfWWaL+qgxVrQFaO/TxsrC4Is0V1sFbDwCgg=",
        "filename ../../etc/passwd,x Zm9v,y",
    ]
    .iter()
    .map(|s| s.as_bytes().to_vec())
    .collect()
}
