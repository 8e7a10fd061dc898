//! Voice routes: `POST /v1/moments/{id}/qa` (a session) + `GET /v1/qa/{session}/ws` (the
//! WebSocket), the engines on their own at `POST /v1/asr` and `POST /v1/tts`, and
//! `GET /v1/users/me/profile` (the memory the summary job writes).

use std::sync::Arc;

use axum::body::Body;
use axum::extract::ws::WebSocketUpgrade;
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use common::ApiError;
use common::auth::{StreamUser, User};
use futures::StreamExt;
use serde::Deserialize;
use serde_json::json;

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
    Router::new()
        .route("/v1/moments/{id}/qa", post(create_session))
        .route("/v1/qa/{session}/ws", get(websocket))
        .route("/v1/asr", post(asr).layer(DefaultBodyLimit::max(asr_limit)))
        .route("/v1/tts", post(tts))
        .route("/v1/users/me/profile", get(profile))
        .with_state(state)
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct SessionRequest {
    /// `ogg` (default) or `pcm16`.
    #[serde(default)]
    audio: Option<String>,
}

async fn create_session(
    State(s): State<VoiceState>,
    User(user): User,
    Path(moment): Path<String>,
    body: Option<Json<SessionRequest>>,
) -> Result<Json<serde_json::Value>, ApiError> {
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
    Ok(Json(
        json!({"session": id, "ws_url": format!("/v1/qa/{id}/ws")}),
    ))
}

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

#[derive(Debug, Deserialize)]
struct AsrQuery {
    format: Option<String>,
}

async fn asr(
    State(s): State<VoiceState>,
    User(user): User,
    Query(q): Query<AsrQuery>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Result<Json<serde_json::Value>, ApiError> {
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
    Ok(Json(json!({
        "text": text,
        "seconds": (secs * 1000.0).round() / 1000.0,
        "engine": s.voice.asr.name(),
        "rtf": ((took / secs.max(1e-3)) * 1000.0).round() / 1000.0,
    })))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TtsRequest {
    text: String,
    #[serde(default)]
    format: Option<String>,
}

/// Speaks a text, streamed sentence by sentence as each is synthesised: for `ogg`, one
/// continuous Ogg/Opus stream whose pages go out as each sentence is encoded; for `pcm16`, raw
/// samples (the rate is in `X-Sample-Rate`).
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

async fn profile(
    State(s): State<VoiceState>,
    User(user): User,
) -> Result<Json<serde_json::Value>, ApiError> {
    let p = store::profile(&s.voice.db, &user).await?;
    Ok(Json(
        json!({"user": user, "summary": p.summary, "tags": p.tags, "updated_at": p.updated_at}),
    ))
}
