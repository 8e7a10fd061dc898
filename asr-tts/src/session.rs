//! One voice Q&A session over a WebSocket.
//!
//! Client → server: `{"type":"answer_start","format":F}` (F: wav, pcm16, ogg, webm, mp3, m4a),
//! binary audio frames, `{"type":"answer_done"}`, `{"type":"answer_text","text":T}`, and
//! `{"type":"ping"}` (answered with `pong`) to keep an idle socket open. Server → client: `question_delta`,
//! `sentence`, `audio_start` + binary frames + `audio_end` (each sentence a complete stream),
//! `transcript_partial` / `transcript`, `round_done`, `metrics`, `error`.
//!
//! Round 1 starts when the socket opens. Each round: the question is written and spoken; the
//! client answers; the answer is transcribed (partials stream for pcm16 and wav); the next
//! round digs deeper. A new `answer_start` during a question stops it at once (barge-in), and a
//! client that leaves stops everything: no work goes on for a gone client.

use std::sync::Arc;
use std::time::Instant;

use axum::extract::ws::{Message, WebSocket};
use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::asr::Recognizer;
use crate::audio::{self, Format};
use crate::llm::Context;
use crate::store;
use crate::voice::{AudioOut, Out, Voice};

/// The longest typed answer.
const MAX_TYPED_CHARS: usize = 2000;

/// What the client sent, as the session sees it.
#[derive(Debug)]
enum In {
    Start(Format),
    Audio(bytes::Bytes),
    Done,
    /// A typed answer (when the client has no microphone).
    Text(String),
    /// A message that needs nothing more: already answered (an `error`, or the `pong` to a
    /// `ping`).
    Answered,
}

/// The longest JSON message a client may send (a typed answer of `MAX_TYPED_CHARS` fits);
/// longer ones are refused unparsed. Binary audio messages are bounded by the WebSocket's
/// own message limit.
pub const MAX_TEXT_BYTES: usize = 16 * 1024;

/// A client's text (JSON) message, parsed.
#[derive(Debug, Clone, PartialEq)]
pub enum ClientText {
    /// `{"type":"answer_start","format":F}`: binary audio in format F follows.
    Start(Format),
    /// `{"type":"answer_done"}`: the answer is complete.
    Done,
    /// `{"type":"answer_text","text":T}`: a typed answer (trimmed, 1 to 2000 characters).
    Text(String),
    /// `{"type":"ping"}`: keeps an idle socket open (the server answers `{"type":"pong"}`);
    /// browsers cannot send WebSocket ping frames themselves.
    Ping,
}

/// Parses a client's text message (the WebSocket reader's core, without I/O): the message, or
/// the reason sent back in an `error`.
pub fn parse_text(text: &str) -> Result<ClientText, String> {
    if text.len() > MAX_TEXT_BYTES {
        return Err(format!(
            "a JSON message may be at most {MAX_TEXT_BYTES} bytes (this one is {})",
            text.len()
        ));
    }
    let v: Value = serde_json::from_str(text)
        .map_err(|_| "messages must be JSON objects with a \"type\"".to_string())?;
    match v["type"].as_str() {
        Some("answer_start") => v["format"]
            .as_str()
            .and_then(Format::parse)
            .map(ClientText::Start)
            .ok_or_else(|| {
                format!(
                    "unknown answer format {}; use wav, pcm16, ogg, webm, mp3 or m4a",
                    v["format"]
                )
            }),
        Some("answer_done") => Ok(ClientText::Done),
        Some("ping") => Ok(ClientText::Ping),
        Some("answer_text") => match v["text"].as_str().map(str::trim) {
            Some(t) if !t.is_empty() && t.chars().count() <= MAX_TYPED_CHARS => {
                Ok(ClientText::Text(t.to_string()))
            }
            _ => Err(format!(
                "answer_text needs a \"text\" of 1 to {MAX_TYPED_CHARS} characters"
            )),
        },
        other => Err(format!(
            "unknown message type {}",
            other.map_or("(none)".to_string(), |t| format!("{t:?}"))
        )),
    }
}

/// The reader's adapter: a socket message into the session's input; `None` when the client
/// closed. Errors and pongs are answered here.
fn parse(msg: Message, out: &mpsc::Sender<Out>) -> Option<In> {
    let text = match msg {
        Message::Binary(b) => return Some(In::Audio(b)),
        Message::Text(t) => t,
        Message::Close(_) => return None,
        // WebSocket ping frames are answered by the socket itself
        _ => return Some(In::Answered),
    };
    match parse_text(text.as_str()) {
        Ok(ClientText::Start(f)) => Some(In::Start(f)),
        Ok(ClientText::Done) => Some(In::Done),
        Ok(ClientText::Text(t)) => Some(In::Text(t)),
        Ok(ClientText::Ping) => {
            let _ = out.try_send(Out::Json(json!({"type": "pong"})));
            Some(In::Answered)
        }
        Err(message) => {
            let _ = out.try_send(Out::Json(json!({"type": "error", "message": message})));
            Some(In::Answered)
        }
    }
}

/// An answer being received.
struct Answer {
    format: Format,
    bytes: Vec<u8>,
    /// Streaming recognition for formats we can decode as they arrive (pcm16, wav).
    live: Option<Box<dyn Recognizer>>,
    /// For wav: (channels, rate, data offset) once the header is in.
    wav: Option<(u16, u32, usize)>,
    fed: usize,
    samples: usize,
    last_partial: Instant,
    partial: String,
}

/// Runs a session on an upgraded socket until it ends.
pub async fn run(voice: Arc<Voice>, session: store::Session, socket: WebSocket) {
    let (mut sink, mut stream) = socket.split();
    let (out_tx, mut out_rx) = mpsc::channel::<Out>(64);
    let cancel = CancellationToken::new();
    // writer: everything to the client goes through one task, in order
    let writer = {
        let cancel = cancel.clone();
        tokio::spawn(async move {
            while let Some(m) = out_rx.recv().await {
                let msg = match m {
                    Out::Json(v) => Message::Text(v.to_string().into()),
                    Out::Binary(b) => Message::Binary(b),
                };
                if sink.send(msg).await.is_err() {
                    break;
                }
            }
            cancel.cancel();
            let _ = sink.close().await;
        })
    };
    // reader: client messages into a channel; a gone client cancels everything
    let (in_tx, mut in_rx) = mpsc::channel::<In>(256);
    let reader = {
        let out = out_tx.clone();
        let cancel = cancel.clone();
        tokio::spawn(async move {
            while let Some(Ok(msg)) = stream.next().await {
                let Some(m) = parse(msg, &out) else { break };
                if in_tx.send(m).await.is_err() {
                    break;
                }
            }
            cancel.cancel();
        })
    };

    let result = rounds(&voice, &session, &out_tx, &mut in_rx, &cancel).await;
    let _ = store::close_session(&voice.db, &session.id).await;
    if result.answered > 0 {
        // memory: summarise this session's answers for the next one
        let _ = voice
            .queue
            .enqueue(&common::queue::NewJob {
                kind: crate::summary::KIND.to_string(),
                payload: json!({"session": session.id}),
                dedup_key: Some(format!("{}:{}", crate::summary::KIND, session.id)),
                max_attempts: None,
                priority: Default::default(),
            })
            .await;
    }
    // The reader holds a sender too: stop it first so the writer can flush and close.
    reader.abort();
    let _ = reader.await;
    drop(out_tx);
    let _ = writer.await;
    cancel.cancel();
    tracing::info!(session = %session.id, answered = result.answered, "voice session ended");
}

struct Outcome {
    answered: u32,
}

async fn rounds(
    voice: &Arc<Voice>,
    session: &store::Session,
    out: &mpsc::Sender<Out>,
    input: &mut mpsc::Receiver<In>,
    cancel: &CancellationToken,
) -> Outcome {
    let format = AudioOut::parse(&session.audio_format).unwrap_or(AudioOut::Ogg);
    let mut outcome = Outcome { answered: 0 };
    let profile = store::profile(&voice.db, &session.user_id)
        .await
        .unwrap_or_default();
    // Changes to the moment made anywhere (a worker on another node finishing the transcode,
    // say) reach this session through the database's change channel (PostgreSQL: LISTEN/NOTIFY);
    // the next question is written from what the moment is then.
    let mut changes = voice.db.subscribe();
    let (mut facts, mut said) = read_facts(voice, &session.moment_id).await;
    let mut poster = voice.poster_b64(&session.moment_id).await;
    let mut history: Vec<(String, String)> = Vec::new();
    for round in 1..=voice.config.max_rounds {
        if round > 1
            && moment_changed(
                &mut changes,
                &session.moment_id,
                voice.db.hears_other_nodes(),
            )
        {
            (facts, said) = read_facts(voice, &session.moment_id).await;
            if poster.is_none() {
                poster = voice.poster_b64(&session.moment_id).await;
            }
        }
        let ctx = Context {
            round,
            moment: facts.clone(),
            poster_b64: if round == 1 { poster.clone() } else { None },
            memory: (!profile.summary.is_empty()).then(|| profile.summary.clone()),
            tags: profile.tags.clone(),
            history: history.clone(),
            said: said.clone(),
        };
        // the question, while listening for a barge-in or a gone client
        let q_cancel = cancel.child_token();
        let mut pending: Option<In> = None;
        let asked = {
            let ask = voice.ask(&ctx, format, out, &q_cancel);
            tokio::pin!(ask);
            loop {
                tokio::select! {
                    r = &mut ask => break r.ok(),
                    m = input.recv() => match m {
                        None => {
                            q_cancel.cancel();
                            return outcome;
                        }
                        Some(m @ (In::Start(_) | In::Text(_))) => {
                            q_cancel.cancel(); // barge-in: stop writing and speaking at once
                            pending = Some(m);
                            let _ = (&mut ask).await;
                            break None;
                        }
                        Some(In::Audio(_)) | Some(In::Done) => {
                            let _ = out.send(Out::Json(json!({"type": "error", "message": "send answer_start before the answer's audio"}))).await;
                        }
                        Some(In::Answered) => {}
                    },
                }
            }
        };
        if cancel.is_cancelled() {
            return outcome;
        }
        let question = match &asked {
            Some(a) => {
                let _ = store::put_question(&voice.db, &session.id, round, &a.text, a.writer).await;
                let _ = store::add_usage(
                    &voice.db,
                    &session.id,
                    a.usage.0,
                    a.usage.1,
                    a.writer != "llm",
                )
                .await;
                a.text.clone()
            }
            None => {
                let text = "(interrupted)".to_string();
                let _ =
                    store::put_question(&voice.db, &session.id, round, &text, "interrupted").await;
                text
            }
        };
        // the answer
        let Some(transcript) = answer(voice, round, out, input, pending, cancel).await else {
            return outcome;
        };
        let _ = store::put_answer(&voice.db, &session.id, round, &transcript).await;
        outcome.answered += 1;
        let _ = out
            .send(Out::Json(json!({"type": "round_done", "round": round})))
            .await;
        history.push((question, transcript));
    }
    outcome
}

/// The moment as words for the prompt (`a short video` when it cannot be read), and what the
/// person says in it (its captions' transcript) when that is known.
async fn read_facts(voice: &Voice, moment: &str) -> (String, Option<String>) {
    match common::moment::get(&voice.db, moment).await.ok().flatten() {
        Some(m) => (
            describe(&m),
            m.renditions["captions"]["transcript"]
                .as_str()
                .filter(|t| !t.trim().is_empty())
                .map(str::to_string),
        ),
        None => ("a short video".to_string(), None),
    }
}

/// Whether `moment` may have changed since the last call: a change to it (or a resync, or
/// missed changes) was heard, or nothing can be heard from other processes (SQLite, or the
/// listener is down), in which case it is read again each round.
fn moment_changed(
    changes: &mut tokio::sync::broadcast::Receiver<common::db::Change>,
    moment: &str,
    hears: bool,
) -> bool {
    use common::db::Change;
    use tokio::sync::broadcast::error::TryRecvError;
    let mut changed = !hears;
    loop {
        match changes.try_recv() {
            Ok(Change::Moment(id)) if id == moment => changed = true,
            Ok(Change::Resync) | Err(TryRecvError::Lagged(_)) => changed = true,
            Ok(_) => {}
            Err(TryRecvError::Empty | TryRecvError::Closed) => return changed,
        }
    }
}

/// The moment as words for the prompt.
fn describe(m: &common::moment::Moment) -> String {
    let dur = m.renditions["duration"].as_f64();
    let first = &m.renditions["renditions"][0];
    let shape = match (first["width"].as_u64(), first["height"].as_u64()) {
        (Some(w), Some(h)) if h > w => "portrait",
        (Some(_), Some(_)) => "landscape",
        _ => "",
    };
    match dur {
        Some(d) => format!("a {d:.0}-second {shape} video").replace("  ", " "),
        None => "a short video".to_string(),
    }
}

/// Collects one answer and transcribes it. `None` when the client left.
async fn answer(
    voice: &Arc<Voice>,
    round: u32,
    out: &mpsc::Sender<Out>,
    input: &mut mpsc::Receiver<In>,
    mut pending: Option<In>,
    cancel: &CancellationToken,
) -> Option<String> {
    let max_bytes = voice.config.max_answer_bytes as usize;
    let max_secs = voice.config.max_answer_secs;
    let mut current: Option<Answer> = None;
    loop {
        let msg = match pending.take() {
            Some(m) => m,
            None => tokio::select! {
                m = input.recv() => m?,
                _ = cancel.cancelled() => return None,
            },
        };
        match msg {
            In::Start(format) => {
                // a new answer replaces one in progress
                let live = match format {
                    Format::Pcm16 | Format::Wav => {
                        let asr = voice.asr.clone();
                        tokio::task::spawn_blocking(move || asr.start().ok())
                            .await
                            .ok()
                            .flatten()
                    }
                    _ => None,
                };
                current = Some(Answer {
                    format,
                    bytes: Vec::new(),
                    live,
                    wav: None,
                    fed: 0,
                    samples: 0,
                    last_partial: Instant::now(),
                    partial: String::new(),
                });
            }
            In::Audio(b) => {
                let Some(a) = current.as_mut() else {
                    let _ = out.send(Out::Json(json!({"type": "error", "message": "send answer_start before the answer's audio"}))).await;
                    continue;
                };
                if a.bytes.len() + b.len() > max_bytes {
                    let _ = out
                        .send(Out::Json(json!({"type": "error", "message": format!("the answer is over the {max_secs:.0} s / {max_bytes} byte limit; it was discarded — start a new answer")})))
                        .await;
                    current = None;
                    continue;
                }
                a.bytes.extend_from_slice(&b);
                if let Some(text) = feed_live(voice, a, max_secs).await {
                    let _ = out
                        .send(Out::Json(
                            json!({"type": "transcript_partial", "round": round, "text": text}),
                        ))
                        .await;
                }
                if a.samples as f64 / 16_000.0 > max_secs {
                    let _ = out
                        .send(Out::Json(json!({"type": "error", "message": format!("the answer is longer than {max_secs:.0} s; it was discarded — start a new answer")})))
                        .await;
                    current = None;
                }
            }
            In::Text(text) => {
                let _ = out
                    .send(Out::Json(
                        json!({"type": "transcript", "round": round, "text": text, "engine": "typed"}),
                    ))
                    .await;
                return Some(text);
            }
            In::Done => {
                let Some(a) = current.take() else {
                    let _ = out
                        .send(Out::Json(
                            json!({"type": "error", "message": "answer_done without an answer"}),
                        ))
                        .await;
                    continue;
                };
                match finish(voice, a).await {
                    Ok(text) => {
                        let _ = out
                            .send(Out::Json(
                                json!({"type": "transcript", "round": round, "text": text, "engine": voice.asr.name()}),
                            ))
                            .await;
                        return Some(text);
                    }
                    Err(msg) => {
                        // the session stays usable: the client can answer again
                        let _ = out
                            .send(Out::Json(json!({"type": "error", "message": msg})))
                            .await;
                    }
                }
            }
            In::Answered => {}
        }
    }
}

/// Turns raw answer bytes into 16 kHz mono samples.
type ToPcm16k = Box<dyn Fn(&[u8]) -> Vec<i16> + Send>;

/// Feeds newly arrived pcm16/wav samples to the live recogniser; returns a new partial at most
/// twice a second.
async fn feed_live(voice: &Arc<Voice>, a: &mut Answer, _max_secs: f64) -> Option<String> {
    a.live.as_ref()?;
    let (start, to16k): (usize, ToPcm16k) = match a.format {
        Format::Pcm16 => (
            0,
            Box::new(|b: &[u8]| {
                b.chunks_exact(2)
                    .map(|c| i16::from_le_bytes([c[0], c[1]]))
                    .collect()
            }),
        ),
        Format::Wav => {
            if a.wav.is_none() {
                a.wav = audio::wav_header(&a.bytes);
            }
            let (ch, rate, off) = a.wav?;
            (
                off,
                Box::new(move |b: &[u8]| {
                    let s: Vec<f32> = b
                        .chunks_exact(2)
                        .map(|c| f32::from(i16::from_le_bytes([c[0], c[1]])) / 32768.0)
                        .collect();
                    let mono = crate::resample::to_mono(&s, usize::from(ch.max(1)));
                    crate::resample::to_i16(&crate::resample::resample(&mono, rate, 16_000))
                }),
            )
        }
        _ => return None,
    };
    let from = a.fed.max(start);
    // whole frames only (2 bytes per sample per channel; wav may be stereo)
    let frame = match (a.format, a.wav) {
        (Format::Wav, Some((ch, _, _))) => 2 * usize::from(ch.max(1)),
        _ => 2,
    };
    let usable = (a.bytes.len().saturating_sub(from) / frame) * frame;
    // feed in steps of at least ~0.25 s so resampling has context
    if usable < 8000 {
        return None;
    }
    let pcm = to16k(&a.bytes[from..from + usable]);
    a.fed = from + usable;
    a.samples += pcm.len();
    let mut r = a.live.take()?;
    let want_partial = a.last_partial.elapsed().as_millis() >= 500;
    let (r, partial) = tokio::task::spawn_blocking(move || {
        let ok = r.feed(&pcm).is_ok();
        let p = if want_partial && ok {
            Some(r.partial())
        } else {
            None
        };
        (r, p)
    })
    .await
    .ok()?;
    a.live = Some(r);
    let _ = voice;
    match partial {
        Some(p) if !p.is_empty() && p != a.partial => {
            a.last_partial = Instant::now();
            a.partial = p.clone();
            Some(p)
        }
        _ => None,
    }
}

/// Decodes (when not streamed) and recognises the whole answer.
async fn finish(voice: &Arc<Voice>, mut a: Answer) -> Result<String, String> {
    let max_secs = voice.config.max_answer_secs;
    if a.bytes.is_empty() {
        return Err("the answer is empty".into());
    }
    let started = Instant::now();
    let result = match a.live.take() {
        Some(mut r) => {
            // the rest of the streamed samples, then the final hypothesis
            let rest = match a.format {
                Format::Pcm16 => {
                    let from = a.fed;
                    a.bytes[from..]
                        .chunks_exact(2)
                        .map(|c| i16::from_le_bytes([c[0], c[1]]))
                        .collect::<Vec<i16>>()
                }
                _ => match audio::wav_header(&a.bytes) {
                    Some((ch, rate, off)) => {
                        let from = a.fed.max(off);
                        let s: Vec<f32> = a.bytes[from..]
                            .chunks_exact(2)
                            .map(|c| f32::from(i16::from_le_bytes([c[0], c[1]])) / 32768.0)
                            .collect();
                        let mono = crate::resample::to_mono(&s, usize::from(ch.max(1)));
                        crate::resample::to_i16(&crate::resample::resample(&mono, rate, 16_000))
                    }
                    None => return Err(audio::Error::Mismatch(a.format.name()).to_string()),
                },
            };
            let total = a.samples + rest.len();
            if total == 0 {
                return Err(audio::Error::Silent.to_string());
            }
            let secs = total as f64 / 16_000.0;
            tokio::task::spawn_blocking(move || {
                r.feed(&rest).map_err(|e| e.to_string())?;
                r.finish().map_err(|e| e.to_string()).map(|t| (t, secs))
            })
            .await
            .map_err(|e| e.to_string())?
        }
        None => {
            let asr = voice.asr.clone();
            let (bytes, format) = (std::mem::take(&mut a.bytes), a.format);
            tokio::task::spawn_blocking(move || {
                let pcm = audio::decode(&bytes, format, max_secs).map_err(|e| e.to_string())?;
                let secs = pcm.len() as f64 / 16_000.0;
                asr.transcribe(&pcm)
                    .map_err(|e| e.to_string())
                    .map(|t| (t, secs))
            })
            .await
            .map_err(|e| e.to_string())?
        }
    };
    let (text, secs) = result?;
    if secs > 0.0 {
        voice
            .metrics
            .asr_rtf
            .observe(started.elapsed().as_secs_f64() / secs);
    }
    Ok(text)
}
