//! Whisper: CTranslate2 through `ct2rs` (a Whisper model in CTranslate2 format, e.g. tiny.en,
//! with a `preprocessor_config.json` beside it). The model sees 30 s windows: an answer is
//! transcribed window by window (each window once, when it is full, cut at the quietest moment
//! of its last [`CUT_SEARCH`] so a word is not split), and partial transcripts re-decode only
//! the growing last window, at most once per [`PARTIAL_STEP`] of new audio.
//! English-only models cannot detect a language, so the language is always given.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::asr::{Asr, Error, Recognizer};

/// Samples per model window (30 s at 16 kHz).
pub const WINDOW: usize = 30 * 16_000;
/// New audio needed before a partial transcript is decoded again (1.5 s).
pub const PARTIAL_STEP: usize = 24_000;
/// How far back from a full window the cut looks for a pause (5 s).
pub const CUT_SEARCH: usize = 5 * 16_000;

/// Where to cut a full window: the start of its quietest 50 ms in the last [`CUT_SEARCH`].
fn quiet_cut(window: &[f32]) -> usize {
    const FRAME: usize = 800;
    let from = window.len().saturating_sub(CUT_SEARCH);
    let mut best = (f32::MAX, window.len());
    let mut at = from;
    while at + FRAME <= window.len() {
        let energy: f32 = window[at..at + FRAME].iter().map(|v| v * v).sum();
        if energy < best.0 {
            best = (energy, at + FRAME / 2);
        }
        at += FRAME / 2;
    }
    best.1.max(1)
}

/// Files a model directory must hold.
pub const MODEL_FILES: [&str; 4] = [
    "model.bin",
    "config.json",
    "tokenizer.json",
    "preprocessor_config.json",
];

/// Why a model could not be loaded; names the file.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// A file is missing.
    #[error("{0} is missing")]
    Missing(PathBuf),
    /// CTranslate2 refused the model.
    #[error("{path} could not be loaded as a CTranslate2 Whisper model: {reason}")]
    Model {
        /// The directory.
        path: PathBuf,
        /// Why.
        reason: String,
    },
}

/// A loaded Whisper model.
pub struct Whisper {
    model: ct2rs::Whisper,
    language: String,
    options: ct2rs::WhisperOptions,
}

impl std::fmt::Debug for Whisper {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Whisper")
            .field("language", &self.language)
            .finish_non_exhaustive()
    }
}

impl Whisper {
    /// Loads the model in `dir` with `threads` CPU threads, transcribing `language` (e.g.
    /// `en`), and transcribes a moment of silence to prove it runs.
    pub fn load(dir: &Path, threads: usize, language: &str) -> Result<Whisper, LoadError> {
        for f in MODEL_FILES {
            let p = dir.join(f);
            if !p.is_file() {
                return Err(LoadError::Missing(p));
            }
        }
        let config = ct2rs::Config {
            num_threads_per_replica: threads.max(1),
            // int8 weights, float32 activations: measured here 28 % faster than float32 (RTF
            // 0.38 vs 0.53 on 2 s utterances, 0.12 vs 0.17 on a 10 s answer) with the same WER
            // on the round-trip test (2-4 %); tiny.en ships as float16, which these CPUs do not
            // compute efficiently anyway
            compute_type: ct2rs::ComputeType::INT8_FLOAT32,
            ..Default::default()
        };
        let model = ct2rs::Whisper::new(dir, config).map_err(|e| LoadError::Model {
            path: dir.to_path_buf(),
            reason: format!("{e:#}"),
        })?;
        let w = Whisper {
            model,
            language: language.to_string(),
            options: ct2rs::WhisperOptions {
                beam_size: 1,
                ..Default::default()
            },
        };
        w.decode(&vec![0.0; 8000]).map_err(|e| LoadError::Model {
            path: dir.to_path_buf(),
            reason: e.to_string(),
        })?;
        Ok(w)
    }

    /// Transcribes 16 kHz mono samples in [-1, 1] of any length: longer than a window is
    /// done window by window, each cut at a pause.
    pub fn decode(&self, samples: &[f32]) -> Result<String, Error> {
        let mut parts = Vec::new();
        let mut rest = samples;
        while rest.len() > WINDOW {
            let cut = quiet_cut(&rest[..WINDOW]);
            parts.push(self.decode_window(&rest[..cut])?);
            rest = &rest[cut..];
        }
        parts.push(self.decode_window(rest)?);
        Ok(parts
            .into_iter()
            .filter(|p| !p.is_empty())
            .collect::<Vec<_>>()
            .join(" "))
    }

    /// Transcribes at most one window.
    fn decode_window(&self, samples: &[f32]) -> Result<String, Error> {
        if samples.is_empty() {
            return Ok(String::new());
        }
        let parts = self
            .model
            .generate(samples, Some(&self.language), false, &self.options)
            .map_err(|e| Error::Engine(format!("whisper: {e:#}")))?;
        Ok(clean(&parts.join(" ")))
    }
}

/// A recognised word: its times (seconds from the start of the audio) and how sure we are
/// that it is speech (see [`Whisper::words`]).
#[derive(Debug, Clone, PartialEq)]
pub struct Word {
    /// The word, with its punctuation.
    pub text: String,
    /// Start (seconds).
    pub start: f64,
    /// End (seconds).
    pub end: f64,
    /// 0 to 1: how speech-like the stretch of audio holding the word is.
    pub probability: f64,
}

/// 20 ms at 16 kHz: the frame of [`spans`].
const SPAN_FRAME: usize = 320;
/// A quieter gap shorter than this stays inside a stretch of speech (seconds).
const SPAN_GAP: f64 = 0.3;

/// The stretches of `samples` (16 kHz) loud enough to hold speech, as sample ranges: 20 ms
/// frames above -45 dBFS and within 30 dB of the loudest frame, gaps under [`SPAN_GAP`]
/// bridged, stretches under 0.1 s dropped, none longer than a model window.
pub fn spans(samples: &[f32]) -> Vec<std::ops::Range<usize>> {
    let db: Vec<f64> = samples
        .chunks(SPAN_FRAME)
        .map(|f| {
            let rms =
                (f.iter().map(|v| f64::from(*v).powi(2)).sum::<f64>() / f.len() as f64).sqrt();
            20.0 * rms.max(1e-9).log10()
        })
        .collect();
    let peak = db.iter().copied().fold(f64::MIN, f64::max);
    let floor = (-45.0f64).max(peak - 30.0);
    let gap = (SPAN_GAP * 50.0) as usize;
    let mut out: Vec<std::ops::Range<usize>> = Vec::new();
    let mut run: Option<(usize, usize)> = None; // frames [start, end)
    for (i, d) in db.iter().enumerate() {
        if *d < floor {
            continue;
        }
        run = match run {
            Some((a, e)) if i - e <= gap => Some((a, i + 1)),
            Some((a, e)) => {
                out.push(a * SPAN_FRAME..e * SPAN_FRAME);
                Some((i, i + 1))
            }
            None => Some((i, i + 1)),
        };
    }
    if let Some((a, e)) = run {
        out.push(a * SPAN_FRAME..(e * SPAN_FRAME).min(samples.len()));
    }
    out.retain(|r| r.len() >= 1_600);
    // a stretch longer than a window is cut at its quietest moment
    let mut fitted = Vec::new();
    for mut r in out {
        while r.len() > WINDOW {
            let cut = r.start + quiet_cut(&samples[r.start..r.start + WINDOW]);
            fitted.push(r.start..cut);
            r.start = cut;
        }
        fitted.push(r);
    }
    fitted
}

/// How speech-like a stretch is, 0 to 1: speech rises and falls with its syllables (the
/// 20 ms loudness varies by half its mean or more), a tone or a drone barely does.
pub fn speechlike(samples: &[f32]) -> f64 {
    let rms: Vec<f64> = samples
        .chunks(SPAN_FRAME)
        .map(|f| (f.iter().map(|v| f64::from(*v).powi(2)).sum::<f64>() / f.len() as f64).sqrt())
        .collect();
    let n = rms.len().max(1) as f64;
    let mean = rms.iter().sum::<f64>() / n;
    if mean <= 0.0 {
        return 0.0;
    }
    let sd = (rms.iter().map(|r| (r - mean).powi(2)).sum::<f64>() / n).sqrt();
    (sd / mean / 0.5).clamp(0.0, 1.0)
}

impl Whisper {
    /// Transcribes 16 kHz mono samples of any length into timed words, without non-speech
    /// tags (`[BLANK_AUDIO]`, `(music)`, `♪`). The loud stretches ([`spans`]) are decoded one
    /// by one; a word's times are its share of its stretch by length. (Whisper's own word
    /// timestamps are not used: with English-only models CTranslate2's timestamped decoding
    /// returns no text here, `<|0.00|>` and the end.) A stretch's [`speechlike`] score is the
    /// probability of its words; one under 0.2 (a tone) is not decoded at all.
    pub fn words(&self, samples: &[f32]) -> Result<Vec<Word>, Error> {
        let mut out = Vec::new();
        for r in spans(samples) {
            let speech = speechlike(&samples[r.clone()]);
            if speech < 0.2 {
                continue;
            }
            // a little context either side helps the first and last words
            let pad = 1_600;
            let from = r.start.saturating_sub(pad);
            let to = (r.end + pad).min(samples.len());
            let text = self.decode_window(&samples[from..to])?;
            let words: Vec<&str> = text.split_whitespace().collect();
            let (start, end) = (r.start as f64 / 16_000.0, r.end as f64 / 16_000.0);
            let total: usize = words.iter().map(|w| w.chars().count() + 1).sum();
            let mut at = 0usize;
            let mut timed = Vec::with_capacity(words.len());
            for w in words {
                let len = w.chars().count() + 1;
                let share = |n: usize| start + (end - start) * n as f64 / total.max(1) as f64;
                timed.push(Word {
                    text: w.to_string(),
                    start: share(at),
                    end: share(at + len - 1),
                    probability: speech,
                });
                at += len;
            }
            out.extend(speech_words(timed.into_iter()));
        }
        Ok(out)
    }
}

/// The words that are speech: bracketed tags (which may span words, `(upbeat music)`) and
/// music signs are dropped.
fn speech_words(words: impl Iterator<Item = Word>) -> Vec<Word> {
    let mut depth = 0usize;
    let mut out = Vec::new();
    for mut w in words {
        let mut text = String::new();
        for c in w.text.chars() {
            match c {
                '[' | '(' => depth += 1,
                ']' | ')' => depth = depth.saturating_sub(1),
                '♪' | '♫' => {}
                _ if depth == 0 => text.push(c),
                _ => {}
            }
        }
        let text = text.trim();
        if text.chars().any(char::is_alphanumeric) {
            w.text = text.to_string();
            out.push(w);
        }
    }
    out
}

/// Whisper's text, tidied: single spaces, no bracketed non-speech tags (`[BLANK_AUDIO]`,
/// `(music)`).
fn clean(text: &str) -> String {
    let mut out = String::new();
    let mut depth = 0usize;
    for c in text.chars() {
        match c {
            '[' | '(' => depth += 1,
            ']' | ')' => depth = depth.saturating_sub(1),
            _ if depth == 0 => out.push(c),
            _ => {}
        }
    }
    out.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// The Whisper engine.
#[derive(Debug, Clone)]
pub struct WhisperAsr {
    model: Arc<Whisper>,
}

impl WhisperAsr {
    /// Wraps a loaded model.
    pub fn new(model: Whisper) -> WhisperAsr {
        WhisperAsr {
            model: Arc::new(model),
        }
    }
}

fn to_f32(pcm: &[i16]) -> impl Iterator<Item = f32> + '_ {
    pcm.iter().map(|s| f32::from(*s) / 32768.0)
}

struct Utterance {
    model: Arc<Whisper>,
    /// Samples of the window being filled.
    window: Vec<f32>,
    /// Text of the full windows so far.
    done: Vec<String>,
    /// Window length at the last partial decode, and its text.
    partial_at: usize,
    partial: String,
}

impl Utterance {
    fn text_with(&self, tail: &str) -> String {
        let mut parts: Vec<&str> = self.done.iter().map(String::as_str).collect();
        parts.push(tail);
        parts
            .into_iter()
            .filter(|p| !p.is_empty())
            .collect::<Vec<_>>()
            .join(" ")
    }
}

impl Recognizer for Utterance {
    fn feed(&mut self, pcm: &[i16]) -> Result<(), Error> {
        let mut rest = pcm;
        while !rest.is_empty() {
            let room = WINDOW - self.window.len();
            let (now, later) = rest.split_at(room.min(rest.len()));
            self.window.extend(to_f32(now));
            rest = later;
            if self.window.len() == WINDOW {
                // decode up to a pause; what follows it starts the next window
                let cut = quiet_cut(&self.window);
                let text = self.model.decode_window(&self.window[..cut])?;
                self.done.push(text);
                self.window.drain(..cut);
                self.partial_at = 0;
                self.partial.clear();
            }
        }
        Ok(())
    }

    fn partial(&mut self) -> String {
        if self.window.len() >= self.partial_at + PARTIAL_STEP {
            if let Ok(t) = self.model.decode_window(&self.window) {
                self.partial = t;
            }
            self.partial_at = self.window.len();
        }
        self.text_with(&self.partial)
    }

    fn finish(self: Box<Self>) -> Result<String, Error> {
        let tail = if self.window.len() == self.partial_at && self.partial_at > 0 {
            self.partial.clone()
        } else {
            self.model.decode_window(&self.window)?
        };
        Ok(self.text_with(&tail))
    }
}

impl Asr for WhisperAsr {
    fn name(&self) -> &'static str {
        "whisper"
    }

    fn start(&self) -> Result<Box<dyn Recognizer>, Error> {
        Ok(Box::new(Utterance {
            model: self.model.clone(),
            window: Vec::with_capacity(WINDOW),
            done: Vec::new(),
            partial_at: 0,
            partial: String::new(),
        }))
    }

    fn transcribe(&self, pcm: &[i16]) -> Result<String, Error> {
        let samples: Vec<f32> = to_f32(pcm).collect();
        self.model.decode(&samples)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `secs` of a 200 Hz tone whose loudness rises and falls `rate` times a second (0: steady).
    fn tone(secs: f64, rate: f64) -> Vec<f32> {
        (0..(secs * 16_000.0) as usize)
            .map(|i| {
                let t = i as f64 / 16_000.0;
                let env = if rate > 0.0 {
                    (0.5 + 0.5 * (t * rate * std::f64::consts::TAU).sin()).powi(2)
                } else {
                    1.0
                };
                (0.3 * env * (t * 200.0 * std::f64::consts::TAU).sin()) as f32
            })
            .collect()
    }

    #[test]
    fn loud_stretches_are_found_between_pauses() {
        let mut a = vec![0.0f32; 16_000];
        a.extend(tone(1.5, 4.0));
        a.extend(vec![0.0; 8_000]); // a 0.5 s pause ends a stretch
        a.extend(tone(1.0, 4.0));
        a.extend(vec![0.0; 16_000]);
        let s = spans(&a);
        assert_eq!(s.len(), 2, "{s:?}");
        let secs = |n: usize| n as f64 / 16_000.0;
        assert!((secs(s[0].start) - 1.0).abs() < 0.15, "{s:?}");
        assert!((secs(s[1].start) - 3.0).abs() < 0.15, "{s:?}");
        assert!((secs(s[1].end) - 4.0).abs() < 0.15, "{s:?}");
        assert!(spans(&vec![0.0; 32_000]).is_empty());
        // longer than a window: cut into windows
        let long = spans(&tone(70.0, 4.0));
        assert!(
            long.len() >= 3 && long.iter().all(|r| r.len() <= WINDOW),
            "{long:?}"
        );
    }

    #[test]
    fn a_steady_tone_is_not_speechlike_and_a_syllable_rhythm_is() {
        assert!(speechlike(&tone(2.0, 0.0)) < 0.2);
        assert!(speechlike(&tone(2.0, 4.0)) > 0.5);
        assert_eq!(speechlike(&vec![0.0; 1000]), 0.0);
    }

    #[test]
    fn windows_are_cut_at_the_quietest_moment_near_their_end() {
        // loud everywhere but a 0.2 s pause 2 s before the end
        let mut w = vec![0.5f32; WINDOW];
        let pause = WINDOW - 32_000;
        for v in &mut w[pause..pause + 3200] {
            *v = 0.0;
        }
        let cut = quiet_cut(&w);
        assert!(
            (pause..pause + 3200).contains(&cut),
            "{cut} not in the pause at {pause}"
        );
        // a pause earlier than the search range is not used
        let mut w = vec![0.5f32; WINDOW];
        for v in &mut w[1000..20_000] {
            *v = 0.0;
        }
        assert!(quiet_cut(&w) >= WINDOW - CUT_SEARCH);
    }

    #[test]
    fn timed_words_lose_tags_even_across_words() {
        let w = |t: &str| Word {
            text: t.into(),
            start: 0.0,
            end: 0.1,
            probability: 0.9,
        };
        let kept: Vec<String> = speech_words(
            ["(upbeat", "music)", "Hello", "♪", "world.", "[BLANK_AUDIO]"]
                .into_iter()
                .map(w),
        )
        .into_iter()
        .map(|w| w.text)
        .collect();
        assert_eq!(kept, ["Hello", "world."]);
    }

    #[test]
    fn non_speech_tags_are_dropped() {
        assert_eq!(clean(" Hello  world. [BLANK_AUDIO]"), "Hello world.");
        assert_eq!(clean("(music) Yes (laughs) we did"), "Yes we did");
        assert_eq!(clean("[unclosed"), "");
    }
}
