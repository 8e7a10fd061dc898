//! The IETF resumable-upload protocol (draft-ietf-httpbis-resumable-upload, "RUFH"): header
//! parsing and validation, pure functions of the request headers (the handlers in
//! [`crate::draft`] apply them to the same upload core and sinks as tus).
//!
//! Draft versions differ in small ways; a client names its version in
//! `Upload-Draft-Interop-Version`. We answer:
//!
//! | interop | drafts | sent by | differences handled here |
//! | --- | --- | --- | --- |
//! | 3 | -01 | iOS 17 / macOS 14 URLSession | `Upload-Incomplete` (the inverse of `Upload-Complete`) |
//! | 4 | -02 | | `Upload-Complete` |
//! | 5 | -03 | | any `Content-Type` on appends |
//! | 6 | -04, -05 | iOS 18 / macOS 15 | `application/partial-upload` required; `Upload-Limit` with `expires` |
//! | 7 | -06 … -08 | | `Upload-Limit` uses `max-age` |
//! | 8 | -09 … latest | iOS 26 | latest text |
//!
//! A request without `Upload-Draft-Interop-Version` is read as the latest text (the final RFC's
//! clients will not send the header) and never gets a `104` interim response, as the draft
//! requires.

use http::HeaderMap;

use crate::tus::{Algorithm, Checksum, content_type_is, media_type};

/// The interop version of the latest draft.
pub const LATEST_INTEROP: u32 = 8;
/// Interop versions answered.
pub const SUPPORTED_INTEROP: [u32; 6] = [3, 4, 5, 6, 7, 8];
/// The media type of an append's content.
pub const PARTIAL_UPLOAD: &str = "application/partial-upload";
/// Problem type: the request's offset is not the upload's.
pub const PROBLEM_OFFSET: &str =
    "https://iana.org/assignments/http-problem-types#mismatching-upload-offset";
/// Problem type: the upload is already complete.
pub const PROBLEM_COMPLETED: &str =
    "https://iana.org/assignments/http-problem-types#completed-upload";
/// Problem type: lengths that contradict each other.
pub const PROBLEM_LENGTH: &str =
    "https://iana.org/assignments/http-problem-types#inconsistent-upload-length";

/// A refused request: status, problem type (when the draft defines one), machine code and a
/// sentence for people.
#[derive(Debug, Clone, PartialEq)]
pub struct Error {
    /// HTTP status.
    pub status: u16,
    /// Problem type URI, `about:blank` when the draft defines none.
    pub problem: &'static str,
    /// Short machine-readable code (also used by the tus answers).
    pub code: &'static str,
    /// Human-readable reason.
    pub message: String,
}

impl Error {
    fn bad(code: &'static str, message: impl Into<String>) -> Error {
        Error {
            status: 400,
            problem: "about:blank",
            code,
            message: message.into(),
        }
    }
    fn length(message: impl Into<String>) -> Error {
        Error {
            status: 400,
            problem: PROBLEM_LENGTH,
            code: "inconsistent_length",
            message: message.into(),
        }
    }
}

/// Which draft the client speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Dialect {
    /// `Upload-Draft-Interop-Version`, if sent.
    pub interop: Option<u32>,
}

impl Dialect {
    fn version(self) -> u32 {
        self.interop.unwrap_or(LATEST_INTEROP)
    }
    /// Interop 3 says `Upload-Incomplete`; later ones `Upload-Complete`.
    pub fn complete_header(self) -> &'static str {
        if self.version() == 3 {
            "upload-incomplete"
        } else {
            "upload-complete"
        }
    }
    /// The header value saying whether the upload is complete, in this dialect.
    pub fn complete_value(self, complete: bool) -> &'static str {
        let truth = if self.version() == 3 {
            !complete
        } else {
            complete
        };
        if truth { "?1" } else { "?0" }
    }
    /// From interop 6 an append must be labelled `application/partial-upload`.
    pub fn requires_partial_upload(self) -> bool {
        self.version() >= 6
    }
    /// `Upload-Limit` exists from interop 6 (with `expires` there, `max-age` after).
    pub fn limit(self, max_size: u64, max_age_secs: Option<u64>) -> Option<String> {
        let v = self.version();
        if v < 6 {
            return None;
        }
        let mut s = format!("max-size={max_size}, min-size=1");
        if let Some(age) = max_age_secs {
            let key = if v == 6 { "expires" } else { "max-age" };
            s.push_str(&format!(", {key}={age}"));
        }
        Some(s)
    }
    /// The draft forbids 104 responses to a request without a (matching) interop version.
    pub fn may_send_104(self) -> bool {
        self.interop.is_some()
    }
}

fn header<'a>(h: &'a HeaderMap, name: &str) -> Result<Option<&'a str>, Error> {
    let mut all = h.get_all(name).iter();
    let Some(first) = all.next() else {
        return Ok(None);
    };
    if all.next().is_some() {
        return Err(Error::bad(
            "bad_header",
            format!("{name} is given more than once"),
        ));
    }
    first
        .to_str()
        .map(|s| Some(s.trim()))
        .map_err(|_| Error::bad("bad_header", format!("{name} is not visible ASCII")))
}

/// True when the request speaks the draft rather than tus: it carries none of tus's
/// `Tus-Resumable` and one of the draft's own fields.
pub fn is_draft(h: &HeaderMap) -> bool {
    if h.contains_key("tus-resumable") {
        return false;
    }
    h.contains_key("upload-draft-interop-version")
        || h.contains_key("upload-complete")
        || h.contains_key("upload-incomplete")
        || content_type_is(h, PARTIAL_UPLOAD)
}

/// The client's dialect; an interop version we do not speak is refused.
pub fn dialect(h: &HeaderMap) -> Result<Dialect, Error> {
    let Some(v) = header(h, "upload-draft-interop-version")? else {
        return Ok(Dialect { interop: None });
    };
    let n = parse_integer("Upload-Draft-Interop-Version", v)?;
    let supported = SUPPORTED_INTEROP
        .iter()
        .map(u32::to_string)
        .collect::<Vec<_>>()
        .join(", ");
    match u32::try_from(n) {
        Ok(n) if SUPPORTED_INTEROP.contains(&n) => Ok(Dialect { interop: Some(n) }),
        _ => Err(Error::bad(
            "unsupported_interop_version",
            format!("Upload-Draft-Interop-Version {n} is not supported (supported: {supported})"),
        )),
    }
}

/// A Structured Field Integer (RFC 9651 §3.3.1) that must be non-negative, parameters ignored.
pub fn parse_integer(name: &str, value: &str) -> Result<u64, Error> {
    let bare = value.split(';').next().unwrap_or("").trim();
    let ok = !bare.is_empty() && bare.len() <= 15 && bare.bytes().all(|b| b.is_ascii_digit());
    if !ok {
        return Err(Error::bad(
            "bad_header",
            format!("{name} must be a non-negative integer of at most 15 digits, got {value:?}"),
        ));
    }
    bare.parse()
        .map_err(|_| Error::bad("bad_header", format!("{name} is out of range: {value:?}")))
}

/// A Structured Field Boolean (`?0` / `?1`, RFC 9651 §3.3.6), parameters ignored.
pub fn parse_boolean(name: &str, value: &str) -> Result<bool, Error> {
    match value.split(';').next().unwrap_or("").trim() {
        "?1" => Ok(true),
        "?0" => Ok(false),
        _ => Err(Error::bad(
            "bad_header",
            format!("{name} must be a structured boolean (?0 or ?1), got {value:?}"),
        )),
    }
}

/// Whether the request says it completes the upload (`Upload-Complete`, or the inverse
/// `Upload-Incomplete` of interop 3); `None` when it says nothing.
pub fn completes(h: &HeaderMap, d: Dialect) -> Result<Option<bool>, Error> {
    let (complete, incomplete) = (
        header(h, "upload-complete")?,
        header(h, "upload-incomplete")?,
    );
    match (complete, incomplete) {
        (Some(_), Some(_)) => Err(Error::bad(
            "bad_header",
            "Upload-Complete and Upload-Incomplete contradict each other: send one",
        )),
        (Some(v), None) if d.version() != 3 => Ok(Some(parse_boolean("Upload-Complete", v)?)),
        (None, Some(v)) if d.version() == 3 => Ok(Some(!parse_boolean("Upload-Incomplete", v)?)),
        (Some(_), None) => Err(Error::bad(
            "bad_header",
            "interop version 3 uses Upload-Incomplete, not Upload-Complete",
        )),
        (None, Some(_)) => Err(Error::bad(
            "bad_header",
            "Upload-Incomplete belongs to interop version 3; later versions use Upload-Complete",
        )),
        (None, None) => Ok(None),
    }
}

fn content_length(h: &HeaderMap) -> Result<Option<u64>, Error> {
    match header(h, "content-length")? {
        None => Ok(None),
        Some(v) => v.parse::<u64>().map(Some).map_err(|_| {
            Error::bad(
                "bad_header",
                format!("Content-Length {v:?} is not a length"),
            )
        }),
    }
}

/// An RFC 9530 digest dictionary (`sha-256=:BASE64:, sha=:…:`): the strongest algorithm we
/// know. Unknown algorithms alone are refused, since the client asked for a check we cannot do.
pub fn parse_digest(name: &str, value: &str) -> Result<Checksum, Error> {
    use base64::Engine;
    let mut best: Option<Checksum> = None;
    let mut seen = Vec::new();
    for member in value.split(',') {
        let member = member.trim();
        let Some((alg, rest)) = member.split_once('=') else {
            return Err(Error::bad(
                "bad_header",
                format!("{name} member {member:?} is not algorithm=:base64:"),
            ));
        };
        let alg = alg.trim().to_ascii_lowercase();
        seen.push(alg.clone());
        let rest = rest.split(';').next().unwrap_or("").trim();
        let Some(b64) = rest.strip_prefix(':').and_then(|r| r.strip_suffix(':')) else {
            return Err(Error::bad(
                "bad_header",
                format!("{name} value for {alg} must be a byte sequence :base64:"),
            ));
        };
        let digest = base64::engine::general_purpose::STANDARD
            .decode(b64)
            .map_err(|_| Error::bad("bad_header", format!("{name} {alg} is not base64")))?;
        let (algorithm, len) = match alg.as_str() {
            "sha-256" => (Algorithm::Sha256, 32),
            "sha" => (Algorithm::Sha1, 20),
            _ => continue,
        };
        if digest.len() != len {
            return Err(Error::bad(
                "bad_header",
                format!("{name} {alg} has {} bytes, expected {len}", digest.len()),
            ));
        }
        let better = match &best {
            None => true,
            Some(b) => b.algorithm == Algorithm::Sha1 && algorithm == Algorithm::Sha256,
        };
        if better {
            best = Some(Checksum { algorithm, digest });
        }
    }
    best.ok_or_else(|| {
        Error::bad(
            "unsupported_digest",
            format!(
                "{name} names only algorithms we cannot check ({}); use sha-256",
                seen.join(", ")
            ),
        )
    })
}

/// What an upload creation asks for.
#[derive(Debug, Clone, PartialEq)]
pub struct Creation {
    /// The whole representation's length.
    pub length: u64,
    /// The request content completes the upload.
    pub complete: bool,
    /// Bytes the request content carries, when known.
    pub content_length: Option<u64>,
    /// `Content-Type` of the representation, when given.
    pub media_type: Option<String>,
    /// File name from `Content-Disposition`, when given.
    pub filename: Option<String>,
    /// `Content-Digest` of this request's content.
    pub content_digest: Option<Checksum>,
    /// `Repr-Digest` of the whole representation, checked at completion.
    pub repr_digest: Option<Checksum>,
}

/// Validates an upload creation (any request with `Upload-Complete`) against `max_size`.
pub fn parse_creation(h: &HeaderMap, d: Dialect, max_size: u64) -> Result<Creation, Error> {
    let Some(complete) = completes(h, d)? else {
        return Err(Error::bad(
            "bad_header",
            format!("an upload creation needs {}", d.complete_header()),
        ));
    };
    let content_length = content_length(h)?;
    let declared = match header(h, "upload-length")? {
        Some(v) => Some(parse_integer("Upload-Length", v)?),
        None => None,
    };
    let implied = if complete { content_length } else { None };
    let length = match (declared, implied) {
        (Some(a), Some(b)) if a != b => {
            return Err(Error::length(format!(
                "Upload-Length {a} contradicts Upload-Complete: ?1 with Content-Length {b}"
            )));
        }
        (Some(a), _) => a,
        (None, Some(b)) => b,
        (None, None) => {
            return Err(Error {
                status: 411,
                problem: "about:blank",
                code: "length_required",
                message: "this server needs the length up front (Upload-Limit min-size): send \
                          Upload-Length, or Upload-Complete: ?1 with Content-Length"
                    .into(),
            });
        }
    };
    if let Some(n) = content_length
        && n > length
    {
        return Err(Error::length(format!(
            "Content-Length {n} is more than Upload-Length {length}"
        )));
    }
    if length > max_size {
        return Err(Error {
            status: 413,
            problem: "about:blank",
            code: "too_large",
            message: format!("the upload ({length} bytes) is over max-size {max_size}"),
        });
    }
    if length == 0 {
        return Err(Error::bad(
            "empty",
            "an empty upload cannot be a moment (Upload-Limit min-size=1)",
        ));
    }
    let media_type = media_type(h);
    if let Some(t) = &media_type
        && t != "application/octet-stream"
        && !crate::tus::accepted_filetype(t.as_bytes())
    {
        return Err(Error {
            status: 415,
            problem: "about:blank",
            code: "unsupported_filetype",
            message: format!(
                "Content-Type {t:?} is not a video (video/* or application/octet-stream)"
            ),
        });
    }
    let filename = match header(h, "content-disposition")? {
        Some(v) => disposition_filename(v),
        None => None,
    };
    let content_digest = match header(h, "content-digest")? {
        Some(v) => Some(parse_digest("Content-Digest", v)?),
        None => None,
    };
    let repr_digest = match header(h, "repr-digest")? {
        Some(v) => Some(parse_digest("Repr-Digest", v)?),
        None => None,
    };
    Ok(Creation {
        length,
        complete,
        content_length,
        media_type,
        filename,
        content_digest,
        repr_digest,
    })
}

/// The `filename` (or `filename*=UTF-8''…`) parameter of a `Content-Disposition`.
pub fn disposition_filename(v: &str) -> Option<String> {
    let mut plain = None;
    for param in v.split(';').skip(1) {
        let Some((k, val)) = param.trim().split_once('=') else {
            continue;
        };
        match k.trim().to_ascii_lowercase().as_str() {
            "filename*" => {
                let enc = val.trim();
                let rest = enc
                    .get(..7)
                    .filter(|p| p.eq_ignore_ascii_case("utf-8''"))
                    .map(|_| &enc[7..])?;
                return percent_decode(rest);
            }
            "filename" => plain = Some(val.trim().trim_matches('"').to_string()),
            _ => {}
        }
    }
    plain.filter(|s| !s.is_empty())
}

fn percent_decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = std::str::from_utf8(b.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// What an append asks for.
#[derive(Debug, Clone, PartialEq)]
pub struct Append {
    /// Where the client thinks the upload stands.
    pub offset: u64,
    /// The content ends the upload.
    pub complete: bool,
    /// Bytes the content carries, when known.
    pub content_length: Option<u64>,
    /// `Upload-Length`, when repeated.
    pub length: Option<u64>,
    /// `Content-Digest` of this content.
    pub content_digest: Option<Checksum>,
}

/// Validates an append (`PATCH` with `application/partial-upload`).
pub fn parse_append(h: &HeaderMap, d: Dialect) -> Result<Append, Error> {
    if d.requires_partial_upload() && !content_type_is(h, PARTIAL_UPLOAD) {
        return Err(Error {
            status: 415,
            problem: "about:blank",
            code: "bad_content_type",
            message: format!("an append must have Content-Type {PARTIAL_UPLOAD}"),
        });
    }
    let offset = match header(h, "upload-offset")? {
        Some(v) => parse_integer("Upload-Offset", v)?,
        None => return Err(Error::bad("bad_header", "an append needs Upload-Offset")),
    };
    let Some(complete) = completes(h, d)? else {
        return Err(Error::bad(
            "bad_header",
            format!("an append needs {}", d.complete_header()),
        ));
    };
    let length = match header(h, "upload-length")? {
        Some(v) => Some(parse_integer("Upload-Length", v)?),
        None => None,
    };
    let content_digest = match header(h, "content-digest")? {
        Some(v) => Some(parse_digest("Content-Digest", v)?),
        None => None,
    };
    Ok(Append {
        offset,
        complete,
        content_length: content_length(h)?,
        length,
        content_digest,
    })
}

/// The upload as an append sees it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct State {
    /// Total length.
    pub length: u64,
    /// Durable offset.
    pub offset: u64,
    /// Every byte is in.
    pub complete: bool,
}

/// Checks an append against the upload (offset first, then lengths, then completeness).
pub fn check_append(s: State, a: &Append) -> Result<(), Error> {
    if let Some(l) = a.length
        && l != s.length
    {
        return Err(Error::length(format!(
            "Upload-Length {l} differs from the upload's length {}",
            s.length
        )));
    }
    if s.complete {
        return Err(Error {
            status: 400,
            problem: PROBLEM_COMPLETED,
            code: "completed",
            message: "the upload is already complete; nothing can be appended".into(),
        });
    }
    if a.offset != s.offset {
        return Err(Error {
            status: 409,
            problem: PROBLEM_OFFSET,
            code: "offset_mismatch",
            message: format!(
                "Upload-Offset {} does not match the upload's offset {}",
                a.offset, s.offset
            ),
        });
    }
    if let Some(n) = a.content_length {
        let end = s.offset + n;
        if end > s.length {
            return Err(Error {
                status: 413,
                problem: "about:blank",
                code: "past_length",
                message: format!(
                    "the content ends at {end}, past the upload's length {}; nothing was written",
                    s.length
                ),
            });
        }
        if a.complete && end != s.length {
            return Err(Error::length(format!(
                "Upload-Complete: ?1 but the content ends at {end}, not at the length {}",
                s.length
            )));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tus::test_headers as h;
    const LATEST: Dialect = Dialect { interop: None };

    #[test]
    fn structured_fields() {
        assert_eq!(parse_integer("X", "42").unwrap(), 42);
        assert_eq!(parse_integer("X", "7;a=1").unwrap(), 7);
        for bad in ["", "-1", "+1", "1.5", "abc", "1234567890123456", " "] {
            assert!(parse_integer("X", bad).is_err(), "{bad:?}");
        }
        assert!(parse_boolean("X", "?1").unwrap());
        assert!(!parse_boolean("X", "?0").unwrap());
        for bad in ["1", "true", "?2", "", "?"] {
            let e = parse_boolean("X", bad).unwrap_err();
            assert_eq!(e.status, 400);
            assert!(e.message.contains("structured boolean"), "{}", e.message);
        }
    }

    #[test]
    fn dialects() {
        assert_eq!(dialect(&h(&[])).unwrap().interop, None);
        let v3 = dialect(&h(&[("upload-draft-interop-version", "3")])).unwrap();
        assert_eq!(v3.complete_header(), "upload-incomplete");
        assert_eq!(v3.complete_value(true), "?0");
        assert!(!v3.requires_partial_upload());
        assert_eq!(v3.limit(10, Some(5)), None);
        let v6 = dialect(&h(&[("upload-draft-interop-version", "6")])).unwrap();
        assert_eq!(
            v6.limit(10, Some(5)).unwrap(),
            "max-size=10, min-size=1, expires=5"
        );
        assert_eq!(
            LATEST.limit(10, Some(5)).unwrap(),
            "max-size=10, min-size=1, max-age=5"
        );
        assert!(!LATEST.may_send_104() && v6.may_send_104());
        let e = dialect(&h(&[("upload-draft-interop-version", "2")])).unwrap_err();
        assert!(
            e.message.contains("supported: 3, 4, 5, 6, 7, 8"),
            "{}",
            e.message
        );
        assert!(dialect(&h(&[("upload-draft-interop-version", "x")])).is_err());
        assert!(is_draft(&h(&[("upload-complete", "?1")])));
        assert!(!is_draft(&h(&[
            ("upload-complete", "?1"),
            ("tus-resumable", "1.0.0")
        ])));
        assert!(!is_draft(&h(&[])));
    }

    #[test]
    fn creation_lengths_and_limits() {
        let c = parse_creation(
            &h(&[("upload-complete", "?1"), ("content-length", "100")]),
            LATEST,
            1000,
        )
        .unwrap();
        assert_eq!((c.length, c.complete), (100, true));
        let c = parse_creation(
            &h(&[
                ("upload-complete", "?0"),
                ("upload-length", "500"),
                ("content-length", "0"),
            ]),
            LATEST,
            1000,
        )
        .unwrap();
        assert_eq!((c.length, c.complete), (500, false));
        let e = parse_creation(
            &h(&[
                ("upload-complete", "?1"),
                ("content-length", "100"),
                ("upload-length", "99"),
            ]),
            LATEST,
            1000,
        )
        .unwrap_err();
        assert_eq!((e.status, e.problem), (400, PROBLEM_LENGTH));
        let e = parse_creation(&h(&[("upload-complete", "?0")]), LATEST, 1000).unwrap_err();
        assert_eq!(e.status, 411);
        let e = parse_creation(
            &h(&[("upload-complete", "?0"), ("upload-length", "1001")]),
            LATEST,
            1000,
        )
        .unwrap_err();
        assert_eq!(e.status, 413);
        let e = parse_creation(&h(&[("upload-length", "10")]), LATEST, 1000).unwrap_err();
        assert!(e.message.contains("needs upload-complete"), "{}", e.message);
        let e = parse_creation(
            &h(&[
                ("upload-complete", "?0"),
                ("upload-length", "10"),
                ("content-type", "image/png"),
            ]),
            LATEST,
            1000,
        )
        .unwrap_err();
        assert_eq!(e.status, 415);
        // interop 3 speaks Upload-Incomplete
        let v3 = Dialect { interop: Some(3) };
        let c = parse_creation(
            &h(&[("upload-incomplete", "?0"), ("content-length", "10")]),
            v3,
            1000,
        )
        .unwrap();
        assert!(c.complete);
        assert!(
            parse_creation(
                &h(&[("upload-complete", "?1"), ("content-length", "10")]),
                v3,
                1000
            )
            .is_err()
        );
        let e = parse_creation(
            &h(&[
                ("upload-complete", "?1"),
                ("upload-incomplete", "?0"),
                ("content-length", "1"),
            ]),
            LATEST,
            1000,
        )
        .unwrap_err();
        assert!(e.message.contains("contradict"), "{}", e.message);
    }

    #[test]
    fn filenames_and_digests() {
        assert_eq!(
            disposition_filename("inline; filename=\"a b.mp4\"").as_deref(),
            Some("a b.mp4")
        );
        assert_eq!(
            disposition_filename("inline; filename=\"x\"; filename*=UTF-8''f%C3%A9te.mov")
                .as_deref(),
            Some("féte.mov")
        );
        assert_eq!(disposition_filename("inline"), None);
        let d = parse_digest(
            "Repr-Digest",
            "sha=:qZk+NkcGgWq6PiVxeFDCbJzQ2J0=:, sha-256=:LCa0a2j/xo/5m0U8HTBBNBNCLXBkg7+g+YpeiGJm564=:",
        )
        .unwrap();
        assert_eq!((d.algorithm, d.digest.len()), (Algorithm::Sha256, 32));
        let e = parse_digest("Repr-Digest", "md5=:AAAAAAAAAAAAAAAAAAAAAA==:").unwrap_err();
        assert!(e.message.contains("use sha-256"), "{}", e.message);
        assert!(parse_digest("Repr-Digest", "sha-256=abc").is_err());
        assert!(parse_digest("Repr-Digest", "sha-256=:AAAA:").is_err());
    }

    #[test]
    fn appends() {
        let ok = h(&[
            ("content-type", PARTIAL_UPLOAD),
            ("upload-offset", "10"),
            ("upload-complete", "?0"),
            ("content-length", "5"),
        ]);
        let a = parse_append(&ok, LATEST).unwrap();
        assert_eq!(
            (a.offset, a.complete, a.content_length),
            (10, false, Some(5))
        );
        let st = State {
            length: 20,
            offset: 10,
            complete: false,
        };
        check_append(st, &a).unwrap();
        let e = check_append(State { offset: 12, ..st }, &a).unwrap_err();
        assert_eq!((e.status, e.problem), (409, PROBLEM_OFFSET));
        let done = Append {
            complete: true,
            ..a.clone()
        };
        assert_eq!(check_append(st, &done).unwrap_err().problem, PROBLEM_LENGTH);
        let past = Append {
            content_length: Some(11),
            ..a.clone()
        };
        assert_eq!(check_append(st, &past).unwrap_err().status, 413);
        let e = check_append(
            State {
                complete: true,
                ..st
            },
            &a,
        )
        .unwrap_err();
        assert_eq!(e.problem, PROBLEM_COMPLETED);
        let wrong_len = Append {
            length: Some(21),
            ..a.clone()
        };
        assert_eq!(
            check_append(st, &wrong_len).unwrap_err().problem,
            PROBLEM_LENGTH
        );
        // the media type is required from interop 6, not before
        let plain = h(&[("upload-offset", "0"), ("upload-complete", "?0")]);
        assert_eq!(parse_append(&plain, LATEST).unwrap_err().status, 415);
        assert!(parse_append(&plain, Dialect { interop: Some(5) }).is_ok());
        let no_offset = h(&[("content-type", PARTIAL_UPLOAD), ("upload-complete", "?0")]);
        assert!(
            parse_append(&no_offset, LATEST)
                .unwrap_err()
                .message
                .contains("Upload-Offset")
        );
        let twice = h(&[
            ("content-type", PARTIAL_UPLOAD),
            ("upload-offset", "0"),
            ("upload-offset", "1"),
            ("upload-complete", "?0"),
        ]);
        assert!(
            parse_append(&twice, LATEST)
                .unwrap_err()
                .message
                .contains("more than once")
        );
    }
}
