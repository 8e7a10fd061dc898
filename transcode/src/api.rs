//! Moment status routes: `GET /v1/moments/{id}` (JSON) and `GET /v1/moments/{id}/events`
//! (Server-Sent Events of the same JSON as it changes; at least one event a second while
//! transcoding). Both are scoped to the owner: another user's moment is a 404. Changes made by
//! this process are sent at once (the database's change bus); others within a poll interval.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::{FromRef, Path, State};
use axum::http::HeaderMap;
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::routing::get;
use axum::{Json, Router};
use common::ApiError;
use common::auth::{Auth, StreamUser, User};
use common::db::Db;
use common::moment::{self, Moment, State as MomentState};
use futures::Stream;
use serde_json::{Value, json};

/// What the routes need.
#[derive(Clone)]
pub struct ApiState {
    /// Moments live here.
    pub db: Db,
    /// Token verifier.
    pub auth: Arc<Auth>,
    /// `MOMENTS_PUBLIC_BASE_URL`, when set.
    pub public_base_url: Option<String>,
    /// `host:port` of the HTTP (TCP) origin, for URLs answered to HTTP/3 requests (players
    /// fetch HLS over TCP).
    pub http_origin: Option<String>,
}

impl FromRef<ApiState> for Arc<Auth> {
    fn from_ref(s: &ApiState) -> Self {
        s.auth.clone()
    }
}

impl FromRef<ApiState> for Db {
    fn from_ref(s: &ApiState) -> Self {
        s.db.clone()
    }
}

/// The routes.
pub fn router(state: ApiState) -> Router {
    Router::new()
        .route("/v1/moments/{id}", get(get_moment))
        .route("/v1/moments/{id}/events", get(events))
        .with_state(state)
}

/// The host clients reached us by (for absolute URLs to the built-in origin). Requests that
/// came over HTTP/3 get the TCP origin instead.
pub fn request_host(
    headers: &HeaderMap,
    uri: &axum::http::Uri,
    version: axum::http::Version,
    http_origin: Option<&str>,
) -> String {
    if version == axum::http::Version::HTTP_3
        && let Some(o) = http_origin
    {
        return o.to_string();
    }
    headers
        .get(axum::http::header::HOST)
        .and_then(|h| h.to_str().ok())
        .map(str::to_string)
        .or_else(|| uri.authority().map(|a| a.to_string()))
        .unwrap_or_else(|| "127.0.0.1:8080".to_string())
}

/// The public JSON of a moment.
pub fn view(m: &Moment, public_base: Option<&str>, host: &str) -> Value {
    let published = &m.renditions;
    let ready = m.state == MomentState::Ready;
    let url = |key: &str| packager::origin::object_url(public_base, host, key);
    json!({
        "id": m.id,
        "state": m.state,
        "progress": (m.progress * 1000.0).round() / 1000.0,
        "error": m.error,
        "renditions": published.get("renditions").cloned().unwrap_or(json!([])),
        "failed_renditions": published.get("failed").cloned().unwrap_or(json!([])),
        "duration": published.get("duration").cloned().unwrap_or(Value::Null),
        "master_url": if ready { Value::String(packager::origin::master_url(public_base, host, &m.id)) } else { Value::Null },
        // the poster exists from the first decoded frame on, often while the upload arrives
        "poster_url": match (published.get("poster_key").and_then(Value::as_str), &m.detail.poster_key) {
            (Some(k), _) if ready => Value::String(url(k)),
            (_, Some(k)) if m.state != MomentState::Failed => Value::String(url(k)),
            _ => Value::Null,
        },
        "streaming": m.detail.streaming,
        "reason": m.detail.reason,
        "encoded_s": m.detail.encoded_s,
        "received_s": m.detail.received_s,
        "thumbnails_url": if ready { Value::String(url(&format!("hls/{}/thumbs.vtt", m.id))) } else { Value::Null },
        "created_at": m.created_at,
        "updated_at": m.updated_at,
    })
}

async fn get_moment(
    State(s): State<ApiState>,
    User(user): User,
    Path(id): Path<String>,
    headers: HeaderMap,
    uri: axum::http::Uri,
    version: axum::http::Version,
) -> Result<Json<Value>, ApiError> {
    let m = moment::get_for_user(&s.db, &id, &user)
        .await?
        .ok_or_else(|| ApiError::not_found("no such moment"))?;
    let host = request_host(&headers, &uri, version, s.http_origin.as_deref());
    Ok(Json(view(&m, s.public_base_url.as_deref(), &host)))
}

async fn events(
    State(s): State<ApiState>,
    StreamUser(user): StreamUser,
    Path(id): Path<String>,
    headers: HeaderMap,
    uri: axum::http::Uri,
    version: axum::http::Version,
) -> Result<Sse<impl Stream<Item = Result<SseEvent, Infallible>>>, ApiError> {
    let first = moment::get_for_user(&s.db, &id, &user)
        .await?
        .ok_or_else(|| ApiError::not_found("no such moment"))?;
    let host = request_host(&headers, &uri, version, s.http_origin.as_deref());
    struct St {
        changes: tokio::sync::broadcast::Receiver<common::db::Change>,
        db: Db,
        id: String,
        base: Option<String>,
        host: String,
        pending: Option<Moment>,
        last: Option<Value>,
        last_sent: Instant,
        done: bool,
    }
    let st = St {
        changes: s.db.subscribe(),
        db: s.db.clone(),
        id,
        base: s.public_base_url.clone(),
        host,
        pending: Some(first),
        last: None,
        last_sent: Instant::now(),
        done: false,
    };
    let stream = futures::stream::unfold(st, |mut st| async move {
        if st.done {
            return None;
        }
        loop {
            let m = match st.pending.take() {
                Some(m) => m,
                None => {
                    let id = st.id.clone();
                    let changed = async {
                        loop {
                            match st.changes.recv().await {
                                Ok(common::db::Change::Moment(m)) if m == id => return,
                                Ok(_) => {}
                                Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => return,
                                Err(tokio::sync::broadcast::error::RecvError::Closed) => {
                                    std::future::pending::<()>().await
                                }
                            }
                        }
                    };
                    let _ = tokio::time::timeout(Duration::from_millis(250), changed).await;
                    match moment::get(&st.db, &st.id).await {
                        Ok(Some(m)) => m,
                        Ok(None) => return None,
                        Err(_) => continue,
                    }
                }
            };
            let v = view(&m, st.base.as_deref(), &st.host);
            let changed = st.last.as_ref() != Some(&v);
            let heartbeat = m.state == MomentState::Transcoding
                && st.last_sent.elapsed() >= Duration::from_millis(1000);
            if changed || heartbeat {
                st.last = Some(v.clone());
                st.last_sent = Instant::now();
                st.done = m.state.is_final();
                let ev = SseEvent::default().event("moment").data(v.to_string());
                return Some((Ok(ev), st));
            }
        }
    });
    Ok(Sse::new(stream).keep_alive(KeepAlive::new().interval(Duration::from_secs(15))))
}
