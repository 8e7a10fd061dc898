//! HTTP helpers every service shares: the one CORS layer (browsers upload with tus-js-client and
//! play with hls.js from other origins) and the one rule for the scheme and host a request
//! reached us by (for absolute URLs in answers).

use axum::extract::Request;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri, Version, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

/// Request headers browsers may send (tus and the resumable-upload draft, HLS range requests,
/// bearer tokens, JSON).
pub const ALLOW_HEADERS: &str = "Authorization, Content-Type, Range, If-None-Match, \
    Tus-Resumable, Upload-Length, Upload-Metadata, Upload-Offset, Upload-Checksum, \
    Upload-Defer-Length, Upload-Concat, X-HTTP-Method-Override, X-Requested-With, \
    Upload-Complete, Upload-Incomplete, Upload-Draft-Interop-Version, Content-Disposition, \
    Content-Digest, Repr-Digest";

/// Response headers scripts may read.
pub const EXPOSE_HEADERS: &str = "Location, Upload-Offset, Upload-Length, Upload-Metadata, \
    Upload-Expires, Tus-Resumable, Tus-Version, Tus-Extension, Tus-Max-Size, \
    Tus-Checksum-Algorithm, Moment-Id, Upload-Complete, Upload-Incomplete, Upload-Limit, \
    Upload-Draft-Interop-Version, Accept-Patch, Content-Length, Content-Range, Accept-Ranges, \
    ETag, Retry-After";

const ALLOW_METHODS: &str = "GET, HEAD, POST, PATCH, DELETE, OPTIONS";

/// The CORS layer (`axum::middleware::from_fn(common::http::cors)`): answers preflights
/// (`OPTIONS` with `Access-Control-Request-Method`) itself and lets any origin read every other
/// answer. Nothing here is a credential check: routes authenticate by bearer token, never by
/// cookie, so `*` is safe.
pub async fn cors(req: Request, next: Next) -> Response {
    let preflight = req.method() == Method::OPTIONS
        && req
            .headers()
            .contains_key(header::ACCESS_CONTROL_REQUEST_METHOD);
    if preflight {
        let mut resp = StatusCode::NO_CONTENT.into_response();
        let h = resp.headers_mut();
        allow(h);
        h.insert(
            header::ACCESS_CONTROL_ALLOW_METHODS,
            HeaderValue::from_static(ALLOW_METHODS),
        );
        h.insert(
            header::ACCESS_CONTROL_ALLOW_HEADERS,
            HeaderValue::from_static(ALLOW_HEADERS),
        );
        h.insert(
            header::ACCESS_CONTROL_MAX_AGE,
            HeaderValue::from_static("86400"),
        );
        return resp;
    }
    let mut resp = next.run(req).await;
    allow(resp.headers_mut());
    resp
}

fn allow(h: &mut HeaderMap) {
    h.insert(
        header::ACCESS_CONTROL_ALLOW_ORIGIN,
        HeaderValue::from_static("*"),
    );
    h.insert(
        header::ACCESS_CONTROL_EXPOSE_HEADERS,
        HeaderValue::from_static(EXPOSE_HEADERS),
    );
}

/// The scheme and host a request reached us by.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestOrigin {
    /// `http` or `https` (`X-Forwarded-Proto` from a proxy wins; HTTP/3 is always `https`).
    pub scheme: String,
    /// `Host` (or the URI's authority for HTTP/2 and HTTP/3), when the request said.
    pub host: Option<String>,
}

impl RequestOrigin {
    /// Reads them off a request.
    pub fn of(headers: &HeaderMap, uri: &Uri, version: Version) -> RequestOrigin {
        let host = headers
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .map(str::to_string)
            .or_else(|| uri.authority().map(|a| a.to_string()));
        let scheme = headers
            .get("x-forwarded-proto")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
            .unwrap_or_else(|| {
                if version == Version::HTTP_3 {
                    "https".into()
                } else {
                    uri.scheme_str().unwrap_or("http").to_string()
                }
            });
        RequestOrigin { scheme, host }
    }

    /// `scheme://host{path}`, or `path` alone when the host is unknown.
    pub fn url(&self, path: &str) -> String {
        match &self.host {
            Some(h) => format!("{}://{h}{path}", self.scheme),
            None => path.to_string(),
        }
    }
}

/// The `host:port` players should fetch HLS from: the request's host, except that requests
/// that came over HTTP/3 get the TCP origin `http_origin` (players fetch HLS over TCP).
pub fn player_host(
    headers: &HeaderMap,
    uri: &Uri,
    version: Version,
    http_origin: Option<&str>,
) -> String {
    if version == Version::HTTP_3
        && let Some(o) = http_origin
    {
        return o.to_string();
    }
    RequestOrigin::of(headers, uri, version)
        .host
        .unwrap_or_else(|| "127.0.0.1:8080".to_string())
}

/// Refuses a request whose header section (names, values and the `": "` and CRLF around each)
/// is larger than `limit` bytes with `431 {"error", "code": "headers_too_large"}`, on every
/// transport alike (hyper's own HTTP/1 limit is hundreds of kB, HTTP/3's is the peer's
/// setting). Use with `axum::middleware::from_fn_with_state(limit, header_limit)`.
pub async fn header_limit(
    axum::extract::State(limit): axum::extract::State<usize>,
    req: Request,
    next: Next,
) -> Response {
    let size = header_bytes(req.headers());
    if size > limit {
        return crate::error::ApiError::new(
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            "headers_too_large",
            format!("the request's headers are {size} bytes; at most {limit} are accepted"),
        )
        .into_response();
    }
    next.run(req).await
}

/// The size of a header section as HTTP/1.1 writes it.
pub fn header_bytes(headers: &HeaderMap) -> usize {
    headers
        .iter()
        .map(|(name, value)| name.as_str().len() + value.len() + 4)
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origins_follow_the_request_and_the_proxy() {
        let mut h = HeaderMap::new();
        h.insert(header::HOST, HeaderValue::from_static("api.example:8080"));
        let uri: Uri = "/files".parse().unwrap();
        let o = RequestOrigin::of(&h, &uri, Version::HTTP_11);
        assert_eq!(o.url("/files/x"), "http://api.example:8080/files/x");
        assert_eq!(
            RequestOrigin::of(&h, &uri, Version::HTTP_3).url("/a"),
            "https://api.example:8080/a"
        );
        h.insert("x-forwarded-proto", HeaderValue::from_static("https"));
        assert_eq!(
            RequestOrigin::of(&h, &uri, Version::HTTP_11).scheme,
            "https"
        );
        let empty = HeaderMap::new();
        assert_eq!(
            RequestOrigin::of(&empty, &uri, Version::HTTP_11).url("/files/x"),
            "/files/x"
        );
        assert_eq!(
            player_host(&h, &uri, Version::HTTP_3, Some("127.0.0.1:9")),
            "127.0.0.1:9"
        );
        assert_eq!(
            player_host(&h, &uri, Version::HTTP_2, Some("127.0.0.1:9")),
            "api.example:8080"
        );
    }
}
