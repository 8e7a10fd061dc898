//! The HLS origin: serves published objects under `/hls/{id}/…` from the object store with the
//! headers players and CDNs expect — content types, long-lived immutable caching for segments,
//! byte ranges (206/416), strong ETags with `If-None-Match` (304), and CORS for browser players.
//!
//! Only keys under `hls/{id}/` are reachable; anything else (traversal, other prefixes) is 404.
//! A moment's master playlist is served only once the moment is `ready`.

use axum::Router;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use common::ApiError;
use common::db::Db;
use common::moment::{self, State as MomentState};
use common::store::{ByteRange, Key, Store};

use crate::publish::headers_for;

/// What the origin needs.
#[derive(Clone)]
pub struct OriginState {
    /// Where the published objects are.
    pub store: Store,
    /// Where moment states are.
    pub db: Db,
}

/// `GET`/`HEAD`/`OPTIONS /hls/{id}/{*path}`.
pub fn router(state: OriginState) -> Router {
    Router::new()
        .route("/hls/{id}/{*path}", get(serve).options(preflight))
        .with_state(state)
}

fn cors(headers: &mut HeaderMap) {
    headers.insert(
        header::ACCESS_CONTROL_ALLOW_ORIGIN,
        HeaderValue::from_static("*"),
    );
    headers.insert(
        header::ACCESS_CONTROL_EXPOSE_HEADERS,
        HeaderValue::from_static("Content-Length, Content-Range, Accept-Ranges, ETag"),
    );
}

async fn preflight() -> Response {
    let mut resp = StatusCode::NO_CONTENT.into_response();
    let h = resp.headers_mut();
    cors(h);
    h.insert(
        header::ACCESS_CONTROL_ALLOW_METHODS,
        HeaderValue::from_static("GET, HEAD, OPTIONS"),
    );
    h.insert(
        header::ACCESS_CONTROL_ALLOW_HEADERS,
        HeaderValue::from_static("Range, If-None-Match"),
    );
    h.insert(
        header::ACCESS_CONTROL_MAX_AGE,
        HeaderValue::from_static("86400"),
    );
    resp
}

fn not_found() -> Response {
    let mut resp = ApiError::not_found("no such object").into_response();
    cors(resp.headers_mut());
    resp
}

fn etag_matches(header: Option<&HeaderValue>, etag: &str) -> bool {
    let Some(v) = header.and_then(|v| v.to_str().ok()) else {
        return false;
    };
    v.split(',').any(|t| {
        let t = t.trim();
        t == "*" || t.trim_start_matches("W/") == etag
    })
}

async fn serve(
    State(s): State<OriginState>,
    Path((id, path)): Path<(String, String)>,
    req_headers: HeaderMap,
) -> Response {
    if !common::ids::is_id(&id) {
        return not_found();
    }
    let Ok(key) = Key::new(format!("hls/{id}/{path}")) else {
        return not_found();
    };
    if path == "master.m3u8" {
        match moment::get(&s.db, &id).await {
            Ok(Some(m)) if m.state == MomentState::Ready => {}
            Ok(_) => return not_found(),
            Err(e) => return ApiError::from(e).into_response(),
        }
    }
    let range = req_headers
        .get(header::RANGE)
        .and_then(|v| v.to_str().ok())
        .and_then(ByteRange::parse_header);
    let obj = match s.store.get(&key, range).await {
        Ok(obj) => obj,
        Err(common::store::Error::NotFound(_)) => return not_found(),
        Err(e) => {
            let mut resp = ApiError::from(e).into_response();
            cors(resp.headers_mut());
            return resp;
        }
    };
    let defaults = headers_for(&path);
    let mut headers = HeaderMap::new();
    cors(&mut headers);
    headers.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    let content_type = obj.meta.content_type.or(defaults.content_type);
    let cache_control = obj.meta.cache_control.or(defaults.cache_control);
    for (name, value) in [
        (header::CONTENT_TYPE, content_type),
        (header::CACHE_CONTROL, cache_control),
        (header::ETAG, obj.meta.etag.clone()),
    ] {
        if let Some(v) = value.and_then(|v| HeaderValue::from_str(&v).ok()) {
            headers.insert(name, v);
        }
    }
    if let Some(etag) = &obj.meta.etag
        && etag_matches(req_headers.get(header::IF_NONE_MATCH), etag)
    {
        return (StatusCode::NOT_MODIFIED, headers).into_response();
    }
    let (status, length) = match obj.range {
        Some((first, last)) => {
            if let Ok(v) = HeaderValue::from_str(&format!("bytes {first}-{last}/{}", obj.meta.size))
            {
                headers.insert(header::CONTENT_RANGE, v);
            }
            (StatusCode::PARTIAL_CONTENT, last - first + 1)
        }
        None => (StatusCode::OK, obj.meta.size),
    };
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(length));
    (status, headers, Body::from_stream(obj.body)).into_response()
}

/// The URL players should fetch a moment's master playlist from: under the public base (a CDN
/// or bucket URL that maps to the store's root) when configured, else this service's origin at
/// `host`.
pub fn master_url(public_base: Option<&str>, host: &str, id: &str) -> String {
    object_url(public_base, host, &format!("hls/{id}/master.m3u8"))
}

/// As [`master_url`] for any published object key.
pub fn object_url(public_base: Option<&str>, host: &str, key: &str) -> String {
    match public_base {
        Some(base) => format!("{}/{key}", base.trim_end_matches('/')),
        None => format!("http://{host}/{key}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn etag_matching() {
        let h = HeaderValue::from_static("\"abc\", W/\"def\"");
        assert!(etag_matches(Some(&h), "\"abc\""));
        assert!(etag_matches(Some(&h), "\"def\""));
        assert!(!etag_matches(Some(&h), "\"xyz\""));
        assert!(etag_matches(Some(&HeaderValue::from_static("*")), "\"q\""));
        assert!(!etag_matches(None, "\"abc\""));
    }

    #[test]
    fn urls() {
        assert_eq!(
            master_url(None, "127.0.0.1:8080", "abc"),
            "http://127.0.0.1:8080/hls/abc/master.m3u8"
        );
        assert_eq!(
            master_url(Some("https://cdn.example.com/media/"), "x", "abc"),
            "https://cdn.example.com/media/hls/abc/master.m3u8"
        );
    }
}
