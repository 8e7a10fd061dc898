//! Voice Q&A: the streaming pipeline answer audio → ASR → LLM stream → sentence splitter → TTS
//! → audio out, with engine traits for ASR ([`asr::Asr`]), TTS ([`tts::Tts`]) and the question
//! writer ([`llm::Writer`]).
//!
//! Position in the data flow: beside the video path; reads a moment's poster, writes
//! transcripts and user memory. The FFI to libespeak-ng and pocketsphinx is confined to
//! [`espeak`] and [`sphinx`], GStreamer to [`gst`]; everything else is safe Rust, and the
//! sentence splitter, breaker and resampler are plain functions tested in memory. It must
//! never block the async runtime: engines run on the blocking pool.

#![deny(unsafe_code)]

pub mod api;
pub mod asr;
pub mod audio;
pub mod captions;
pub mod espeak;
pub mod gst;
pub mod llm;
pub mod piper;
pub mod resample;
pub mod session;
pub mod sphinx;
pub mod splitter;
pub mod store;
pub mod summary;
pub mod tts;
pub mod voice;
pub mod whisper;

use std::path::PathBuf;
use std::sync::Arc;

use serde::Deserialize;

/// `[voice]` section.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// OpenAI-compatible base URL (`MOMENTS_LLM_URL`); unset: the local question writer.
    pub llm_url: Option<String>,
    /// Model name (`MOMENTS_LLM_MODEL`).
    pub llm_model: String,
    /// API key (`MOMENTS_LLM_API_KEY`).
    pub llm_api_key: Option<String>,
    /// Time to connect and get the answer head (seconds).
    pub llm_connect_timeout_secs: u64,
    /// Time to the first token (milliseconds).
    pub llm_first_token_timeout_ms: u64,
    /// Reply length bound (tokens).
    pub llm_max_tokens: u32,
    /// Consecutive LLM failures that open the circuit breaker.
    pub breaker_failures: u32,
    /// How long the breaker stays open (seconds).
    pub breaker_cooldown_secs: u64,
    /// Questions per session.
    pub max_rounds: u32,
    /// Longest answer (seconds).
    pub max_answer_secs: f64,
    /// Largest answer upload (bytes; also the `/v1/asr` body limit).
    pub max_answer_bytes: u64,
    /// Longest `/v1/tts` text (characters).
    pub max_tts_chars: usize,
    /// The first sentence may be cut at a clause boundary once this long.
    pub first_fragment_chars: usize,
    /// The first sentence may also end before a preposition or conjunction once it has this
    /// many words (English; 0 turns it off) — first audio sooner when no comma comes.
    pub first_fragment_words: usize,
    /// Longest sentence handed to TTS.
    pub max_sentence_chars: usize,
    /// Speaking rate of eSpeak NG (words per minute).
    pub espeak_wpm: i32,
    /// Directory of the pocketsphinx model.
    pub pocketsphinx_model: PathBuf,
    /// Which TTS engine speaks English: `auto` (Piper when its files are installed, else
    /// eSpeak NG), `piper` or `espeak-ng`. Mandarin is always eSpeak NG.
    pub tts_engine: TtsEngine,
    /// Which ASR engine listens: `auto` (Whisper when installed, else pocketsphinx), `whisper`
    /// or `pocketsphinx`.
    pub asr_engine: AsrEngine,
    /// Where `deploy/install-models.sh` put the neural engines' files (`MOMENTS_MODELS_DIR`;
    /// unset: `$DATA/models`).
    pub models_dir: Option<PathBuf>,
    /// A CTranslate2 Whisper model directory (unset: `{models_dir}/whisper-tiny.en`).
    pub whisper_model: Option<PathBuf>,
    /// The language Whisper transcribes (English-only models need `en`).
    pub whisper_language: String,
    /// CPU threads for one Whisper decode (0: all cores).
    pub whisper_threads: usize,
    /// A Piper voice `.onnx` with its `.onnx.json` beside it (unset:
    /// `{models_dir}/piper/en_US-joe-medium.onnx`).
    pub piper_voice: Option<PathBuf>,
    /// ONNX Runtime's shared library (unset: `{models_dir}/onnxruntime/libonnxruntime.so.1.32.0`).
    pub onnxruntime: Option<PathBuf>,
    /// Intra-op threads for one Piper synthesis (0: all cores).
    pub piper_threads: usize,
}

/// TTS engine choice.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum TtsEngine {
    /// Piper when installed, else eSpeak NG.
    #[default]
    Auto,
    /// Piper (falls back to eSpeak NG, with a warning, when it cannot load).
    Piper,
    /// eSpeak NG.
    EspeakNg,
}

/// ASR engine choice.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum AsrEngine {
    /// Whisper when installed, else pocketsphinx.
    #[default]
    Auto,
    /// Whisper (falls back to pocketsphinx, with a warning, when it cannot load).
    Whisper,
    /// pocketsphinx.
    Pocketsphinx,
}

/// The ONNX Runtime library `deploy/install-models.sh` installs.
pub const ONNXRUNTIME_LIB: &str = "onnxruntime/libonnxruntime.so.1.32.0";
/// The Piper voice `deploy/install-models.sh` installs.
pub const PIPER_VOICE: &str = "piper/en_US-joe-medium.onnx";
/// The Whisper model `deploy/install-models.sh` installs.
pub const WHISPER_MODEL: &str = "whisper-tiny.en";

impl Config {
    fn models_dir(&self) -> PathBuf {
        self.models_dir
            .clone()
            .unwrap_or_else(|| PathBuf::from("./data/models"))
    }

    /// The Whisper model directory in use.
    pub fn whisper_model_path(&self) -> PathBuf {
        self.whisper_model
            .clone()
            .unwrap_or_else(|| self.models_dir().join(WHISPER_MODEL))
    }

    /// The Piper voice in use.
    pub fn piper_voice_path(&self) -> PathBuf {
        self.piper_voice
            .clone()
            .unwrap_or_else(|| self.models_dir().join(PIPER_VOICE))
    }

    /// The ONNX Runtime library in use.
    pub fn onnxruntime_path(&self) -> PathBuf {
        self.onnxruntime
            .clone()
            .unwrap_or_else(|| self.models_dir().join(ONNXRUNTIME_LIB))
    }
}

fn threads(n: usize) -> usize {
    if n > 0 {
        n
    } else {
        std::thread::available_parallelism().map_or(1, |n| n.get())
    }
}

impl Default for Config {
    fn default() -> Self {
        Config {
            llm_url: None,
            llm_model: "deepseek-chat".into(),
            llm_api_key: None,
            llm_connect_timeout_secs: 5,
            llm_first_token_timeout_ms: 8000,
            llm_max_tokens: 120,
            breaker_failures: 3,
            breaker_cooldown_secs: 60,
            max_rounds: 2,
            max_answer_secs: 120.0,
            max_answer_bytes: 16 * 1024 * 1024,
            max_tts_chars: 2000,
            first_fragment_chars: 24,
            first_fragment_words: 3,
            max_sentence_chars: 180,
            espeak_wpm: 165,
            pocketsphinx_model: PathBuf::from(sphinx::DEFAULT_MODEL_DIR),
            tts_engine: TtsEngine::Auto,
            asr_engine: AsrEngine::Auto,
            models_dir: None,
            whisper_model: None,
            whisper_language: "en".into(),
            whisper_threads: 0,
            piper_voice: None,
            onnxruntime: None,
            piper_threads: 0,
        }
    }
}

/// Engine errors at start-up.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// TTS unusable.
    #[error("{0}")]
    Tts(#[from] tts::Error),
    /// ASR unusable.
    #[error("{0}")]
    Asr(#[from] asr::Error),
    /// GStreamer unusable.
    #[error("{0}")]
    Gst(#[from] gst::Error),
}

/// A TTS and an ASR engine.
pub type Engines = (Arc<dyn tts::Tts>, Arc<dyn asr::Asr>);

/// What a process without the `voice` role has instead of engines: nothing loaded (no Whisper,
/// no Piper, no GStreamer), and a clear error if anything asked it to speak or listen — which
/// nothing does, since such a process mounts no voice route (its summary jobs use the LLM only).
#[derive(Debug, Clone, Copy)]
pub struct NotLoaded;

const NOT_LOADED: &str =
    "the voice engines are not loaded in this process (it does not run the voice role)";

impl tts::Tts for NotLoaded {
    fn name(&self) -> &'static str {
        "none"
    }
    fn synthesize(&self, _text: &str) -> Result<tts::Speech, tts::Error> {
        Err(tts::Error::Engine(NOT_LOADED.into()))
    }
}

impl asr::Asr for NotLoaded {
    fn name(&self) -> &'static str {
        "none"
    }
    fn start(&self) -> Result<Box<dyn asr::Recognizer>, asr::Error> {
        Err(asr::Error::Engine(NOT_LOADED.into()))
    }
}

/// The voice service over `shared`: with its engines loaded when `engines` (the `voice` role),
/// without when only its summary jobs run here (the `worker` role).
pub async fn open(
    shared: &common::service::Shared,
    config: Config,
    engines: bool,
) -> anyhow::Result<Arc<voice::Voice>> {
    let (tts, asr): Engines = if engines {
        let c = config.clone();
        // model loading reads hundreds of MB and runs a probe: off the async runtime
        tokio::task::spawn_blocking(move || self::engines(&c)).await??
    } else {
        (Arc::new(NotLoaded), Arc::new(NotLoaded))
    };
    Ok(Arc::new(voice::Voice::new(
        config,
        shared.db.clone(),
        shared.store.clone(),
        shared.queue.clone(),
        tts,
        asr,
        Some(voice::VoiceMetrics::register(&shared.metrics)),
    )))
}

/// The `voice` role's share of this crate: the Q&A routes and the engines on their own.
pub fn service(
    shared: &common::service::Shared,
    voice: Arc<voice::Voice>,
) -> common::service::Service {
    common::service::Service::routes(api::router(api::VoiceState {
        shared: shared.clone(),
        voice,
    }))
}

/// The `worker` role's share: the `qa_summary` job that turns answers into memory, and the
/// `captions` job that transcribes a ready moment (its own pool of one, so a long moment's
/// captions never hold up summaries; Whisper is loaded on its first job).
pub fn jobs(voice: Arc<voice::Voice>) -> common::service::Service {
    common::service::Service::pool(
        "summary",
        vec![Arc::new(summary::Summarizer::new(voice.clone()))],
        1,
    )
    .merge(common::service::Service::pool(
        "captions",
        vec![Arc::new(captions::Captioner::new(voice))],
        1,
    ))
}

/// The engines, loaded once at start (model loading is slow). Neural engines are preferred as
/// configured; one that is not installed or does not load gives way to the older engine, with
/// one log line saying which engine serves and why. Errors only when even the fallbacks
/// (eSpeak NG, pocketsphinx, GStreamer) cannot start.
pub fn engines(config: &Config) -> Result<Engines, Error> {
    gst::init()?;
    tts::Espeak::new()?;
    let espeak = tts::Espeak {
        wpm: config.espeak_wpm,
    };
    let tts: Arc<dyn tts::Tts> = match config.tts_engine {
        TtsEngine::EspeakNg => {
            tracing::info!(engine = "espeak-ng", "TTS: eSpeak NG (configured)");
            Arc::new(espeak)
        }
        choice => {
            let voice = config.piper_voice_path();
            let started = std::time::Instant::now();
            match piper::Piper::load(
                &voice,
                &config.onnxruntime_path(),
                threads(config.piper_threads),
                espeak.clone(),
            ) {
                Ok(p) => {
                    tracing::info!(engine = "piper", voice = %voice.display(), load_ms = started.elapsed().as_millis() as u64, "TTS: Piper (Mandarin: eSpeak NG)");
                    Arc::new(p)
                }
                Err(piper::LoadError::Missing(f)) if choice == TtsEngine::Auto => {
                    tracing::info!(engine = "espeak-ng", missing = %f.display(), "TTS: eSpeak NG — Piper is not installed (deploy/install-models.sh installs it)");
                    Arc::new(espeak)
                }
                Err(e) => {
                    tracing::warn!(engine = "espeak-ng", error = %e, "TTS: eSpeak NG — Piper could not be loaded");
                    Arc::new(espeak)
                }
            }
        }
    };
    let sphinx = |why: &str, detail: String| -> Result<Arc<dyn asr::Asr>, Error> {
        let a = asr::PocketSphinx::new(&config.pocketsphinx_model)?;
        tracing::info!(engine = "pocketsphinx", detail = %detail, "ASR: pocketsphinx — {why}");
        Ok(Arc::new(a))
    };
    let asr: Arc<dyn asr::Asr> = match config.asr_engine {
        AsrEngine::Pocketsphinx => sphinx("configured", String::new())?,
        choice => {
            let dir = config.whisper_model_path();
            let started = std::time::Instant::now();
            match whisper::Whisper::load(
                &dir,
                threads(config.whisper_threads),
                &config.whisper_language,
            ) {
                Ok(w) => {
                    tracing::info!(engine = "whisper", model = %dir.display(), load_ms = started.elapsed().as_millis() as u64, "ASR: Whisper");
                    Arc::new(whisper::WhisperAsr::new(w))
                }
                Err(whisper::LoadError::Missing(f)) if choice == AsrEngine::Auto => sphinx(
                    "Whisper is not installed (deploy/install-models.sh installs it)",
                    format!("missing {}", f.display()),
                )?,
                Err(e) => {
                    tracing::warn!(error = %e, "Whisper could not be loaded");
                    sphinx("Whisper could not be loaded", e.to_string())?
                }
            }
        }
    };
    Ok((tts, asr))
}
