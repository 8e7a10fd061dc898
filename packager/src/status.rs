//! Moment status routes: `GET /v1/moments/{id}` (JSON) and `GET /v1/moments/{id}/events`
//! (Server-Sent Events of the same JSON as it changes; at least one event a second while
//! transcoding). Both are scoped to the owner: another user's moment is a 404.
//!
//! A watcher reads the moment again only when the database's change channel names it: changes
//! of this process at once, of other processes through PostgreSQL `LISTEN/NOTIFY` (one listener
//! per process, fanned out in memory), so 1,000 watchers cost no queries while nothing changes.
//! Where other processes cannot be heard (SQLite, or the listener reconnecting) each watcher
//! also polls every 250 ms; with the listener it re-reads only every [`SAFETY_POLL`].

use std::convert::Infallible;
use std::time::{Duration, Instant};

use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::{Json, Router};
use common::ApiError;
use common::api::ErrorBody;
use common::auth::{StreamUser, User};
use common::db::Db;
use common::moment::{self, Moment, State as MomentState};
use common::service::Shared;
use futures::Stream;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

/// How often a watcher re-reads its moment when other processes' changes reach it anyway (a
/// last safety net; 1,000 watchers cost 3.3 reads/s).
pub const SAFETY_POLL: Duration = Duration::from_secs(300);
/// How often a watcher polls when they cannot reach it.
const POLL: Duration = Duration::from_millis(250);
/// Heartbeat while transcoding.
const HEARTBEAT: Duration = Duration::from_millis(1000);

/// What the routes need.
#[derive(Clone)]
pub struct StatusState {
    /// Database, auth and the rest.
    pub shared: Shared,
    /// `MOMENTS_PUBLIC_BASE_URL`, when set.
    pub public_base_url: Option<String>,
    /// `host:port` of the HTTP (TCP) origin, for URLs answered to HTTP/3 requests (players
    /// fetch HLS over TCP).
    pub http_origin: Option<String>,
    /// Moment reads made by SSE watchers (`moments_sse_moment_reads_total`).
    pub watcher_reads: prometheus_client::metrics::counter::Counter,
    /// Open SSE watchers (`moments_sse_watchers`).
    pub watchers: prometheus_client::metrics::gauge::Gauge,
}

impl StatusState {
    /// Registers the watcher metrics.
    pub fn register(&self, metrics: &common::metrics::Metrics) {
        metrics.register(
            "sse_moment_reads",
            "Moment reads made by SSE watchers (changes heard, polls where none can be heard)",
            self.watcher_reads.clone(),
        );
        metrics.register("sse_watchers", "Open SSE watchers", self.watchers.clone());
    }
}

/// Keeps `moments_sse_watchers` right however a stream ends.
struct Watching(prometheus_client::metrics::gauge::Gauge);

impl Drop for Watching {
    fn drop(&mut self) {
        self.0.dec();
    }
}

common::shared_state!(StatusState);

/// The routes.
pub fn router(state: StatusState) -> Router {
    routes().with_state(state).split_for_parts().0
}

fn routes() -> OpenApiRouter<StatusState> {
    OpenApiRouter::new()
        .routes(routes!(get_moment))
        .routes(routes!(events))
}

/// The routes' part of the OpenAPI document.
pub fn openapi() -> utoipa::openapi::OpenApi {
    routes().into_openapi()
}

/// The public JSON of a moment.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MomentView {
    /// Its id.
    pub id: String,
    /// `uploading`, `queued`, `transcoding`, `ready` or `failed`.
    #[schema(value_type = String, example = "ready")]
    pub state: MomentState,
    /// 0 to 1, while transcoding.
    pub progress: f64,
    /// Why it failed.
    pub error: Option<String>,
    /// The published renditions (name, width, height, bitrate, playlist, …).
    pub renditions: Vec<Value>,
    /// Renditions that could not be made (the moment still plays without them).
    pub failed_renditions: Vec<Value>,
    /// Seconds.
    pub duration: Option<f64>,
    /// The HLS master playlist, once ready.
    pub master_url: Option<String>,
    /// The poster (JPEG): from the first decoded frame on, often while the upload arrives.
    pub poster_url: Option<String>,
    /// Transcoded while it arrives.
    pub streaming: Option<bool>,
    /// Why it waits, when it waits.
    pub reason: Option<String>,
    /// Seconds of video encoded so far.
    pub encoded_s: Option<f64>,
    /// Seconds of video received so far.
    pub received_s: Option<f64>,
    /// The scrubbing thumbnails (WebVTT), once ready.
    pub thumbnails_url: Option<String>,
    /// Milliseconds since the epoch.
    pub created_at: i64,
    /// Milliseconds since the epoch.
    pub updated_at: i64,
}

/// One Server-Sent Event of `GET /v1/moments/{id}/events`.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct MomentEvent {
    /// Always `moment`.
    #[schema(example = "moment")]
    pub event: String,
    /// The moment, as JSON: a [`MomentView`].
    #[schema(content_media_type = "application/json")]
    pub data: String,
}

/// The public JSON of a moment.
pub fn view(m: &Moment, public_base: Option<&str>, host: &str) -> Value {
    serde_json::to_value(moment_view(m, public_base, host)).unwrap_or(Value::Null)
}

fn moment_view(m: &Moment, public_base: Option<&str>, host: &str) -> MomentView {
    let published = &m.renditions;
    let ready = m.state == MomentState::Ready;
    let url = |key: &str| crate::origin::object_url(public_base, host, key);
    let list = |name: &str| {
        published
            .get(name)
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default()
    };
    MomentView {
        id: m.id.clone(),
        state: m.state,
        progress: (m.progress * 1000.0).round() / 1000.0,
        error: m.error.clone(),
        renditions: list("renditions"),
        failed_renditions: list("failed"),
        duration: published.get("duration").and_then(Value::as_f64),
        master_url: ready.then(|| crate::origin::master_url(public_base, host, &m.id)),
        // the poster exists from the first decoded frame on, often while the upload arrives
        poster_url: match (
            published.get("poster_key").and_then(Value::as_str),
            &m.detail.poster_key,
        ) {
            (Some(k), _) if ready => Some(url(k)),
            (_, Some(k)) if m.state != MomentState::Failed => Some(url(k)),
            _ => None,
        },
        streaming: m.detail.streaming,
        reason: m.detail.reason.clone(),
        encoded_s: m.detail.encoded_s,
        received_s: m.detail.received_s,
        thumbnails_url: ready.then(|| url(&format!("hls/{}/thumbs.vtt", m.id))),
        created_at: m.created_at,
        updated_at: m.updated_at,
    }
}

/// A moment of the caller's: its state, progress and, once ready, its playback URLs. Another
/// user's moment is a 404, as an unknown id is.
#[utoipa::path(get, path = "/v1/moments/{id}", tag = "moments",
    security(("bearer" = [])),
    params(("id" = String, Path, description = "The moment's id (the upload's `Moment-Id`)")),
    responses(
        (status = 200, description = "The moment", body = MomentView),
        (status = "4XX", description = "Refused (no or bad token), or no such moment of yours", body = ErrorBody),
        (status = 503, description = "The database is unreachable", body = ErrorBody),
    ))]
async fn get_moment(
    State(s): State<StatusState>,
    User(user): User,
    Path(id): Path<String>,
    headers: HeaderMap,
    uri: axum::http::Uri,
    version: axum::http::Version,
) -> Result<Json<MomentView>, ApiError> {
    let m = moment::get_for_user(&s.shared.db, &id, &user)
        .await?
        .ok_or_else(|| ApiError::not_found("no such moment"))?;
    let host = common::http::player_host(&headers, &uri, version, s.http_origin.as_deref());
    Ok(Json(moment_view(&m, s.public_base_url.as_deref(), &host)))
}

/// The moment as Server-Sent Events (`event: moment`, the same JSON as `GET /v1/moments/{id}`)
/// each time it changes, at least once a second while transcoding; the stream ends after
/// `ready` or `failed`. A browser's EventSource authenticates with `?ticket=` (see
/// `POST /v1/tickets`).
#[utoipa::path(get, path = "/v1/moments/{id}/events", tag = "moments",
    security(("bearer" = [])),
    params(
        ("id" = String, Path, description = "The moment's id"),
        ("ticket" = Option<String>, Query, description = "A single-use ticket, instead of the `Authorization` header"),
    ),
    responses(
        (status = 200, description = "The event stream; each event's `data` is a MomentView", content_type = "text/event-stream", body = MomentEvent),
        (status = "4XX", description = "Refused (no or bad token or ticket), or no such moment of yours", body = ErrorBody),
        (status = 503, description = "The database is unreachable", body = ErrorBody),
    ))]
async fn events(
    State(s): State<StatusState>,
    StreamUser(user): StreamUser,
    Path(id): Path<String>,
    headers: HeaderMap,
    uri: axum::http::Uri,
    version: axum::http::Version,
) -> Result<Sse<impl Stream<Item = Result<SseEvent, Infallible>>>, ApiError> {
    let first = moment::get_for_user(&s.shared.db, &id, &user)
        .await?
        .ok_or_else(|| ApiError::not_found("no such moment"))?;
    let host = common::http::player_host(&headers, &uri, version, s.http_origin.as_deref());
    struct St {
        changes: tokio::sync::broadcast::Receiver<common::db::Change>,
        db: Db,
        id: String,
        base: Option<String>,
        host: String,
        pending: Option<Moment>,
        last: Option<Value>,
        last_sent: Instant,
        last_read: Instant,
        done: bool,
        reads: prometheus_client::metrics::counter::Counter,
        _watching: Watching,
    }
    s.watchers.inc();
    let st = St {
        _watching: Watching(s.watchers.clone()),
        changes: s.shared.db.subscribe(),
        db: s.shared.db.clone(),
        reads: s.watcher_reads.clone(),
        last_read: Instant::now(),
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
                                Ok(common::db::Change::Resync) => return,
                                Ok(_) => {}
                                Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => return,
                                Err(tokio::sync::broadcast::error::RecvError::Closed) => {
                                    std::future::pending::<()>().await
                                }
                            }
                        }
                    };
                    let hears = st.db.hears_other_nodes();
                    let poll = if hears { SAFETY_POLL } else { POLL };
                    let transcoding = st
                        .last
                        .as_ref()
                        .is_some_and(|v| v["state"] == "transcoding");
                    let wait = if transcoding {
                        HEARTBEAT.saturating_sub(st.last_sent.elapsed())
                    } else {
                        poll
                    }
                    .min(poll.saturating_sub(st.last_read.elapsed()));
                    let woken = tokio::time::timeout(wait, changed).await.is_ok();
                    if !woken && st.last_read.elapsed() < poll {
                        // only the heartbeat is due: send the last state again, no read
                        if let Some(v) = st.last.clone() {
                            st.last_sent = Instant::now();
                            let ev = SseEvent::default().event("moment").data(v.to_string());
                            return Some((Ok(ev), st));
                        }
                    }
                    st.last_read = Instant::now();
                    st.reads.inc();
                    match moment::get(&st.db, &st.id).await {
                        Ok(Some(m)) => m,
                        Ok(None) => return None,
                        Err(_) => continue,
                    }
                }
            };
            let v = view(&m, st.base.as_deref(), &st.host);
            let changed = st.last.as_ref() != Some(&v);
            let heartbeat =
                m.state == MomentState::Transcoding && st.last_sent.elapsed() >= HEARTBEAT;
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
