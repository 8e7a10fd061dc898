//! Property tests of the tus core: arbitrary header values never panic and always give a 4xx
//! with a reason; metadata survives an encode/parse round trip.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use http::{HeaderMap, HeaderName, HeaderValue};
use ingest::tus;
use proptest::prelude::*;

const NAMES: &[&str] = &[
    "tus-resumable",
    "upload-length",
    "upload-offset",
    "upload-metadata",
    "upload-checksum",
    "content-type",
    "content-length",
    "upload-defer-length",
    "upload-concat",
];

fn headers(pairs: &[(usize, Vec<u8>)]) -> HeaderMap {
    let mut h = HeaderMap::new();
    for (i, v) in pairs {
        if let Ok(v) = HeaderValue::from_bytes(v) {
            h.append(HeaderName::from_static(NAMES[i % NAMES.len()]), v);
        }
    }
    h
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn arbitrary_headers_never_panic(pairs in proptest::collection::vec((0usize..9, proptest::collection::vec(any::<u8>(), 0..80)), 0..8)) {
        let h = headers(&pairs);
        let limits = tus::Limits { max_size: 1 << 30 };
        for r in [tus::parse_create(&h, &limits).err(), tus::parse_patch(&h).err()].into_iter().flatten() {
            prop_assert!((400..500).contains(&r.status), "{r:?}");
            prop_assert!(!r.message.is_empty());
        }
    }

    #[test]
    fn arbitrary_metadata_and_checksums_never_panic(s in ".{0,200}") {
        let _ = tus::parse_metadata(&s);
        let _ = tus::parse_checksum(&s);
        let _ = tus::parse_u64("X", &s);
    }

    #[test]
    fn metadata_round_trips(map in proptest::collection::btree_map("[a-zA-Z0-9_.-]{1,12}", proptest::option::of(proptest::collection::vec(any::<u8>(), 0..40)), 0..6)) {
        let encoded: Vec<String> = map
            .iter()
            .map(|(k, v)| match v {
                Some(v) => format!("{k} {}", B64.encode(v)),
                None => k.clone(),
            })
            .collect();
        let parsed = tus::parse_metadata(&encoded.join(",")).unwrap();
        // an empty value encodes as "key " which reads back as a key with an empty value or none
        for (k, v) in &map {
            let got = parsed.get(k).unwrap();
            match v {
                Some(v) if !v.is_empty() => prop_assert_eq!(got.as_deref(), Some(v.as_slice())),
                _ => prop_assert!(got.as_ref().is_none_or(|g| g.is_empty())),
            }
        }
        prop_assert_eq!(parsed.len(), map.len());
    }

    #[test]
    fn offsets_follow_the_rules(length in 0u64..1_000_000, offset in 0u64..1_000_000, claimed in 0u64..1_000_000, body in proptest::option::of(0u64..1_000_000)) {
        let offset = offset.min(length);
        let up = tus::Upload { length, offset, expires_at_ms: i64::MAX, complete: offset == length && length > 0 };
        let p = tus::Patch { offset: claimed, content_length: body, checksum: None };
        match tus::check_patch(&up, &p, 0) {
            Ok(room) => {
                prop_assert_eq!(claimed, offset);
                prop_assert!(body.unwrap_or(0) <= room);
            }
            Err(e) => prop_assert!(matches!(e.status, 409 | 413 | 410)),
        }
    }
}
