//! The HLS origin: serves published objects under `/hls/{id}/…` from the object store with the
//! headers players and CDNs expect — content types, long-lived immutable caching for segments,
//! byte ranges (206/416), strong ETags with `If-None-Match` (304), and CORS for browser players.
//!
//! Only keys under `hls/{id}/` are reachable; anything else (traversal, other prefixes) is 404.
//! A moment's master playlist is served only once the moment is `ready`.
//!
//! Immutable objects of ready moments (segments, init segments, pictures) are kept in memory
//! with their headers ([`cache`], a byte budget), so serving one is a lookup and one write;
//! everything else is streamed from the store. Both give the same answers, byte for byte.

pub mod cache;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

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
use futures::TryStreamExt;

use crate::publish::headers_for;
use cache::{Cache, Entry};

/// What the origin needs.
#[derive(Clone)]
pub struct OriginState {
    /// Where the published objects are.
    pub store: Store,
    /// Where moment states are.
    pub db: Db,
    /// Immutable objects in memory.
    pub cache: Arc<Cache>,
    /// Signed playback, when on.
    pub signing: Option<Signing>,
}

/// Signed playback as the origin and the status routes use it.
#[derive(Clone, Debug)]
pub struct Signing {
    /// The shared key.
    pub signer: crate::signed::Signer,
    /// Segments need the token too (else only playlists).
    pub segments: bool,
    /// The revocations every node keeps current (playback cut-offs among them).
    pub revocations: Arc<common::auth::revoke::Revocations>,
}

impl Signing {
    /// Checks a request's token for `moment` now.
    pub fn check(
        &self,
        moment: &str,
        token: Option<&str>,
    ) -> Result<crate::signed::Grant, crate::signed::Refusal> {
        self.signer.check(
            moment,
            token,
            common::ids::now_ms() / 1000,
            self.revocations.playback_cutoff(moment),
        )
    }
}

impl OriginState {
    /// An origin over `store` with a cache of `config.origin_cache_bytes`; `signing` when
    /// playback is signed.
    pub fn new(
        store: Store,
        db: Db,
        config: &crate::Config,
        signing: Option<Signing>,
    ) -> OriginState {
        OriginState {
            store,
            db,
            cache: Arc::new(Cache::new(
                config.origin_cache_bytes,
                Duration::from_secs(config.origin_cache_revalidate_secs),
            )),
            signing,
        }
    }
}

/// The `token` query parameter.
fn token_param(query: Option<&str>) -> Option<&str> {
    query?.split('&').find_map(|kv| {
        kv.strip_prefix(crate::signed::PARAM)
            .and_then(|rest| rest.strip_prefix('='))
    })
}

/// Whether signed playback guards `path` (of a moment): playlists always; segments, init
/// segments, captions and thumbnails when segments are signed; posters never (feeds show them
/// before anyone plays).
fn guarded(path: &str, segments: bool) -> bool {
    if path == "poster.jpg" || path == "poster-blur.jpg" {
        return false;
    }
    path.ends_with(".m3u8") || segments
}

/// `GET`/`HEAD`/`OPTIONS /hls/{id}/{*path}`.
pub fn router(state: OriginState) -> Router {
    Router::new()
        .route("/hls/{id}/{*path}", get(serve).options(preflight))
        .with_state(state)
}

/// `OPTIONS` that is not a CORS preflight (the CORS layer answers those).
async fn preflight() -> Response {
    let mut resp = StatusCode::NO_CONTENT.into_response();
    resp.headers_mut().insert(
        header::ALLOW,
        HeaderValue::from_static("GET, HEAD, OPTIONS"),
    );
    resp
}

fn not_found() -> Response {
    ApiError::not_found("no such object").into_response()
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

/// The parts of an answer that do not depend on the request.
struct Head {
    content_type: Option<HeaderValue>,
    cache_control: Option<HeaderValue>,
    etag: Option<HeaderValue>,
    size: u64,
}

/// The body: the object from memory, or a stream from the store (already cut to the range).
enum Source {
    Memory(bytes::Bytes),
    Stream(common::store::ByteStream, Option<(u64, u64)>),
}

/// Builds the answer from an object's head and body: validators, ranges — the one place
/// both the cached and the streamed path go through.
fn respond(head: &Head, source: Source, range: Option<ByteRange>, req: &HeaderMap) -> Response {
    let mut headers = HeaderMap::new();
    headers.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    for (name, value) in [
        (header::CONTENT_TYPE, &head.content_type),
        (header::CACHE_CONTROL, &head.cache_control),
        (header::ETAG, &head.etag),
    ] {
        if let Some(v) = value {
            headers.insert(name, v.clone());
        }
    }
    if let Some(etag) = head.etag.as_ref().and_then(|e| e.to_str().ok())
        && etag_matches(req.get(header::IF_NONE_MATCH), etag)
    {
        return (StatusCode::NOT_MODIFIED, headers).into_response();
    }
    let (resolved, body) = match source {
        Source::Memory(bytes) => match range.map(|r| r.resolve(head.size)).transpose() {
            Ok(Some((first, last))) => (
                Some((first, last)),
                Body::from(bytes.slice(first as usize..=last as usize)),
            ),
            Ok(None) => (None, Body::from(bytes)),
            Err(e) => return ApiError::from(e).into_response(),
        },
        Source::Stream(stream, resolved) => (resolved, Body::from_stream(stream)),
    };
    let (status, length) = match resolved {
        Some((first, last)) => {
            if let Ok(v) = HeaderValue::from_str(&format!("bytes {first}-{last}/{}", head.size)) {
                headers.insert(header::CONTENT_RANGE, v);
            }
            (StatusCode::PARTIAL_CONTENT, last - first + 1)
        }
        None => (StatusCode::OK, head.size),
    };
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(length));
    (status, headers, body).into_response()
}

fn store_error(e: common::store::Error) -> Response {
    if matches!(e, common::store::Error::NotFound(_)) {
        return not_found();
    }
    ApiError::from(e).into_response()
}

fn value(s: Option<String>) -> Option<HeaderValue> {
    s.and_then(|v| HeaderValue::from_str(&v).ok())
}

/// Whether the moment is ready (its objects will not change any more).
async fn ready(db: &Db, id: &str) -> Result<bool, Response> {
    match moment::get(db, id).await {
        Ok(Some(m)) => Ok(m.state == MomentState::Ready),
        Ok(None) => Ok(false),
        Err(e) => Err(ApiError::from(e).into_response()),
    }
}

/// The cached entry for `key`, checking a stale one against the store (`Ok(None)`: not
/// cached, or no longer valid; `Err`: the store says it is gone).
async fn cached(s: &OriginState, key: &Key) -> Result<Option<Arc<Entry>>, Response> {
    let Some(entry) = s.cache.get(key.as_str()) else {
        return Ok(None);
    };
    if !entry.stale(s.cache.revalidate) {
        return Ok(Some(entry));
    }
    match s.store.head(key).await {
        Ok(meta)
            if value(meta.etag.clone()) == entry.etag && meta.size == entry.bytes.len() as u64 =>
        {
            entry.vouched();
            Ok(Some(entry))
        }
        Ok(_) => {
            s.cache.remove(key.as_str());
            Ok(None)
        }
        Err(e) => {
            s.cache.remove(key.as_str());
            Err(store_error(e))
        }
    }
}

async fn serve(
    State(s): State<OriginState>,
    Path((id, path)): Path<(String, String)>,
    uri: axum::http::Uri,
    req_headers: HeaderMap,
) -> Response {
    if !common::ids::is_id(&id) {
        return not_found();
    }
    let Ok(key) = Key::new(format!("hls/{id}/{path}")) else {
        return not_found();
    };
    let mut sign_with: Option<&str> = None;
    if let Some(signing) = &s.signing
        && guarded(&path, signing.segments)
    {
        let token = token_param(uri.query());
        if let Err(refusal) = signing.check(&id, token) {
            return ApiError::new(
                axum::http::StatusCode::FORBIDDEN,
                "playback_refused",
                refusal.to_string(),
            )
            .into_response();
        }
        if path.ends_with(".m3u8") {
            sign_with = token;
        }
    }
    if let (Some(token), Some(signing)) = (sign_with, &s.signing) {
        return signed_playlist(&s, &id, &path, &key, token, signing.segments).await;
    }
    let defaults = headers_for(&path);
    let immutable = defaults
        .cache_control
        .as_deref()
        .is_some_and(|c| c.contains("immutable"));
    if path == "master.m3u8" {
        match ready(&s.db, &id).await {
            Ok(true) => {}
            Ok(false) => return not_found(),
            Err(resp) => return resp,
        }
    }
    let range = req_headers
        .get(header::RANGE)
        .and_then(|v| v.to_str().ok())
        .and_then(ByteRange::parse_header);
    if immutable {
        match cached(&s, &key).await {
            Ok(Some(e)) => {
                let head = Head {
                    content_type: e.content_type.clone(),
                    cache_control: e.cache_control.clone(),
                    etag: e.etag.clone(),
                    size: e.bytes.len() as u64,
                };
                return respond(&head, Source::Memory(e.bytes.clone()), range, &req_headers);
            }
            Ok(None) => {}
            Err(resp) => return resp,
        }
    }
    let obj = match s.store.get(&key, range).await {
        Ok(obj) => obj,
        Err(e) => return store_error(e),
    };
    let head = Head {
        content_type: value(obj.meta.content_type.clone().or(defaults.content_type)),
        cache_control: value(obj.meta.cache_control.clone().or(defaults.cache_control)),
        etag: value(obj.meta.etag.clone()),
        size: obj.meta.size,
    };
    // Hold an immutable object of a ready moment (whose objects no longer change): read it
    // whole, keep it, answer from memory.
    if immutable
        && s.cache.fits(head.size)
        && obj.range.is_none()
        && matches!(ready(&s.db, &id).await, Ok(true))
    {
        let chunks: Result<Vec<bytes::Bytes>, std::io::Error> = obj.body.try_collect().await;
        let bytes = match chunks {
            Ok(c) => bytes::Bytes::from(c.concat()),
            Err(e) => return store_error(common::store::Error::Io(e)),
        };
        if bytes.len() as u64 == head.size {
            s.cache.insert(
                key.as_str(),
                Arc::new(Entry {
                    bytes: bytes.clone(),
                    content_type: head.content_type.clone(),
                    cache_control: head.cache_control.clone(),
                    etag: head.etag.clone(),
                    checked: Mutex::new(Instant::now()),
                }),
            );
        }
        return respond(&head, Source::Memory(bytes), range, &req_headers);
    }
    respond(
        &head,
        Source::Stream(obj.body, obj.range),
        range,
        &req_headers,
    )
}

/// A playlist served with signing on: read whole, every URI it names given the request's
/// token, and never kept by shared caches (the token is one viewer's).
async fn signed_playlist(
    s: &OriginState,
    id: &str,
    path: &str,
    key: &Key,
    token: &str,
    segments: bool,
) -> Response {
    if path == "master.m3u8" {
        match ready(&s.db, id).await {
            Ok(true) => {}
            Ok(false) => return not_found(),
            Err(resp) => return resp,
        }
    }
    let body = match s.store.get_bytes(key, 4 << 20).await {
        Ok(b) => b,
        Err(e) => return store_error(e),
    };
    let signed = crate::signed::sign_playlist(&String::from_utf8_lossy(&body), token, segments);
    (
        [
            (header::CONTENT_TYPE, "application/vnd.apple.mpegurl"),
            (header::CACHE_CONTROL, "private, max-age=30"),
        ],
        signed,
    )
        .into_response()
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
