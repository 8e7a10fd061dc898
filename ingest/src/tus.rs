//! The tus 1.0.0 protocol core, without I/O: header parsing and validation, the offset rules
//! and the answers' headers. The HTTP handler feeds it request heads and acts on its decisions;
//! nothing here knows about sockets, files, S3 or databases, so every rule is tested in memory.
//!
//! Extensions: creation, creation-with-upload, checksum (sha1, sha256), termination,
//! expiration. (Not offered: creation-defer-length, concatenation.)

use std::collections::BTreeMap;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use http::{HeaderMap, StatusCode};

/// The protocol version we speak.
pub const VERSION: &str = "1.0.0";
/// `Tus-Extension`.
pub const EXTENSIONS: &str = "creation,creation-with-upload,checksum,termination,expiration";
/// `Tus-Checksum-Algorithm`.
pub const CHECKSUM_ALGORITHMS: &str = "sha1,sha256";
/// The media type of PATCH bodies.
pub const OFFSET_OCTET_STREAM: &str = "application/offset+octet-stream";
/// tus's status for a checksum mismatch.
pub const CHECKSUM_MISMATCH: u16 = 460;
/// Longest `Upload-Metadata` we parse (abusive input).
pub const MAX_METADATA_BYTES: usize = 4096;

/// A protocol error: a status and a reason for the client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Error {
    /// HTTP status.
    pub status: u16,
    /// Stable code for the JSON body.
    pub code: &'static str,
    /// Why, in words.
    pub message: String,
}

impl Error {
    fn new(status: u16, code: &'static str, message: impl Into<String>) -> Error {
        Error {
            status,
            code,
            message: message.into(),
        }
    }

    /// The status as an `http` type.
    pub fn status_code(&self) -> StatusCode {
        StatusCode::from_u16(self.status).unwrap_or(StatusCode::BAD_REQUEST)
    }
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.status, self.message)
    }
}

impl std::error::Error for Error {}

/// A checksum algorithm of the checksum extension.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Algorithm {
    /// SHA-1 (20 bytes).
    Sha1,
    /// SHA-256 (32 bytes).
    Sha256,
}

/// `Upload-Checksum: <algorithm> <base64 digest>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checksum {
    /// The algorithm.
    pub algorithm: Algorithm,
    /// The expected digest.
    pub digest: Vec<u8>,
}

/// Parsed `Upload-Metadata`: keys to (decoded) values, in key order.
pub type Metadata = BTreeMap<String, Option<Vec<u8>>>;

/// Limits the server applies.
#[derive(Debug, Clone, PartialEq)]
pub struct Limits {
    /// Largest accepted `Upload-Length`.
    pub max_size: u64,
}

fn header<'a>(h: &'a HeaderMap, name: &str) -> Result<Option<&'a str>, Error> {
    match h.get(name) {
        None => Ok(None),
        Some(v) => v
            .to_str()
            .map(|s| Some(s.trim()))
            .map_err(|_| Error::new(400, "bad_header", format!("{name} is not valid text"))),
    }
}

/// Parses a non-negative decimal integer header (`Upload-Length`, `Upload-Offset`).
pub fn parse_u64(name: &str, value: &str) -> Result<u64, Error> {
    if value.is_empty() || value.len() > 20 || !value.bytes().all(|b| b.is_ascii_digit()) {
        return Err(Error::new(
            400,
            "bad_header",
            format!("{name} must be a non-negative integer, got {value:?}"),
        ));
    }
    value.parse().map_err(|_| {
        Error::new(
            400,
            "bad_header",
            format!("{name} is out of range: {value:?}"),
        )
    })
}

/// Checks `Tus-Resumable` (required on every request but OPTIONS).
pub fn check_version(h: &HeaderMap) -> Result<(), Error> {
    match header(h, "tus-resumable")? {
        Some(VERSION) => Ok(()),
        Some(other) => Err(Error::new(
            412,
            "unsupported_version",
            format!("Tus-Resumable {other:?} is not supported; this server speaks {VERSION}"),
        )),
        None => Err(Error::new(
            412,
            "unsupported_version",
            format!("the Tus-Resumable header is missing; this server speaks {VERSION}"),
        )),
    }
}

/// Parses `Upload-Metadata` (`key base64,key2 base64,key3`): keys are non-empty ASCII without
/// spaces or commas and unique; values are standard base64.
pub fn parse_metadata(value: &str) -> Result<Metadata, Error> {
    if value.len() > MAX_METADATA_BYTES {
        return Err(Error::new(
            400,
            "bad_metadata",
            format!("Upload-Metadata is longer than {MAX_METADATA_BYTES} bytes"),
        ));
    }
    let mut out = Metadata::new();
    if value.trim().is_empty() {
        return Ok(out);
    }
    for pair in value.split(',') {
        let pair = pair.trim();
        let mut parts = pair.split(' ').filter(|p| !p.is_empty());
        let key = parts
            .next()
            .ok_or_else(|| Error::new(400, "bad_metadata", "Upload-Metadata has an empty entry"))?;
        if !key.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(Error::new(
                400,
                "bad_metadata",
                format!("Upload-Metadata key {key:?} is not printable ASCII"),
            ));
        }
        let value = match parts.next() {
            None => None,
            Some(v) => Some(B64.decode(v).map_err(|_| {
                Error::new(
                    400,
                    "bad_metadata",
                    format!("Upload-Metadata value of {key:?} is not valid base64"),
                )
            })?),
        };
        if parts.next().is_some() {
            return Err(Error::new(
                400,
                "bad_metadata",
                format!("Upload-Metadata entry for {key:?} has more than one value"),
            ));
        }
        if out.insert(key.to_string(), value).is_some() {
            return Err(Error::new(
                400,
                "bad_metadata",
                format!("Upload-Metadata key {key:?} appears twice"),
            ));
        }
    }
    Ok(out)
}

/// Parses `Upload-Checksum`.
pub fn parse_checksum(value: &str) -> Result<Checksum, Error> {
    let (algo, digest) = value.split_once(' ').ok_or_else(|| {
        Error::new(
            400,
            "bad_checksum",
            "Upload-Checksum must be \"<algorithm> <base64>\"",
        )
    })?;
    let algorithm = match algo.trim().to_ascii_lowercase().as_str() {
        "sha1" => Algorithm::Sha1,
        "sha256" => Algorithm::Sha256,
        other => {
            return Err(Error::new(
                400,
                "unsupported_checksum",
                format!(
                    "checksum algorithm {other:?} is not supported (use {CHECKSUM_ALGORITHMS})"
                ),
            ));
        }
    };
    let digest = B64.decode(digest.trim()).map_err(|_| {
        Error::new(
            400,
            "bad_checksum",
            "Upload-Checksum digest is not valid base64",
        )
    })?;
    let want = match algorithm {
        Algorithm::Sha1 => 20,
        Algorithm::Sha256 => 32,
    };
    if digest.len() != want {
        return Err(Error::new(
            400,
            "bad_checksum",
            format!(
                "Upload-Checksum digest has {} bytes; {algo} has {want}",
                digest.len()
            ),
        ));
    }
    Ok(Checksum { algorithm, digest })
}

/// What a creation request asks for.
#[derive(Debug, Clone, PartialEq)]
pub struct Create {
    /// Total size.
    pub length: u64,
    /// The raw `Upload-Metadata` (echoed on HEAD).
    pub metadata_raw: String,
    /// Decoded metadata.
    pub metadata: Metadata,
    /// creation-with-upload: the request body carries the first bytes.
    pub with_body: bool,
    /// Checksum of that body.
    pub checksum: Option<Checksum>,
}

/// True when a media type is acceptable as a moment (`video/*`).
pub fn accepted_filetype(filetype: &[u8]) -> bool {
    let t = String::from_utf8_lossy(filetype).to_ascii_lowercase();
    t.starts_with("video/") && t.len() > 6
}

fn has_body(h: &HeaderMap) -> bool {
    let len = h
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    match len {
        Some(n) => n > 0,
        None => h.contains_key(http::header::TRANSFER_ENCODING),
    }
}

/// The request's media type, lowercased and without parameters (`None` when absent or empty).
pub(crate) fn media_type(h: &HeaderMap) -> Option<String> {
    h.get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|v| {
            v.split(';')
                .next()
                .unwrap_or("")
                .trim()
                .to_ascii_lowercase()
        })
        .filter(|v| !v.is_empty())
}

/// True when the request's media type (parameters aside) is `want`.
pub(crate) fn content_type_is(h: &HeaderMap, want: &str) -> bool {
    media_type(h).is_some_and(|t| t.eq_ignore_ascii_case(want))
}

/// Validates a `POST /files` (creation, creation-with-upload).
pub fn parse_create(h: &HeaderMap, limits: &Limits) -> Result<Create, Error> {
    check_version(h)?;
    if header(h, "upload-defer-length")?.is_some() {
        return Err(Error::new(
            400,
            "unsupported_extension",
            "creation-defer-length is not supported: send Upload-Length",
        ));
    }
    if header(h, "upload-concat")?.is_some() {
        return Err(Error::new(
            400,
            "unsupported_extension",
            "concatenation is not supported",
        ));
    }
    let length = match header(h, "upload-length")? {
        Some(v) => parse_u64("Upload-Length", v)?,
        None => return Err(Error::new(400, "bad_header", "Upload-Length is required")),
    };
    if length > limits.max_size {
        return Err(Error::new(
            413,
            "too_large",
            format!(
                "Upload-Length {length} is over the {} byte limit (Tus-Max-Size)",
                limits.max_size
            ),
        ));
    }
    let metadata_raw = header(h, "upload-metadata")?.unwrap_or("").to_string();
    let metadata = parse_metadata(&metadata_raw)?;
    if let Some(Some(ft)) = metadata.get("filetype")
        && !accepted_filetype(ft)
    {
        return Err(Error::new(
            415,
            "unsupported_filetype",
            format!(
                "filetype {:?} is not a video (video/* is accepted)",
                String::from_utf8_lossy(ft)
            ),
        ));
    }
    let with_body = has_body(h);
    if with_body && !content_type_is(h, OFFSET_OCTET_STREAM) {
        return Err(Error::new(
            415,
            "bad_content_type",
            format!("a creation request with a body must have Content-Type {OFFSET_OCTET_STREAM}"),
        ));
    }
    let checksum = match header(h, "upload-checksum")? {
        Some(v) if with_body => Some(parse_checksum(v)?),
        _ => None,
    };
    Ok(Create {
        length,
        metadata_raw,
        metadata,
        with_body,
        checksum,
    })
}

/// What a PATCH asks for.
#[derive(Debug, Clone, PartialEq)]
pub struct Patch {
    /// Where the client thinks the upload stands.
    pub offset: u64,
    /// `Content-Length`, when given.
    pub content_length: Option<u64>,
    /// Checksum of the body.
    pub checksum: Option<Checksum>,
}

/// Validates a `PATCH /files/{id}` head.
pub fn parse_patch(h: &HeaderMap) -> Result<Patch, Error> {
    check_version(h)?;
    if !content_type_is(h, OFFSET_OCTET_STREAM) {
        return Err(Error::new(
            415,
            "bad_content_type",
            format!("PATCH bodies must have Content-Type {OFFSET_OCTET_STREAM}"),
        ));
    }
    let offset = match header(h, "upload-offset")? {
        Some(v) => parse_u64("Upload-Offset", v)?,
        None => return Err(Error::new(400, "bad_header", "Upload-Offset is required")),
    };
    let content_length = match header(h, "content-length")? {
        Some(v) => Some(parse_u64("Content-Length", v)?),
        None => None,
    };
    let checksum = match header(h, "upload-checksum")? {
        Some(v) => Some(parse_checksum(v)?),
        None => None,
    };
    Ok(Patch {
        offset,
        content_length,
        checksum,
    })
}

/// An upload's state as the protocol sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct Upload {
    /// Total size.
    pub length: u64,
    /// Bytes durably received.
    pub offset: u64,
    /// Expiry (ms since epoch), for unfinished uploads.
    pub expires_at_ms: i64,
    /// All bytes are in.
    pub complete: bool,
}

/// Checks a PATCH against the upload at time `now_ms`; returns how many bytes it may carry.
pub fn check_patch(upload: &Upload, patch: &Patch, now_ms: i64) -> Result<u64, Error> {
    if !upload.complete && upload.expires_at_ms <= now_ms {
        return Err(Error::new(410, "expired", "this upload has expired"));
    }
    if patch.offset != upload.offset {
        return Err(Error::new(
            409,
            "offset_mismatch",
            format!(
                "Upload-Offset {} does not match the upload's offset {}",
                patch.offset, upload.offset
            ),
        ));
    }
    let room = upload.length - upload.offset;
    if let Some(n) = patch.content_length
        && n > room
    {
        return Err(Error::new(
            413,
            "past_length",
            format!(
                "the body ({n} bytes) would go past Upload-Length ({room} bytes remain); nothing was written"
            ),
        ));
    }
    if upload.complete {
        if patch.content_length.unwrap_or(0) == 0 {
            return Ok(0);
        }
        return Err(Error::new(
            409,
            "complete",
            "this upload is already complete",
        ));
    }
    Ok(room)
}

/// HTTP date for `Upload-Expires` (RFC 9110 IMF-fixdate).
pub fn http_date(ms: i64) -> String {
    httpdate::fmt_http_date(
        std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms.max(0) as u64),
    )
}

/// Headers every tus answer carries.
pub fn common_headers() -> [(&'static str, String); 1] {
    [("Tus-Resumable", VERSION.to_string())]
}

/// `OPTIONS /files` headers.
pub fn options_headers(limits: &Limits) -> Vec<(&'static str, String)> {
    vec![
        ("Tus-Resumable", VERSION.to_string()),
        ("Tus-Version", VERSION.to_string()),
        ("Tus-Extension", EXTENSIONS.to_string()),
        ("Tus-Max-Size", limits.max_size.to_string()),
        ("Tus-Checksum-Algorithm", CHECKSUM_ALGORITHMS.to_string()),
    ]
}

/// A header map from name/value pairs (unit tests of both protocols' header rules).
/// The minimum body rate (`ingest.body_min_rate`) as a plain type: fed each chunk's size and
/// arrival time, it says when a body has been slower than the minimum over a whole window.
#[derive(Debug, Clone)]
pub struct Pace {
    min_rate: u64,
    window: std::time::Duration,
    started: std::time::Instant,
    bytes: u64,
}

impl Pace {
    /// A pace check from `now`; `min_rate` 0 never complains.
    pub fn new(min_rate: u64, window: std::time::Duration, now: std::time::Instant) -> Pace {
        Pace {
            min_rate,
            window,
            started: now,
            bytes: 0,
        }
    }

    /// Counts `n` bytes arrived at `now`; `false` when the window that just closed brought
    /// fewer than `min_rate × window` bytes.
    pub fn arrived(&mut self, n: u64, now: std::time::Instant) -> bool {
        self.bytes = self.bytes.saturating_add(n);
        let elapsed = now.saturating_duration_since(self.started);
        if self.min_rate == 0 || elapsed < self.window {
            return true;
        }
        let ok = self.bytes as f64 >= self.min_rate as f64 * elapsed.as_secs_f64();
        self.started = now;
        self.bytes = 0;
        ok
    }
}

#[cfg(test)]
pub(crate) fn test_headers(pairs: &[(&str, &str)]) -> HeaderMap {
    let mut m = HeaderMap::new();
    for (k, v) in pairs {
        m.append(
            http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
            http::HeaderValue::from_str(v).unwrap(),
        );
    }
    m
}

#[cfg(test)]
mod tests {
    use super::*;

    use super::test_headers as h;

    const LIMITS: Limits = Limits { max_size: 1000 };

    #[test]
    fn version_is_required_and_checked() {
        assert!(check_version(&h(&[("Tus-Resumable", "1.0.0")])).is_ok());
        assert_eq!(check_version(&h(&[])).unwrap_err().status, 412);
        assert_eq!(
            check_version(&h(&[("Tus-Resumable", "0.2.2")]))
                .unwrap_err()
                .status,
            412
        );
        assert_eq!(
            check_version(&h(&[("Tus-Resumable", "1.0")]))
                .unwrap_err()
                .status,
            412
        );
    }

    #[test]
    fn integers() {
        assert_eq!(parse_u64("X", "0").unwrap(), 0);
        assert_eq!(parse_u64("X", "18446744073709551615").unwrap(), u64::MAX);
        for bad in [
            "",
            "-1",
            "+1",
            "1.5",
            "abc",
            "1e3",
            " 1",
            "18446744073709551616",
            "0x10",
            "١٢",
        ] {
            assert_eq!(parse_u64("X", bad).unwrap_err().status, 400, "{bad:?}");
        }
    }

    #[test]
    fn metadata_cases() {
        let m = parse_metadata("filename bW9tZW50Lm1wNA==,filetype dmlkZW8vbXA0,is_confidential")
            .unwrap();
        assert_eq!(m["filename"].as_deref(), Some(&b"moment.mp4"[..]));
        assert_eq!(m["filetype"].as_deref(), Some(&b"video/mp4"[..]));
        assert_eq!(m["is_confidential"], None);
        assert!(parse_metadata("").unwrap().is_empty());
        assert!(parse_metadata("  ").unwrap().is_empty());
        assert_eq!(
            parse_metadata("a not*base64").unwrap_err().code,
            "bad_metadata"
        );
        assert_eq!(
            parse_metadata("a YQ==,a Yg==").unwrap_err().message,
            "Upload-Metadata key \"a\" appears twice"
        );
        assert!(parse_metadata("a YQ==,,b Yg==").is_err());
        assert!(parse_metadata("a YQ== Yg==").is_err());
        assert!(parse_metadata(&"k YQ==,".repeat(1000)).is_err());
        assert!(parse_metadata("ké YQ==").is_err());
    }

    #[test]
    fn checksum_cases() {
        let sha256 = B64.encode([7u8; 32]);
        let c = parse_checksum(&format!("sha256 {sha256}")).unwrap();
        assert_eq!(c.algorithm, Algorithm::Sha256);
        let sha1 = B64.encode([7u8; 20]);
        assert_eq!(
            parse_checksum(&format!("sha1 {sha1}")).unwrap().algorithm,
            Algorithm::Sha1
        );
        assert_eq!(
            parse_checksum(&format!("md5 {sha1}")).unwrap_err().code,
            "unsupported_checksum"
        );
        assert_eq!(
            parse_checksum(&format!("crc32 {sha1}")).unwrap_err().status,
            400
        );
        assert_eq!(
            parse_checksum("sha256 !!!").unwrap_err().code,
            "bad_checksum"
        );
        assert_eq!(
            parse_checksum(&format!("sha256 {sha1}")).unwrap_err().code,
            "bad_checksum"
        );
        assert_eq!(parse_checksum("sha256").unwrap_err().status, 400);
    }

    #[test]
    fn create_cases() {
        let ok = parse_create(
            &h(&[("Tus-Resumable", "1.0.0"), ("Upload-Length", "10")]),
            &LIMITS,
        )
        .unwrap();
        assert_eq!((ok.length, ok.with_body), (10, false));
        let e = |pairs: &[(&str, &str)]| parse_create(&h(pairs), &LIMITS).unwrap_err();
        assert_eq!(e(&[("Upload-Length", "10")]).status, 412);
        assert_eq!(e(&[("Tus-Resumable", "1.0.0")]).status, 400);
        assert_eq!(
            e(&[("Tus-Resumable", "1.0.0"), ("Upload-Length", "-5")]).status,
            400
        );
        assert_eq!(
            e(&[("Tus-Resumable", "1.0.0"), ("Upload-Length", "ten")]).status,
            400
        );
        assert_eq!(
            e(&[("Tus-Resumable", "1.0.0"), ("Upload-Length", "1001")]).status,
            413
        );
        assert_eq!(
            e(&[("Tus-Resumable", "1.0.0"), ("Upload-Defer-Length", "1")]).status,
            400
        );
        assert_eq!(
            e(&[
                ("Tus-Resumable", "1.0.0"),
                ("Upload-Length", "10"),
                ("Upload-Metadata", "filetype aW1hZ2UvanBlZw==")
            ])
            .status,
            415
        );
        assert_eq!(
            e(&[
                ("Tus-Resumable", "1.0.0"),
                ("Upload-Length", "10"),
                ("Upload-Metadata", "x !")
            ])
            .status,
            400
        );
        // creation-with-upload
        let c = parse_create(
            &h(&[
                ("Tus-Resumable", "1.0.0"),
                ("Upload-Length", "10"),
                ("Content-Type", "application/offset+octet-stream"),
                ("Content-Length", "4"),
                ("Upload-Metadata", "filetype dmlkZW8vbXA0"),
            ]),
            &LIMITS,
        )
        .unwrap();
        assert!(c.with_body);
        assert_eq!(
            e(&[
                ("Tus-Resumable", "1.0.0"),
                ("Upload-Length", "10"),
                ("Content-Length", "4"),
                ("Content-Type", "text/plain")
            ])
            .status,
            415
        );
    }

    #[test]
    fn patch_head_cases() {
        let base = [
            ("Tus-Resumable", "1.0.0"),
            ("Content-Type", "application/offset+octet-stream"),
        ];
        let mut p = base.to_vec();
        p.push(("Upload-Offset", "5"));
        let ok = parse_patch(&h(&p)).unwrap();
        assert_eq!(ok.offset, 5);
        assert_eq!(parse_patch(&h(&base)).unwrap_err().status, 400);
        let mut p2 = base.to_vec();
        p2.push(("Upload-Offset", "x"));
        assert_eq!(parse_patch(&h(&p2)).unwrap_err().status, 400);
        let p3 = [
            ("Tus-Resumable", "1.0.0"),
            ("Content-Type", "application/octet-stream"),
            ("Upload-Offset", "0"),
        ];
        assert_eq!(parse_patch(&h(&p3)).unwrap_err().status, 415);
        let p4 = [("Tus-Resumable", "1.0.0"), ("Upload-Offset", "0")];
        assert_eq!(parse_patch(&h(&p4)).unwrap_err().status, 415);
        let p5 = [
            ("Content-Type", "application/offset+octet-stream"),
            ("Upload-Offset", "0"),
        ];
        assert_eq!(parse_patch(&h(&p5)).unwrap_err().status, 412);
        let p6 = [
            ("Tus-Resumable", "1.0.0"),
            ("Content-Type", "Application/Offset+Octet-Stream; charset=x"),
            ("Upload-Offset", "0"),
        ];
        assert!(parse_patch(&h(&p6)).is_ok());
    }

    #[test]
    fn offset_rules() {
        let up = Upload {
            length: 100,
            offset: 40,
            expires_at_ms: 1_000,
            complete: false,
        };
        let patch = |offset, len| Patch {
            offset,
            content_length: len,
            checksum: None,
        };
        assert_eq!(check_patch(&up, &patch(40, Some(60)), 0).unwrap(), 60);
        assert_eq!(check_patch(&up, &patch(40, None), 0).unwrap(), 60);
        assert_eq!(
            check_patch(&up, &patch(0, Some(10)), 0).unwrap_err().status,
            409
        );
        assert_eq!(
            check_patch(&up, &patch(41, Some(10)), 0)
                .unwrap_err()
                .status,
            409
        );
        assert_eq!(
            check_patch(&up, &patch(40, Some(61)), 0)
                .unwrap_err()
                .status,
            413
        );
        assert_eq!(
            check_patch(&up, &patch(40, Some(1)), 1_000)
                .unwrap_err()
                .status,
            410
        );
        let done = Upload {
            offset: 100,
            complete: true,
            ..up
        };
        assert_eq!(check_patch(&done, &patch(100, Some(0)), 5_000).unwrap(), 0);
        assert_eq!(
            check_patch(&done, &patch(100, Some(1)), 5_000)
                .unwrap_err()
                .status,
            413
        );
    }

    #[test]
    fn filetypes_and_dates() {
        assert!(accepted_filetype(b"video/mp4"));
        assert!(accepted_filetype(b"Video/QuickTime"));
        assert!(!accepted_filetype(b"video/"));
        assert!(!accepted_filetype(b"image/jpeg"));
        assert!(!accepted_filetype(b"application/octet-stream"));
        assert_eq!(http_date(0), "Thu, 01 Jan 1970 00:00:00 GMT");
        assert_eq!(
            http_date(1_700_000_000_000),
            "Tue, 14 Nov 2023 22:13:20 GMT"
        );
    }

    #[test]
    fn a_trickle_fails_the_pace_and_a_slow_phone_passes() {
        use std::time::{Duration, Instant};
        let t0 = Instant::now();
        let at = |s: f64| t0 + Duration::from_secs_f64(s);
        // 1 byte per second against 256 B/s over 30 s: refused when the first window closes
        let mut p = Pace::new(256, Duration::from_secs(30), t0);
        let first_refusal = (1..=60).find(|i| !p.arrived(1, at(*i as f64)));
        assert_eq!(first_refusal, Some(30));
        // 2 kB/s in 16 KiB bursts every 8 s passes window after window
        let mut p = Pace::new(256, Duration::from_secs(30), t0);
        assert!((1..=40).all(|i| p.arrived(16 << 10, at(i as f64 * 8.0))));
        // a stall made up for within the window passes
        let mut p = Pace::new(256, Duration::from_secs(30), t0);
        assert!(p.arrived(10, at(20.0)));
        assert!(p.arrived(31 * 256, at(31.0)));
        // 0: no minimum
        let mut p = Pace::new(0, Duration::from_secs(1), t0);
        assert!((1..100).all(|i| p.arrived(0, at(i as f64))));
    }
}
