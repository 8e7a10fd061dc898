//! Voice routes: `POST /v1/moments/{id}/qa` (a session) + `GET /v1/qa/{session}/ws` (the
//! WebSocket), the engines on their own at `POST /v1/asr` and `POST /v1/tts`, and
//! `GET /v1/users/me/profile` (the memory the summary job writes).

use std::sync::Arc;

use axum::body::Body;
use axum::extract::ws::WebSocketUpgrade;
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::{Json, Router};
use common::ApiError;
use common::api::ErrorBody;
use common::auth::{StreamUser, User};
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use utoipa_axum::router::{OpenApiRouter, UtoipaMethodRouterExt};
use utoipa_axum::routes;

use crate::audio::{self, Format};
use crate::splitter::Splitter;
use crate::store;
use crate::voice::{AudioOut, Voice};

/// What the routes need.
#[derive(Clone)]
pub struct VoiceState {
    /// Database, auth and the rest.
    pub shared: common::service::Shared,
    /// The service.
    pub voice: Arc<Voice>,
}

common::shared_state!(VoiceState);

/// The routes.
pub fn router(state: VoiceState) -> Router {
    let asr_limit = state.voice.config.max_answer_bytes as usize;
    routes(asr_limit).with_state(state).split_for_parts().0
}

/// The routes' part of the OpenAPI document.
pub fn openapi() -> utoipa::openapi::OpenApi {
    routes(0).into_openapi()
}

fn routes(asr_limit: usize) -> OpenApiRouter<VoiceState> {
    OpenApiRouter::new()
        .routes(routes!(create_session))
        .routes(routes!(websocket))
        .routes(routes!(asr).layer(DefaultBodyLimit::max(asr_limit)))
        .routes(routes!(tts))
        .routes(routes!(profile))
}

/// A Q&A session, to connect to once.
#[derive(Serialize, utoipa::ToSchema)]
struct Session {
    /// Its id.
    session: String,
    /// The WebSocket to open (relative; add `?ticket=` from a browser).
    ws_url: String,
}

/// A transcript.
#[derive(Serialize, utoipa::ToSchema)]
struct Transcript {
    /// What was said.
    text: String,
    /// Seconds of audio.
    seconds: f64,
    /// The engine that listened.
    engine: String,
    /// Real-time factor: processing time over audio time.
    rtf: f64,
}

/// The user's memory, written by the summary job after each session.
#[derive(Serialize, utoipa::ToSchema)]
struct ProfileView {
    /// The caller.
    user: String,
    /// Summary of earlier sessions (empty when none yet).
    summary: String,
    /// Tags.
    tags: Vec<String>,
    /// Last change (ms since the epoch), 0 when never written.
    updated_at: i64,
}

/// `POST /v1/moments/{id}/qa`'s body.
#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct SessionRequest {
    /// The question audio: `ogg` (Ogg/Opus, default) or `pcm16`.
    #[serde(default)]
    audio: Option<String>,
}

/// Starts a voice Q&A about one of the caller's moments; connect to `ws_url` once. The
/// protocol over the WebSocket is in the README.
#[utoipa::path(post, path = "/v1/moments/{id}/qa", tag = "voice",
    security(("bearer" = [])),
    params(("id" = String, Path, description = "The moment's id")),
    request_body(content = Option<SessionRequest>),
    responses(
        (status = 200, description = "The session", body = Session),
        (status = "4XX", description = "Refused (no or bad token, rate limited, bad body), or no such moment of yours", body = ErrorBody),
        (status = 503, description = "The database is unreachable", body = ErrorBody),
    ))]
async fn create_session(
    State(s): State<VoiceState>,
    User(user): User,
    Path(moment): Path<String>,
    body: Option<Json<SessionRequest>>,
) -> Result<Json<Session>, ApiError> {
    common::moment::get_for_user(&s.voice.db, &moment, &user)
        .await?
        .ok_or_else(|| ApiError::not_found("no such moment"))?;
    s.shared
        .limiter
        .take(common::limit::Kind::QaSessions, &user, 1)
        .await?;
    let req = body.map(|Json(b)| b).unwrap_or_default();
    let audio = match req.audio.as_deref() {
        None => AudioOut::Ogg,
        Some(a) => AudioOut::parse(a)
            .ok_or_else(|| ApiError::bad_request(format!("audio {a:?} is not ogg or pcm16")))?,
    };
    let id = common::ids::new_id();
    store::create_session(&s.voice.db, &id, &user, &moment, audio.name()).await?;
    Ok(Json(Session {
        ws_url: format!("/v1/qa/{id}/ws"),
        session: id,
    }))
}

/// The session's WebSocket (once per session). A browser authenticates with `?ticket=`.
#[utoipa::path(get, path = "/v1/qa/{session}/ws", tag = "voice",
    security(("bearer" = [])),
    params(
        ("session" = String, Path, description = "The session's id"),
        ("ticket" = Option<String>, Query, description = "A single-use ticket, instead of the `Authorization` header"),
    ),
    responses(
        (status = 101, description = "Switching to the WebSocket protocol"),
        (status = "4XX", description = "Refused (no or bad token or ticket, not a WebSocket request, already connected), or no such session of yours", body = ErrorBody),
        (status = 503, description = "The database is unreachable", body = ErrorBody),
    ))]
async fn websocket(
    State(s): State<VoiceState>,
    StreamUser(user): StreamUser,
    Path(session): Path<String>,
    ws: WebSocketUpgrade,
) -> Result<Response, ApiError> {
    let sess = store::session_for(&s.voice.db, &session, &user)
        .await?
        .ok_or_else(|| ApiError::not_found("no such session"))?;
    if !store::open_session(&s.voice.db, &session).await? {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "session_used",
            "this session was already connected; create a new one",
        ));
    }
    let voice = s.voice.clone();
    Ok(ws
        .max_message_size(4 << 20)
        .max_frame_size(1 << 20)
        .on_upgrade(move |socket| crate::session::run(voice, sess, socket)))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
struct AsrQuery {
    /// `wav`, `pcm16` (16 kHz mono), `ogg`, `webm`, `mp3`, `m4a` or `flac`; else the
    /// `Content-Type` says.
    format: Option<String>,
}

/// Transcribes speech with the configured ASR engine (Whisper, or pocketsphinx).
#[utoipa::path(post, path = "/v1/asr", tag = "voice",
    security(("bearer" = [])),
    params(AsrQuery),
    request_body(content = String, content_type = "application/octet-stream", description = "The audio"),
    responses(
        (status = 200, description = "The transcript", body = Transcript),
        (status = "4XX", description = "Refused (no or bad token, rate limited, no or unsupported format, audio that does not decode, too long or too large)", body = ErrorBody),
    ))]
async fn asr(
    State(s): State<VoiceState>,
    User(user): User,
    Query(q): Query<AsrQuery>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Result<Json<Transcript>, ApiError> {
    s.shared
        .limiter
        .take(common::limit::Kind::Speech, &user, 1)
        .await?;
    let declared = q.format.clone().or_else(|| {
        headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    });
    let Some(declared) = declared else {
        return Err(ApiError::bad_request(
            "say what the audio is: ?format=wav|pcm16|ogg|webm|mp3|m4a|flac or a Content-Type",
        ));
    };
    let format = Format::parse(&declared).ok_or_else(|| {
        ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_audio",
            format!("audio format {declared:?} is not supported"),
        )
    })?;
    let max_secs = s.voice.config.max_answer_secs;
    let asr = s.voice.asr.clone();
    let started = std::time::Instant::now();
    let result = tokio::task::spawn_blocking(move || {
        let pcm = audio::decode(&body, format, max_secs)?;
        let secs = pcm.len() as f64 / 16_000.0;
        Ok::<_, audio::Error>((pcm, secs))
    })
    .await
    .map_err(ApiError::internal)?;
    let (pcm, secs) = result
        .map_err(|e| ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "bad_audio", e.to_string()))?;
    let text = tokio::task::spawn_blocking(move || asr.transcribe(&pcm))
        .await
        .map_err(ApiError::internal)?
        .map_err(ApiError::internal)?;
    let took = started.elapsed().as_secs_f64();
    s.voice.metrics.asr_rtf.observe(took / secs.max(1e-3));
    Ok(Json(Transcript {
        text,
        seconds: (secs * 1000.0).round() / 1000.0,
        engine: s.voice.asr.name().to_string(),
        rtf: ((took / secs.max(1e-3)) * 1000.0).round() / 1000.0,
    }))
}

/// `POST /v1/tts`'s body.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct TtsRequest {
    /// What to say (at most `voice.max_tts_chars` characters).
    text: String,
    /// `ogg` (Ogg/Opus, default) or `pcm16`.
    #[serde(default)]
    format: Option<String>,
}

/// Speaks a text, streamed sentence by sentence as each is synthesised: for `ogg`, one
/// continuous Ogg/Opus stream whose pages go out as each sentence is encoded; for `pcm16`, raw
/// samples (the rate is in `X-Sample-Rate`).
#[utoipa::path(post, path = "/v1/tts", tag = "voice",
    security(("bearer" = [])),
    request_body(content = TtsRequest),
    responses(
        (status = 200, description = "The speech", content(("audio/ogg"), ("audio/l16")),
            headers(("x-sample-rate" = u32, description = "Samples per second (`pcm16` only)"))),
        (status = "4XX", description = "Refused (no or bad token, rate limited, bad body, nothing to say, too long)", body = ErrorBody),
    ))]
async fn tts(
    State(s): State<VoiceState>,
    User(user): User,
    Json(req): Json<TtsRequest>,
) -> Result<Response, ApiError> {
    s.shared
        .limiter
        .take(common::limit::Kind::Speech, &user, 1)
        .await?;
    let format = match req.format.as_deref() {
        None => AudioOut::Ogg,
        Some(f) => AudioOut::parse(f)
            .ok_or_else(|| ApiError::bad_request(format!("format {f:?} is not ogg or pcm16")))?,
    };
    let text = req.text.trim().to_string();
    if text.is_empty() || !crate::splitter::speakable(&text) {
        return Err(ApiError::bad_request("there is nothing to say in `text`"));
    }
    if text.chars().count() > s.voice.config.max_tts_chars {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "too_long",
            format!("`text` is over {} characters", s.voice.config.max_tts_chars),
        ));
    }
    let mut split = Splitter::default();
    let mut sentences = split.push(&text);
    sentences.extend(split.finish());
    let tts = s.voice.tts.clone();
    let rate = crate::espeak::sample_rate().unwrap_or(22_050);
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<bytes::Bytes, std::io::Error>>(2);
    // One blocking worker synthesises sentence after sentence into one continuous stream;
    // bytes go out as soon as each sentence is encoded.
    tokio::task::spawn_blocking(move || {
        let mut ogg = match format {
            AudioOut::Ogg => match crate::gst::OpusStream::new(rate) {
                Ok(s) => Some(s),
                Err(e) => {
                    let _ = tx.blocking_send(Err(std::io::Error::other(e.to_string())));
                    return;
                }
            },
            AudioOut::Pcm16 => None,
        };
        for sentence in sentences {
            let speech = match tts.synthesize(&sentence) {
                Ok(s) if !s.samples.is_empty() => s,
                Ok(_) => continue,
                Err(e) => {
                    tracing::warn!(error = %e, "TTS sentence skipped");
                    continue;
                }
            };
            let bytes = match ogg.as_mut() {
                Some(o) => o.push(&speech.samples),
                None => speech
                    .samples
                    .iter()
                    .flat_map(|s| s.to_le_bytes())
                    .collect(),
            };
            if !bytes.is_empty() && tx.blocking_send(Ok(bytes::Bytes::from(bytes))).is_err() {
                return; // the client left: stop synthesising
            }
        }
        if let Some(o) = ogg {
            let _ = tx.blocking_send(Ok(bytes::Bytes::from(o.finish())));
        }
    });
    let body = Body::from_stream(tokio_stream(rx));
    let ct = match format {
        AudioOut::Ogg => "audio/ogg",
        AudioOut::Pcm16 => "audio/l16",
    };
    let mut resp = (StatusCode::OK, [(header::CONTENT_TYPE, ct)], body).into_response();
    if format == AudioOut::Pcm16
        && let Ok(v) = rate.to_string().parse()
    {
        resp.headers_mut().insert("x-sample-rate", v);
    }
    Ok(resp)
}

fn tokio_stream<T: Send + 'static>(
    mut rx: tokio::sync::mpsc::Receiver<T>,
) -> impl futures::Stream<Item = T> + Send {
    futures::stream::poll_fn(move |cx| rx.poll_recv(cx))
        .fuse()
        .boxed()
}

/// The caller's memory: what the summary job kept from their earlier sessions.
#[utoipa::path(get, path = "/v1/users/me/profile", tag = "voice",
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The memory", body = ProfileView),
        (status = "4XX", description = "Refused (no or bad token, rate limited)", body = ErrorBody),
        (status = 503, description = "The database is unreachable", body = ErrorBody),
    ))]
async fn profile(
    State(s): State<VoiceState>,
    User(user): User,
) -> Result<Json<ProfileView>, ApiError> {
    let p = store::profile(&s.voice.db, &user).await?;
    Ok(Json(ProfileView {
        user,
        summary: p.summary,
        tags: p.tags,
        updated_at: p.updated_at,
    }))
}
