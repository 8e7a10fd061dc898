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
    /// Signed playback, when on.
    pub signing: Option<crate::origin::Signing>,
    /// Longest playback token (seconds).
    pub playback_ttl_secs: u64,
    /// Who may get one.
    pub playback_policy: crate::PlaybackPolicy,
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
        .routes(routes!(get_moment, patch_moment))
        .routes(routes!(events))
        .routes(routes!(playback))
        .routes(routes!(revoke_playback))
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
    /// The poster blurred (JPEG, 480 wide), for blur-until-tap feeds.
    pub poster_blur_url: Option<String>,
    /// The poster's time in the video (seconds): the chosen frame, or the owner's choice.
    pub poster_time: Option<f64>,
    /// The animated preview for feed grids (H.264 MP4, about 3 s of the most active stretch,
    /// muted, 360p at most, faststart): made shortly after `ready`, unset until then.
    pub preview_url: Option<String>,
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
    /// Captions from the moment's own speech: `pending` (being made after `ready`), `ready`
    /// (a subtitle rendition is in the master), or `none: …` with the reason (no audio, no
    /// speech, …). Unset before `ready`.
    #[schema(example = "ready")]
    pub captions: Option<String>,
    /// The captions (WebVTT), once made.
    pub captions_url: Option<String>,
    /// What is said in the moment, from its captions.
    pub transcript: Option<String>,
    /// Milliseconds since the epoch.
    pub created_at: i64,
    /// Milliseconds since the epoch.
    pub updated_at: i64,
}

/// A playback token request (every field optional).
#[derive(Debug, Clone, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PlaybackRequest {
    /// Lifetime (seconds, 1 to `packager.playback_ttl_secs`; default that).
    pub ttl_secs: Option<u64>,
    /// Bind the token to the caller (default true): the token names who it was issued to.
    pub bind_viewer: Option<bool>,
}

/// A signed playback URL.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Playback {
    /// The master playlist with its token: give this to the player.
    pub master_url: String,
    /// The token alone (`?token=`).
    pub token: String,
    /// When it stops working (seconds since the epoch).
    pub expires_at: i64,
    /// Whether playback is signed at all (false: the URL works without its token).
    pub signed: bool,
}

/// What a revocation did.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct PlaybackRevoked {
    /// Tokens issued at or before this time (ms since the epoch) are refused, on every node
    /// within a second.
    pub revoked_before_ms: i64,
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

/// A token for `viewer` on moment `id`, valid `ttl` seconds.
fn grant(
    signing: &crate::origin::Signing,
    id: &str,
    viewer: Option<&str>,
    ttl: u64,
) -> (String, i64) {
    let now = common::ids::now_ms();
    let g = crate::signed::Grant {
        expires: now / 1000 + ttl as i64,
        issued_ms: now,
        viewer: viewer.map(str::to_string),
    };
    (signing.signer.sign(id, &g), g.expires)
}

/// The public JSON of a moment.
pub fn view(m: &Moment, public_base: Option<&str>, host: &str) -> Value {
    serde_json::to_value(moment_view(m, public_base, host)).unwrap_or(Value::Null)
}

fn moment_view(m: &Moment, public_base: Option<&str>, host: &str) -> MomentView {
    moment_view_signed(m, public_base, host, None)
}

/// The moment's JSON; with signing on, its master URL carries a token for its owner.
fn moment_view_signed(
    m: &Moment,
    public_base: Option<&str>,
    host: &str,
    signing: Option<(&crate::origin::Signing, u64)>,
) -> MomentView {
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
    let poster_key = match (
        published.get("poster_key").and_then(Value::as_str),
        &m.detail.poster_key,
    ) {
        (Some(k), _) if ready => Some(k.to_string()),
        (_, Some(k)) if m.state != MomentState::Failed => Some(k.clone()),
        _ => None,
    };
    // the owner's token, on the playlists (and on the segments' siblings the origin guards)
    let (token, segments) = match signing.filter(|_| ready) {
        Some((sg, ttl)) => (Some(grant(sg, &m.id, Some(&m.user_id), ttl).0), sg.segments),
        None => (None, false),
    };
    let guarded = |url: String| signed(url, token.as_deref().filter(|_| segments));
    MomentView {
        id: m.id.clone(),
        state: m.state,
        progress: (m.progress * 1000.0).round() / 1000.0,
        error: m.error.clone(),
        renditions: list("renditions"),
        failed_renditions: list("failed"),
        duration: published.get("duration").and_then(Value::as_f64),
        master_url: ready.then(|| {
            signed(
                crate::origin::master_url(public_base, host, &m.id),
                token.as_deref(),
            )
        }),
        // the poster exists from the first decoded frame on, often while the upload arrives
        poster_url: poster_key.as_deref().map(url),
        poster_blur_url: poster_key
            .as_deref()
            .and_then(|k| k.strip_suffix("poster.jpg"))
            .map(|dir| url(&format!("{dir}poster-blur.jpg"))),
        poster_time: published
            .get("poster_time")
            .and_then(Value::as_f64)
            .filter(|_| ready),
        preview_url: published["preview"]["key"]
            .as_str()
            .filter(|_| ready)
            .map(|k| guarded(url(k))),
        streaming: m.detail.streaming,
        reason: m.detail.reason.clone(),
        encoded_s: m.detail.encoded_s,
        received_s: m.detail.received_s,
        thumbnails_url: ready.then(|| guarded(url(&format!("hls/{}/thumbs.vtt", m.id)))),
        captions: published["captions"]["status"]
            .as_str()
            .filter(|_| ready)
            .map(str::to_string),
        captions_url: published["captions"]["vtt_key"]
            .as_str()
            .filter(|_| ready)
            .map(|k| guarded(url(k))),
        transcript: published["captions"]["transcript"]
            .as_str()
            .filter(|_| ready)
            .map(str::to_string),
        created_at: m.created_at,
        updated_at: m.updated_at,
    }
}

/// `url` with the playback token as its query, when there is one.
fn signed(url: String, token: Option<&str>) -> String {
    match token {
        Some(t) => format!("{url}?{}={t}", crate::signed::PARAM),
        None => url,
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
    Ok(Json(moment_view_signed(
        &m,
        s.public_base_url.as_deref(),
        &host,
        s.signing.as_ref().map(|sg| (sg, s.playback_ttl_secs)),
    )))
}

/// A signed URL to play a ready moment: for its owner, or for any signed-in user when
/// `packager.playback_policy = "any-user"`. With signing off the URL works as it is (and
/// says `signed: false`).
#[utoipa::path(post, path = "/v1/moments/{id}/playback", tag = "moments",
    security(("bearer" = [])),
    params(("id" = String, Path, description = "The moment's id")),
    request_body(content = Option<PlaybackRequest>, description = "Optional: lifetime and viewer binding"),
    responses(
        (status = 200, description = "The signed master URL", body = Playback),
        (status = 409, description = "The moment is not ready yet", body = ErrorBody),
        (status = "4XX", description = "Refused (no or bad token, not allowed by the policy), a bad body, or no such moment", body = ErrorBody),
        (status = 503, description = "The database is unreachable", body = ErrorBody),
    ))]
async fn playback(
    State(s): State<StatusState>,
    User(user): User,
    Path(id): Path<String>,
    headers: HeaderMap,
    uri: axum::http::Uri,
    version: axum::http::Version,
    body: axum::body::Bytes,
) -> Result<Json<Playback>, ApiError> {
    let req: PlaybackRequest = if body.iter().all(u8::is_ascii_whitespace) {
        PlaybackRequest::default()
    } else {
        serde_json::from_slice(&body)
            .map_err(|e| ApiError::bad_request(format!("bad playback request: {e}")))?
    };
    let m = match s.playback_policy {
        crate::PlaybackPolicy::Owner => moment::get_for_user(&s.shared.db, &id, &user).await?,
        crate::PlaybackPolicy::AnyUser => moment::get(&s.shared.db, &id).await?,
    }
    .ok_or_else(|| ApiError::not_found("no such moment"))?;
    if m.state != MomentState::Ready {
        return Err(ApiError::new(
            axum::http::StatusCode::CONFLICT,
            "not_ready",
            "the moment is not ready yet",
        ));
    }
    let ttl = match req.ttl_secs {
        Some(0) => return Err(ApiError::bad_request("ttl_secs must be at least 1")),
        Some(t) if t > s.playback_ttl_secs => {
            return Err(ApiError::bad_request(format!(
                "ttl_secs must be at most {} (packager.playback_ttl_secs)",
                s.playback_ttl_secs
            )));
        }
        Some(t) => t,
        None => s.playback_ttl_secs,
    };
    let host = common::http::player_host(&headers, &uri, version, s.http_origin.as_deref());
    let url = crate::origin::master_url(s.public_base_url.as_deref(), &host, &id);
    let viewer = req.bind_viewer.unwrap_or(true).then_some(user.as_str());
    Ok(Json(match &s.signing {
        Some(sg) => {
            let (token, expires_at) = grant(sg, &id, viewer, ttl);
            Playback {
                master_url: format!("{url}?{}={token}", crate::signed::PARAM),
                token,
                expires_at,
                signed: true,
            }
        }
        None => Playback {
            master_url: url,
            token: String::new(),
            expires_at: common::ids::now_ms() / 1000 + ttl as i64,
            signed: false,
        },
    }))
}

/// Revokes every playback token of the caller's moment issued so far, on every node within a
/// second (tokens issued afterwards work).
#[utoipa::path(post, path = "/v1/moments/{id}/revoke", tag = "moments",
    security(("bearer" = [])),
    params(("id" = String, Path, description = "The moment's id")),
    responses(
        (status = 200, description = "Revoked", body = PlaybackRevoked),
        (status = "4XX", description = "Refused (no or bad token), or no such moment of yours", body = ErrorBody),
        (status = 503, description = "The database is unreachable", body = ErrorBody),
    ))]
async fn revoke_playback(
    State(s): State<StatusState>,
    User(user): User,
    Path(id): Path<String>,
) -> Result<Json<PlaybackRevoked>, ApiError> {
    moment::get_for_user(&s.shared.db, &id, &user)
        .await?
        .ok_or_else(|| ApiError::not_found("no such moment"))?;
    let before = common::auth::revoke::revoke_playback(&s.shared.db, &id, &user).await?;
    Ok(Json(PlaybackRevoked {
        revoked_before_ms: before,
    }))
}

/// What the owner may change of a moment.
#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
pub struct MomentPatch {
    /// The poster's time in the video (seconds, 0 to the duration): that frame of the
    /// published ladder becomes the poster (and its blurred variant).
    #[schema(example = 2.5)]
    pub poster_time: f64,
}

/// Reads a `PATCH` body, saying exactly what is wrong with a bad one.
fn parse_patch(body: &[u8], duration: Option<f64>) -> Result<MomentPatch, ApiError> {
    let v: Value = serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request(format!("the body is not JSON: {e}")))?;
    let Some(obj) = v.as_object() else {
        return Err(ApiError::bad_request("the body must be a JSON object"));
    };
    if let Some(k) = obj.keys().find(|k| *k != "poster_time") {
        return Err(ApiError::bad_request(format!(
            "unknown field {k:?}: only poster_time can be changed"
        )));
    }
    let t = match obj.get("poster_time") {
        None => return Err(ApiError::bad_request("poster_time is missing")),
        Some(t) => t
            .as_f64()
            .ok_or_else(|| ApiError::bad_request("poster_time must be a number of seconds"))?,
    };
    if !t.is_finite() || t < 0.0 {
        return Err(ApiError::bad_request("poster_time must not be negative"));
    }
    if let Some(d) = duration
        && t > d
    {
        return Err(ApiError::bad_request(format!(
            "poster_time {t} is past the end of the video ({d:.3} s)"
        )));
    }
    Ok(MomentPatch { poster_time: t })
}

/// Changes a ready moment of the caller's: `poster_time` picks another frame for the poster.
/// The frame is rendered from the published ladder (so it works once the source is gone) by a
/// `poster` job; the answer comes at once (202) and the moment's `poster_time` and the
/// poster's ETag change when the job is done, usually within a second or two.
#[utoipa::path(patch, path = "/v1/moments/{id}", tag = "moments",
    security(("bearer" = [])),
    params(("id" = String, Path, description = "The moment's id")),
    request_body = MomentPatch,
    responses(
        (status = 202, description = "Accepted; the poster follows", body = MomentView),
        (status = 409, description = "The moment is not ready yet", body = ErrorBody),
        (status = "4XX", description = "Refused (no or bad token), a bad body (the reason says what), or no such moment of yours", body = ErrorBody),
        (status = 503, description = "The database is unreachable", body = ErrorBody),
    ))]
async fn patch_moment(
    State(s): State<StatusState>,
    User(user): User,
    Path(id): Path<String>,
    headers: HeaderMap,
    uri: axum::http::Uri,
    version: axum::http::Version,
    body: axum::body::Bytes,
) -> Result<(axum::http::StatusCode, Json<MomentView>), ApiError> {
    let m = moment::get_for_user(&s.shared.db, &id, &user)
        .await?
        .ok_or_else(|| ApiError::not_found("no such moment"))?;
    if m.state != MomentState::Ready {
        return Err(ApiError::new(
            axum::http::StatusCode::CONFLICT,
            "not_ready",
            "the moment is not ready yet; its poster can be chosen once it is",
        ));
    }
    let patch = parse_patch(&body, m.renditions.get("duration").and_then(Value::as_f64))?;
    s.shared
        .queue
        .enqueue(&moment::poster_job(&id, patch.poster_time))
        .await
        .map_err(|e| ApiError::unavailable(format!("could not queue the poster: {e}")))?;
    let host = common::http::player_host(&headers, &uri, version, s.http_origin.as_deref());
    Ok((
        axum::http::StatusCode::ACCEPTED,
        Json(moment_view(&m, s.public_base_url.as_deref(), &host)),
    ))
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

#[cfg(test)]
mod tests {
    use super::parse_patch;

    #[test]
    fn bad_poster_times_get_a_reason() {
        let bad = |body: &str| {
            parse_patch(body.as_bytes(), Some(10.0))
                .unwrap_err()
                .to_string()
        };
        assert!(bad("{\"poster_time\": -1}").contains("negative"));
        assert!(bad("{\"poster_time\": \"2\"}").contains("number"));
        assert!(bad("{\"poster_time\": 10.5}").contains("past the end"));
        assert!(bad("{}").contains("missing"));
        assert!(bad("{\"poster_time\": 1, \"x\": 2}").contains("unknown field"));
        assert!(bad("nope").contains("not JSON"));
        assert!(bad("[1]").contains("object"));
        assert_eq!(
            parse_patch(b"{\"poster_time\": 2.5}", Some(10.0))
                .unwrap()
                .poster_time,
            2.5
        );
    }
}
