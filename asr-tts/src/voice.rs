//! The voice service: engines, the question writer with its circuit breaker, and one round's
//! question pipeline — LLM tokens → sentence splitter → TTS → audio frames — where sentence
//! n+1 is spoken while sentence n is being sent, through bounded channels, and everything stops
//! when the round is cancelled.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine;
use bytes::Bytes;
use common::db::Db;
use common::metrics::Metrics;
use common::queue::Queue;
use common::store::{Key, Store};
use futures::StreamExt;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::Config;
use crate::asr::Asr;
use crate::llm::{self, Breaker, Context, Event, Tokens, Writer};
use crate::splitter::{self, Splitter};
use crate::tts::Tts;

/// What the WebSocket writer sends.
#[derive(Debug, Clone)]
pub enum Out {
    /// A JSON event.
    Json(Value),
    /// Audio bytes.
    Binary(Bytes),
}

/// Question audio format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AudioOut {
    /// Each sentence as a complete Ogg/Opus stream.
    Ogg,
    /// Raw 16-bit little-endian mono PCM at the engine's rate.
    Pcm16,
}

impl AudioOut {
    /// Parses `ogg` / `pcm16`.
    pub fn parse(s: &str) -> Option<AudioOut> {
        match s {
            "ogg" | "opus" => Some(AudioOut::Ogg),
            "pcm16" | "pcm" => Some(AudioOut::Pcm16),
            _ => None,
        }
    }

    /// Protocol name.
    pub fn name(self) -> &'static str {
        match self {
            AudioOut::Ogg => "ogg",
            AudioOut::Pcm16 => "pcm16",
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct WriterLabel {
    writer: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TokenLabel {
    kind: &'static str,
}

/// Voice metrics.
#[derive(Clone, Debug)]
pub struct VoiceMetrics {
    ttft: Histogram,
    first_sentence: Histogram,
    first_audio: Histogram,
    tts_rtf: Histogram,
    /// ASR real-time factor.
    pub asr_rtf: Histogram,
    rounds: Family<WriterLabel, Counter>,
    tokens: Family<TokenLabel, Counter>,
}

impl VoiceMetrics {
    /// Registers them.
    pub fn register(metrics: &Metrics) -> VoiceMetrics {
        let secs =
            || Histogram::new([0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 8.0]);
        let rtf = || Histogram::new([0.01, 0.02, 0.05, 0.1, 0.2, 0.3, 0.5, 1.0, 2.0]);
        let m = VoiceMetrics {
            ttft: secs(),
            first_sentence: secs(),
            first_audio: secs(),
            tts_rtf: rtf(),
            asr_rtf: rtf(),
            rounds: Family::default(),
            tokens: Family::default(),
        };
        metrics.register(
            "voice_llm_ttft_seconds",
            "Question rounds: time to the writer's first token",
            m.ttft.clone(),
        );
        metrics.register(
            "voice_first_sentence_seconds",
            "Question rounds: time to the first complete sentence",
            m.first_sentence.clone(),
        );
        metrics.register(
            "voice_first_audio_seconds",
            "Question rounds: time to the first audio byte sent",
            m.first_audio.clone(),
        );
        metrics.register(
            "voice_tts_rtf",
            "TTS real-time factor (synthesis time / audio time)",
            m.tts_rtf.clone(),
        );
        metrics.register(
            "voice_asr_rtf",
            "ASR real-time factor (recognition time / audio time)",
            m.asr_rtf.clone(),
        );
        metrics.register(
            "voice_rounds",
            "Question rounds by writer (llm, local question writer)",
            m.rounds.clone(),
        );
        metrics.register(
            "voice_llm_tokens",
            "LLM tokens used, by kind (prompt, completion)",
            m.tokens.clone(),
        );
        m
    }

    fn unregistered() -> VoiceMetrics {
        VoiceMetrics::register(&Metrics::new("detached"))
    }
}

/// The shared voice service.
pub struct Voice {
    /// Settings.
    pub config: Config,
    /// Sessions, transcripts, memory.
    pub db: Db,
    /// Posters.
    pub store: Store,
    /// The summary job queue.
    pub queue: Queue,
    /// Speech synthesis.
    pub tts: Arc<dyn Tts>,
    /// Speech recognition.
    pub asr: Arc<dyn Asr>,
    /// The LLM, when configured.
    pub llm: Option<Arc<llm::OpenAi>>,
    breaker: Mutex<Breaker>,
    /// Metrics.
    pub metrics: VoiceMetrics,
}

/// What a round's question produced.
#[derive(Debug, Clone)]
pub struct Asked {
    /// The whole question text.
    pub text: String,
    /// Which writer wrote it.
    pub writer: &'static str,
    /// Prompt and completion tokens (LLM only).
    pub usage: (u64, u64),
}

/// The round was cancelled (client gone, or it barged in with an answer).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cancelled;

impl Voice {
    /// The service over its engines.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        config: Config,
        db: Db,
        store: Store,
        queue: Queue,
        tts: Arc<dyn Tts>,
        asr: Arc<dyn Asr>,
        metrics: Option<VoiceMetrics>,
    ) -> Voice {
        let llm = config.llm_url.as_ref().map(|url| {
            Arc::new(llm::OpenAi::new(llm::OpenAiConfig {
                url: url.clone(),
                model: config.llm_model.clone(),
                api_key: config.llm_api_key.clone(),
                connect_timeout: Duration::from_secs(config.llm_connect_timeout_secs),
                first_token_timeout: Duration::from_millis(config.llm_first_token_timeout_ms),
                max_tokens: config.llm_max_tokens,
            }))
        });
        let breaker = Breaker::new(
            config.breaker_failures,
            Duration::from_secs(config.breaker_cooldown_secs),
        );
        Voice {
            config,
            db,
            store,
            queue,
            tts,
            asr,
            llm,
            breaker: Mutex::new(breaker),
            metrics: metrics.unwrap_or_else(VoiceMetrics::unregistered),
        }
    }

    fn splitter(&self) -> Splitter {
        Splitter::new(splitter::Config {
            first_min_chars: self.config.first_fragment_chars,
            first_min_words: self.config.first_fragment_words,
            max_chars: self.config.max_sentence_chars,
        })
    }

    /// The moment's poster, resized to at most 512 px and JPEG-encoded, base64 — for round 1's
    /// prompt. `None` when the moment has no poster (yet).
    pub async fn poster_b64(&self, moment: &str) -> Option<String> {
        let key = Key::new(format!("hls/{moment}/poster.jpg")).ok()?;
        let bytes = self.store.get_bytes(&key, 16 << 20).await.ok()?;
        tokio::task::spawn_blocking(move || {
            let img = image::load_from_memory(&bytes).ok()?;
            let small = img.thumbnail(512, 512).to_rgb8();
            let mut out = std::io::Cursor::new(Vec::new());
            image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, 80)
                .encode_image(&small)
                .ok()?;
            Some(base64::engine::general_purpose::STANDARD.encode(out.into_inner()))
        })
        .await
        .ok()
        .flatten()
    }

    /// The longest question an LLM may write: `llm_max_tokens` at 16 bytes a token (English
    /// averages about 4), so only a reply that ignored the bound reaches it.
    fn max_question_bytes(&self) -> usize {
        self.config.llm_max_tokens.max(1) as usize * 16
    }

    /// Opens the writer for a round: the LLM when configured and the breaker allows (retrying
    /// once, only before the first token), else the local question writer. Returns the stream
    /// (with its first event already read) and, when degraded, why.
    async fn open(
        &self,
        ctx: &Context,
        cancel: &CancellationToken,
    ) -> (Tokens, &'static str, Option<String>) {
        let local = || -> Tokens {
            let text = llm::Local::text(ctx);
            Box::pin(futures::stream::iter(
                text.split_inclusive(' ')
                    .map(|w| Ok(Event::Token(w.to_string())))
                    .collect::<Vec<_>>(),
            ))
        };
        let Some(llm) = &self.llm else {
            return (local(), "local question writer", None);
        };
        let allowed = self
            .breaker
            .lock()
            .map(|b| b.allow(Instant::now()))
            .unwrap_or(true);
        if !allowed {
            return (
                local(),
                "local question writer",
                Some(
                    "the LLM keeps failing (circuit open); the local question writer asks instead"
                        .into(),
                ),
            );
        }
        let mut last_error = String::new();
        for attempt in 0..2 {
            if attempt > 0 {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            match llm.question(ctx, cancel.clone()).await {
                Ok(mut s) => match s.next().await {
                    Some(Ok(first)) => {
                        let rest: Tokens =
                            Box::pin(futures::stream::once(async move { Ok(first) }).chain(s));
                        return (rest, "llm", None);
                    }
                    Some(Err(e)) => last_error = e.to_string(),
                    None => last_error = "the LLM sent nothing".into(),
                },
                Err(e) => last_error = e.to_string(),
            }
            if cancel.is_cancelled() {
                break;
            }
        }
        let opened = self
            .breaker
            .lock()
            .map(|mut b| b.failure(Instant::now()))
            .unwrap_or(false);
        tracing::warn!(error = %last_error, breaker_opened = opened, "LLM failed; the local question writer asks this round");
        (
            local(),
            "local question writer",
            Some(format!(
                "the LLM failed ({last_error}); the local question writer asks instead"
            )),
        )
    }

    /// Runs one round's question: streams `question_delta`, `sentence`, audio and `metrics`
    /// events into `out`. Returns when the last sentence's audio is sent.
    pub async fn ask(
        self: &Arc<Self>,
        ctx: &Context,
        format: AudioOut,
        out: &mpsc::Sender<Out>,
        cancel: &CancellationToken,
    ) -> Result<Asked, Cancelled> {
        let round = ctx.round;
        let started = Instant::now();
        let (mut tokens, writer, degraded) = self.open(ctx, cancel).await;
        let send = |v: Value| {
            let out = out.clone();
            async move { out.send(Out::Json(v)).await.map_err(|_| Cancelled) }
        };

        // The speaker: sentences in, audio out, one sentence at a time, in order.
        let (say_tx, mut say_rx) = mpsc::channel::<(usize, String)>(4);
        let speaker = {
            let me = self.clone();
            let out = out.clone();
            let cancel = cancel.clone();
            tokio::spawn(async move {
                let mut first_audio: Option<Duration> = None;
                let (mut audio_secs, mut synth_secs) = (0.0f64, 0.0f64);
                while let Some((index, text)) = say_rx.recv().await {
                    if cancel.is_cancelled() {
                        break;
                    }
                    let tts = me.tts.clone();
                    let job = tokio::task::spawn_blocking(move || speak(&*tts, &text, format));
                    let result = tokio::select! {
                        r = job => r,
                        _ = cancel.cancelled() => break,
                    };
                    match result {
                        Ok(Ok(spoken)) => {
                            audio_secs += spoken.seconds;
                            synth_secs += spoken.took;
                            let mut start = json!({"type": "audio_start", "round": round, "index": index, "format": format.name()});
                            if format == AudioOut::Pcm16 {
                                start["sample_rate"] = json!(spoken.rate);
                            }
                            if out.send(Out::Json(start)).await.is_err() {
                                break;
                            }
                            for chunk in spoken.bytes.chunks(32 * 1024) {
                                first_audio.get_or_insert(started.elapsed());
                                if out
                                    .send(Out::Binary(Bytes::copy_from_slice(chunk)))
                                    .await
                                    .is_err()
                                {
                                    return (first_audio, audio_secs, synth_secs);
                                }
                            }
                            let _ = out
                                .send(Out::Json(
                                    json!({"type": "audio_end", "round": round, "index": index}),
                                ))
                                .await;
                        }
                        Ok(Err(e)) => {
                            // a sentence the voice cannot say is skipped, not fatal
                            tracing::warn!(error = %e, "sentence skipped");
                            let _ = out
                                .send(Out::Json(json!({"type": "error", "message": format!("sentence {index} could not be spoken: {e}")})))
                                .await;
                        }
                        Err(_) => break,
                    }
                }
                (first_audio, audio_secs, synth_secs)
            })
        };

        let mut split = self.splitter();
        let mut text = String::new();
        let mut index = 0usize;
        let mut first_token: Option<Duration> = None;
        let mut first_sentence: Option<Duration> = None;
        let mut usage = (0u64, 0u64);
        let mut broke = false;
        let mut first_delta = true;
        if let Some(reason) = &degraded {
            send(json!({"type": "error", "round": round, "message": reason, "degraded": true, "writer": writer})).await?;
        }
        loop {
            let next = tokio::select! {
                n = tokens.next() => n,
                _ = cancel.cancelled() => {
                    speaker.abort();
                    return Err(Cancelled);
                }
            };
            let Some(ev) = next else { break };
            match ev {
                Ok(Event::Token(t)) => {
                    first_token.get_or_insert(started.elapsed());
                    if writer == "llm" && text.len() + t.len() > self.max_question_bytes() {
                        // an LLM that ignores `max_tokens` (or streams garbage forever)
                        broke = true;
                        if let Ok(mut b) = self.breaker.lock() {
                            b.failure(Instant::now());
                        }
                        let message = format!(
                            "the LLM went on past {} bytes (llm_max_tokens = {}); the question is cut short",
                            self.max_question_bytes(),
                            self.config.llm_max_tokens
                        );
                        send(json!({"type": "error", "round": round, "message": message})).await?;
                        break;
                    }
                    text.push_str(&t);
                    let mut delta = json!({"type": "question_delta", "round": round, "text": t});
                    if first_delta {
                        delta["writer"] = json!(writer);
                        first_delta = false;
                    }
                    send(delta).await?;
                    for s in split.push(&t) {
                        first_sentence.get_or_insert(started.elapsed());
                        send(
                            json!({"type": "sentence", "round": round, "index": index, "text": s}),
                        )
                        .await?;
                        if say_tx.send((index, s)).await.is_err() {
                            return Err(Cancelled);
                        }
                        index += 1;
                    }
                }
                Ok(Event::Usage { prompt, completion }) => usage = (prompt, completion),
                Err(e) => {
                    broke = true;
                    if let Ok(mut b) = self.breaker.lock() {
                        b.failure(Instant::now());
                    }
                    send(json!({"type": "error", "round": round, "message": format!("{e}; the question is cut short")})).await?;
                    break;
                }
            }
        }
        for s in split.finish() {
            first_sentence.get_or_insert(started.elapsed());
            send(json!({"type": "sentence", "round": round, "index": index, "text": s})).await?;
            if say_tx.send((index, s)).await.is_err() {
                return Err(Cancelled);
            }
            index += 1;
        }
        drop(say_tx);
        let (first_audio, audio_secs, synth_secs) = tokio::select! {
            r = speaker => r.map_err(|_| Cancelled)?,
            _ = cancel.cancelled() => return Err(Cancelled),
        };
        if writer == "llm"
            && !broke
            && let Ok(mut b) = self.breaker.lock()
        {
            b.success();
        }
        let ms = |d: Option<Duration>| d.map(|d| d.as_millis() as u64);
        let tts_rtf = if audio_secs > 0.0 {
            synth_secs / audio_secs
        } else {
            0.0
        };
        if let Some(d) = first_token {
            self.metrics.ttft.observe(d.as_secs_f64());
        }
        if let Some(d) = first_sentence {
            self.metrics.first_sentence.observe(d.as_secs_f64());
        }
        if let Some(d) = first_audio {
            self.metrics.first_audio.observe(d.as_secs_f64());
        }
        if audio_secs > 0.0 {
            self.metrics.tts_rtf.observe(tts_rtf);
        }
        self.metrics
            .rounds
            .get_or_create(&WriterLabel {
                writer: writer.to_string(),
            })
            .inc();
        self.metrics
            .tokens
            .get_or_create(&TokenLabel { kind: "prompt" })
            .inc_by(usage.0);
        self.metrics
            .tokens
            .get_or_create(&TokenLabel { kind: "completion" })
            .inc_by(usage.1);
        send(json!({
            "type": "metrics",
            "round": round,
            "writer": writer,
            "llm_ttft_ms": ms(first_token),
            "first_sentence_ms": ms(first_sentence),
            "first_audio_ms": ms(first_audio),
            "sentences": index,
            "audio_seconds": (audio_secs * 1000.0).round() / 1000.0,
            "tts_engine": self.tts.name(),
            "tts_rtf": (tts_rtf * 1000.0).round() / 1000.0,
        }))
        .await?;
        Ok(Asked {
            text: text.trim().to_string(),
            writer,
            usage,
        })
    }
}

/// One sentence spoken and encoded.
pub struct Spoken {
    /// Encoded audio.
    pub bytes: Vec<u8>,
    /// Audio seconds.
    pub seconds: f64,
    /// Synthesis + encoding seconds.
    pub took: f64,
    /// PCM sample rate.
    pub rate: u32,
}

/// Synthesises and encodes one sentence (blocking).
pub fn speak(tts: &dyn Tts, text: &str, format: AudioOut) -> Result<Spoken, String> {
    let t0 = Instant::now();
    let speech = tts.synthesize(text).map_err(|e| e.to_string())?;
    if speech.samples.is_empty() {
        return Err("nothing the voice can say".into());
    }
    let bytes = match format {
        AudioOut::Ogg => {
            crate::gst::encode_ogg_opus(&speech.samples, speech.rate).map_err(|e| e.to_string())?
        }
        AudioOut::Pcm16 => speech
            .samples
            .iter()
            .flat_map(|s| s.to_le_bytes())
            .collect(),
    };
    Ok(Spoken {
        bytes,
        seconds: speech.seconds(),
        took: t0.elapsed().as_secs_f64(),
        rate: speech.rate,
    })
}
