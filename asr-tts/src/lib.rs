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
pub mod espeak;
pub mod gst;
pub mod llm;
pub mod resample;
pub mod session;
pub mod sphinx;
pub mod splitter;
pub mod store;
pub mod summary;
pub mod tts;
pub mod voice;

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
    /// Longest sentence handed to TTS.
    pub max_sentence_chars: usize,
    /// Speaking rate of eSpeak NG (words per minute).
    pub espeak_wpm: i32,
    /// Directory of the pocketsphinx model.
    pub pocketsphinx_model: PathBuf,
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
            max_sentence_chars: 180,
            espeak_wpm: 165,
            pocketsphinx_model: PathBuf::from(sphinx::DEFAULT_MODEL_DIR),
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

/// The engines this build has, loaded once (model loading is slow; do it at start).
pub fn engines(config: &Config) -> Result<Engines, Error> {
    let tts = tts::Espeak {
        wpm: config.espeak_wpm,
    };
    tts::Espeak::new()?;
    gst::init()?;
    let asr = asr::PocketSphinx::new(&config.pocketsphinx_model)?;
    tracing::info!(
        tts = "espeak-ng",
        asr = "pocketsphinx",
        "voice engines ready"
    );
    Ok((Arc::new(tts), Arc::new(asr)))
}
