//! The IETF resumable-upload draft's front end: upload creation (`POST /files` with
//! `Upload-Complete`), offset retrieval (`HEAD`), append (`PATCH` with
//! `application/partial-upload`) and cancellation (`DELETE`) on the same routes, upload core,
//! sinks, auth, limits and moment creation as tus. Header rules are in [`crate::rufh`].
//!
//! Where it departs from the letter of the draft, on purpose:
//! * The length must be known at creation (`Upload-Limit: min-size=1` says so; without it the
//!   answer is `411`): a moment is queued the moment its last byte is durable, as with tus, so
//!   an append with `Upload-Complete: ?0` whose content reaches the length also completes it.
//! * `104 (Upload Resumption Supported)` goes out on HTTP/3 only, right after the upload
//!   resource is created (with `Location` and `Upload-Limit`); hyper cannot send
//!   informational responses on HTTP/1.1 or HTTP/2. Progress 104s are not sent.
//! * `Want-Repr-Digest` is not answered; `Repr-Digest` (sha-256 or sha) given at creation is
//!   checked when the upload completes, and `Content-Digest` per request.

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, Version};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use common::auth::User;
use common::ids::now_ms;
use common::server::h3::Interim;

use crate::handler::{self, IngestState, set};
use crate::record::Upload;
use crate::rufh::{self, Dialect};

/// A draft error as `application/problem+json` (RFC 9457) with the draft's problem types.
fn problem(d: Option<Dialect>, e: &rufh::Error, extra: serde_json::Value) -> Response {
    problem_doc(d, e.status, e.problem, e.code, &e.message, extra)
}

fn problem_doc(
    d: Option<Dialect>,
    status: u16,
    kind: &str,
    code: &str,
    message: &str,
    extra: serde_json::Value,
) -> Response {
    // a problem document (RFC 9457) whose extension members are every route's error body
    let mut body = serde_json::json!({
        "type": kind,
        "title": title(code),
        "detail": message,
        "error": message,
        "code": code,
    });
    if let (Some(obj), serde_json::Value::Object(more)) = (body.as_object_mut(), extra) {
        obj.extend(more);
    }
    let mut resp = (
        StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_REQUEST),
        body.to_string(),
    )
        .into_response();
    set(
        resp.headers_mut(),
        "content-type",
        "application/problem+json",
    );
    interop(d, resp)
}

fn title(code: &str) -> &'static str {
    match code {
        "offset_mismatch" => "offset from request does not match offset of resource",
        "completed" => "upload is already completed",
        "inconsistent_length" => "inconsistent length values for upload",
        "too_large" | "past_length" => "upload exceeds its limit",
        "length_required" => "upload length required",
        "not_found" => "no such upload",
        "expired" => "upload expired",
        "internal" => "upload could not be stored",
        _ => "bad upload request",
    }
}

/// Echoes the interop version the client speaks.
fn interop(d: Option<Dialect>, mut resp: Response) -> Response {
    if let Some(v) = d.and_then(|d| d.interop) {
        set(
            resp.headers_mut(),
            "upload-draft-interop-version",
            v.to_string(),
        );
    }
    resp
}

/// Turns an answer of the shared core (JSON `{"error","code"}`) into the draft's form: errors
/// become problem documents (the offset mismatch with `expected-offset`), and the interop
/// version is echoed.
pub(crate) async fn decorate(d: Option<Dialect>, resp: Response) -> Response {
    if !(resp.status().is_client_error() || resp.status().is_server_error()) {
        return interop(d, resp);
    }
    let (parts, body) = resp.into_parts();
    let bytes = axum::body::to_bytes(body, 64 * 1024)
        .await
        .unwrap_or_default();
    let json: serde_json::Value = serde_json::from_slice(&bytes).unwrap_or_default();
    let code = json["code"].as_str().unwrap_or("error");
    let message = json["error"].as_str().unwrap_or("");
    let offset = parts
        .headers
        .get("upload-offset")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let (status, kind) = match code {
        "offset_mismatch" => (409, rufh::PROBLEM_OFFSET),
        // a Content-Digest mismatch is a plain 400 here (tus's 460 is tus's own)
        "checksum_mismatch" => (400, "about:blank"),
        _ => (parts.status.as_u16(), "about:blank"),
    };
    let extra = match offset {
        Some(o) => serde_json::json!({ "expected-offset": o }),
        None => serde_json::json!({}),
    };
    let mut out = problem_doc(d, status, kind, code, message, extra);
    for (k, v) in parts.headers.iter() {
        if k != "content-type" && k != "content-length" {
            out.headers_mut().insert(k.clone(), v.clone());
        }
    }
    out
}

fn max_age(up: &Upload) -> Option<u64> {
    (!up.complete).then(|| ((up.expires_at - now_ms()).max(0) / 1000) as u64)
}

fn limit_header(s: &IngestState, d: Dialect, resp: &mut Response, up: Option<&Upload>) {
    let age = match up {
        Some(u) => max_age(u),
        None => Some(s.config.expires_secs),
    };
    if let Some(l) = d.limit(s.config.max_size, age) {
        set(resp.headers_mut(), "upload-limit", l);
    }
}

/// Upload state fields, in the client's dialect.
fn state_headers(s: &IngestState, d: Dialect, resp: &mut Response, up: &Upload) {
    let h = resp.headers_mut();
    set(h, "upload-offset", up.received.to_string());
    set(h, d.complete_header(), d.complete_value(up.complete));
    set(h, "upload-length", up.length.to_string());
    set(h, "moment-id", &up.moment_id);
    set(h, "cache-control", "no-store");
    limit_header(s, d, resp, Some(up));
}

/// The metadata stored with a draft upload, in tus's `Upload-Metadata` form (so a tus `HEAD`
/// shows it): file name, media type and the `Repr-Digest` to check at completion.
fn metadata(c: &rufh::Creation, repr_raw: Option<&str>) -> String {
    let mut parts = Vec::new();
    if let Some(f) = &c.filename {
        parts.push(format!("filename {}", B64.encode(f)));
    }
    if let Some(t) = &c.media_type {
        parts.push(format!("filetype {}", B64.encode(t)));
    }
    if let Some(r) = repr_raw {
        parts.push(format!("repr-digest {}", B64.encode(r)));
    }
    parts.join(",")
}

/// The `Repr-Digest` recorded at creation, if any.
fn repr_of(up: &Upload) -> Option<crate::tus::Checksum> {
    let meta = crate::tus::parse_metadata(&up.metadata).ok()?;
    let raw = meta.get("repr-digest")?.as_ref()?;
    rufh::parse_digest("Repr-Digest", &String::from_utf8_lossy(raw)).ok()
}

/// The answer to the request that completed the upload: what creating the moment produced.
fn completed(s: &IngestState, d: Dialect, status: StatusCode, up: &Upload) -> Response {
    let mut resp = (
        status,
        axum::Json(serde_json::json!({
            "upload_id": up.id,
            "moment_id": up.moment_id,
            "moment_url": format!("/v1/moments/{}", up.moment_id),
        })),
    )
        .into_response();
    state_headers(s, d, &mut resp, up);
    resp
}

fn length_error(d: Dialect, up: &Upload) -> Response {
    problem(
        Some(d),
        &rufh::Error {
            status: 400,
            problem: rufh::PROBLEM_LENGTH,
            code: "inconsistent_length",
            message: format!(
                "Upload-Complete: ?1 but the content ended at {} before the length {}; the bytes \
                 were kept: append the rest",
                up.received, up.length
            ),
        },
        serde_json::json!({}),
    )
}

/// Upload creation.
pub(crate) async fn create(
    State(s): State<IngestState>,
    User(user): User,
    headers: HeaderMap,
    uri: axum::http::Uri,
    version: Version,
    interim: Option<Interim>,
    body: Body,
) -> Response {
    let d = match rufh::dialect(&headers) {
        Ok(d) => d,
        Err(e) => return problem(None, &e, serde_json::json!({})),
    };
    let c = match rufh::parse_creation(&headers, d, s.config.max_size) {
        Ok(c) => c,
        Err(e) => {
            let mut resp = problem(Some(d), &e, serde_json::json!({}));
            if e.status == 413 {
                limit_header(&s, d, &mut resp, None);
            }
            return resp;
        }
    };
    let repr_raw = headers.get("repr-digest").and_then(|v| v.to_str().ok());
    let up = match handler::new_upload(&s, &user, c.length, &metadata(&c, repr_raw)).await {
        Ok(up) => up,
        Err(resp) => return decorate(Some(d), resp).await,
    };
    let location = handler::location(&headers, &uri, version, &up.id);
    if let Some(i) = interim.filter(|_| d.may_send_104()) {
        let mut info = http::Response::builder()
            .status(104)
            .header("location", &location)
            .header(
                "upload-draft-interop-version",
                d.interop.unwrap_or(rufh::LATEST_INTEROP).to_string(),
            );
        if let Some(l) = d.limit(s.config.max_size, max_age(&up)) {
            info = info.header("upload-limit", l);
        }
        if let Ok(info) = info.body(()) {
            i.send(info);
        }
    }
    let up = if c.content_length == Some(0) {
        up
    } else {
        let repr = repr_of(&up);
        match handler::write(&s, up, body, c.content_digest.clone(), repr).await {
            Ok(u) => u,
            Err(resp) => {
                // the upload resource exists: say where, so the client can ask about it
                let mut resp = decorate(Some(d), resp).await;
                set(resp.headers_mut(), "location", location);
                return resp;
            }
        }
    };
    let mut resp = if up.complete {
        completed(&s, d, StatusCode::CREATED, &up)
    } else if c.complete {
        length_error(d, &up)
    } else {
        let mut r = StatusCode::CREATED.into_response();
        state_headers(&s, d, &mut r, &up);
        r
    };
    set(resp.headers_mut(), "location", location);
    interop(Some(d), resp)
}

/// Offset retrieval.
pub(crate) async fn head(
    State(s): State<IngestState>,
    User(user): User,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Response {
    let d = match rufh::dialect(&headers) {
        Ok(d) => d,
        Err(e) => return problem(None, &e, serde_json::json!({})),
    };
    match handler::owned(&s, &id, &user).await {
        Ok(up) => {
            let mut resp = StatusCode::NO_CONTENT.into_response();
            state_headers(&s, d, &mut resp, &up);
            interop(Some(d), resp)
        }
        Err(resp) => decorate(Some(d), resp).await,
    }
}

/// Upload append.
pub(crate) async fn append(
    State(s): State<IngestState>,
    User(user): User,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let d = match rufh::dialect(&headers) {
        Ok(d) => d,
        Err(e) => {
            handler::drain(body).await;
            return problem(None, &e, serde_json::json!({}));
        }
    };
    let a = match rufh::parse_append(&headers, d) {
        Ok(a) => a,
        Err(e) => {
            handler::drain(body).await;
            return problem(Some(d), &e, serde_json::json!({}));
        }
    };
    let up = match handler::owned(&s, &id, &user).await {
        Ok(u) => u,
        Err(resp) => {
            handler::drain(body).await;
            return decorate(Some(d), resp).await;
        }
    };
    let state = rufh::State {
        length: up.length,
        offset: up.received,
        complete: up.complete,
    };
    if let Err(e) = rufh::check_append(state, &a) {
        if e.status != 413 {
            handler::drain(body).await;
        }
        let extra = if e.status == 409 {
            serde_json::json!({ "expected-offset": up.received, "provided-offset": a.offset })
        } else {
            serde_json::json!({})
        };
        let mut resp = problem(Some(d), &e, extra);
        if e.status == 409 {
            set(resp.headers_mut(), "upload-offset", up.received.to_string());
        }
        if e.status == 413 {
            limit_header(&s, d, &mut resp, Some(&up));
        }
        return resp;
    }
    let repr = repr_of(&up);
    let up = match handler::write(&s, up, body, a.content_digest.clone(), repr).await {
        Ok(u) => u,
        Err(resp) => return decorate(Some(d), resp).await,
    };
    let resp = if up.complete {
        completed(&s, d, StatusCode::OK, &up)
    } else if a.complete {
        length_error(d, &up)
    } else {
        let mut r = StatusCode::NO_CONTENT.into_response();
        state_headers(&s, d, &mut r, &up);
        r
    };
    interop(Some(d), resp)
}
