//! The `captions` job: a ready moment's own speech becomes a WebVTT subtitle rendition.
//!
//! The transcoder keeps the moment's audio as 16 kHz mono while it makes the ladder (decoded
//! once) and leaves it at `speech/{id}.wav`, queueing this job before the moment is ready. The
//! job waits for `ready` — captions never delay it — then transcribes with Whisper into timed
//! words ([`crate::whisper::Whisper::words`]), groups them into cues ([`cues`], common caption
//! practice), decides whether there is speech at all ([`verdict`]), and publishes
//! `hls/{id}/captions/{lang}.vtt`, its media playlist and the master again with a `SUBTITLES`
//! group ([`packager::publish::captions`]). The moment's record then says `captions` (`ready`,
//! or `none: …` with the reason) and carries the transcript, which round 1 of the Q&A quotes.
//!
//! Only Whisper gives word times here: with pocketsphinx configured, or Whisper missing, the
//! moment says `none: …` and why. The model is loaded on the first job, not at start, so a
//! worker that never captions never holds it.

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use common::moment::{self, State};
use common::queue::{Context as JobContext, Defer, Handler, Job, JobError};
use common::store::Key;
use packager::playlist::Caption;
use serde_json::json;

use crate::voice::Voice;
use crate::whisper::{Whisper, Word};

/// Longest caption line (characters).
pub const LINE_CHARS: usize = 42;
/// Lines per cue.
pub const MAX_LINES: usize = 2;
/// Shortest and longest cue (seconds).
pub const MIN_CUE: f64 = 1.0;
/// Longest cue (seconds).
pub const MAX_CUE: f64 = 7.0;
/// A silence between words this long ends a cue (seconds).
pub const PAUSE: f64 = 0.6;
/// Below this mean word probability the words are not presented as captions.
pub const MIN_CONFIDENCE: f64 = 0.45;

/// Groups timed words into cues: at most two lines of about [`LINE_CHARS`], each cue 1–7 s,
/// a new cue at a pause of [`PAUSE`] or after a sentence's end (once the cue has lasted
/// [`MIN_CUE`]). Short cues are held up to 1 s when the next one leaves room; none goes past
/// `duration` or overlaps the next.
pub fn cues(words: &[Word], duration: f64) -> Vec<Caption> {
    let mut groups: Vec<Vec<&Word>> = Vec::new();
    let mut current: Vec<&Word> = Vec::new();
    for w in words {
        if let (Some(first), Some(last)) = (current.first(), current.last()) {
            let mut texts: Vec<&str> = current.iter().map(|w| w.text.as_str()).collect();
            texts.push(&w.text);
            let fits = lines(&texts)
                .iter()
                .all(|l| l.chars().count() <= LINE_CHARS);
            let sentence_end = last.text.ends_with(['.', '?', '!']);
            let long_enough = last.end - first.start >= MIN_CUE;
            if !fits
                || w.end - first.start > MAX_CUE
                || w.start - last.end >= PAUSE
                || (sentence_end && long_enough)
            {
                groups.push(std::mem::take(&mut current));
            }
        }
        current.push(w);
    }
    if !current.is_empty() {
        groups.push(current);
    }
    let mut out: Vec<Caption> = groups
        .iter()
        .map(|g| Caption {
            start: g[0].start.max(0.0),
            end: g[g.len() - 1].end,
            lines: lines(&g.iter().map(|w| w.text.as_str()).collect::<Vec<_>>()),
        })
        .collect();
    let limit = if duration > 0.0 { duration } else { f64::MAX };
    for i in 0..out.len() {
        let next = out.get(i + 1).map_or(limit, |n| n.start);
        let c = &mut out[i];
        let want = c.end.max(c.start + MIN_CUE);
        c.end = want.min(next).min(limit).max(c.end.min(limit));
        if c.end <= c.start {
            c.end = (c.start + 0.1).min(limit.max(c.start + 0.1));
        }
    }
    out
}

/// The words as one or two lines of at most [`LINE_CHARS`] where they fit, broken where the
/// two lines are closest in length.
fn lines(words: &[&str]) -> Vec<String> {
    let all = words.join(" ");
    if all.chars().count() <= LINE_CHARS || words.len() < 2 {
        return vec![all];
    }
    let mut best = (usize::MAX, 1);
    for k in 1..words.len() {
        let (a, b) = (words[..k].join(" "), words[k..].join(" "));
        let (la, lb) = (a.chars().count(), b.chars().count());
        let over = la.saturating_sub(LINE_CHARS) + lb.saturating_sub(LINE_CHARS);
        let score = over * 1000 + la.abs_diff(lb);
        if score < best.0 {
            best = (score, k);
        }
    }
    vec![words[..best.1].join(" "), words[best.1..].join(" ")]
}

/// Whether timed words are speech worth captioning: `Err(reason)` for no words, for too
/// little audio energy to be speech (a silent track), or for words the model itself doubts
/// (a tone or music heard as words: mean probability under [`MIN_CONFIDENCE`]).
pub fn verdict(words: &[Word], samples: &[f32]) -> Result<(), String> {
    let voiced = voiced_fraction(samples);
    if voiced < 0.02 {
        return Err("no speech (the audio is silent)".into());
    }
    if words.is_empty() {
        return Err("no speech".into());
    }
    let mean = words.iter().map(|w| w.probability).sum::<f64>() / words.len() as f64;
    if mean < MIN_CONFIDENCE {
        return Err(format!(
            "no speech recognised with confidence (mean word probability {mean:.2})"
        ));
    }
    Ok(())
}

/// The fraction of 20 ms frames louder than -45 dBFS.
fn voiced_fraction(samples: &[f32]) -> f64 {
    const FRAME: usize = 320;
    let frames = samples.len() / FRAME;
    if frames == 0 {
        return 0.0;
    }
    let loud = samples
        .chunks_exact(FRAME)
        .filter(|f| {
            let rms = (f.iter().map(|v| v * v).sum::<f32>() / FRAME as f32).sqrt();
            rms > 0.0056
        })
        .count();
    loud as f64 / frames as f64
}

/// The handler of `captions` jobs.
pub struct Captioner {
    voice: Arc<Voice>,
    model: tokio::sync::OnceCell<Result<Arc<Whisper>, String>>,
}

impl Captioner {
    /// A handler over the voice service's database, store and engine settings.
    pub fn new(voice: Arc<Voice>) -> Captioner {
        Captioner {
            voice,
            model: tokio::sync::OnceCell::new(),
        }
    }

    async fn model(&self) -> Result<Arc<Whisper>, String> {
        self.model
            .get_or_init(|| async {
                let c = self.voice.config.clone();
                if c.asr_engine == crate::AsrEngine::Pocketsphinx {
                    return Err("captions need Whisper's word times; the configured ASR engine is pocketsphinx".to_string());
                }
                let dir = c.whisper_model_path();
                let threads = crate::threads(c.whisper_threads);
                let loaded = tokio::task::spawn_blocking(move || {
                    Whisper::load(&dir, threads, &c.whisper_language)
                })
                .await;
                match loaded {
                    Ok(Ok(w)) => Ok(Arc::new(w)),
                    Ok(Err(e)) => {
                        tracing::warn!(error = %e, "captions: Whisper could not be loaded");
                        Err(format!("Whisper could not be loaded ({e})"))
                    }
                    Err(e) => Err(format!("loading Whisper: {e}")),
                }
            })
            .await
            .clone()
    }

    async fn record(&self, id: &str, value: serde_json::Value) -> Result<(), JobError> {
        moment::set_published_field(&self.voice.db, id, "captions", value)
            .await
            .map(|_| ())
            .map_err(|e| JobError::retry(format!("recording the captions: {e}")))
    }

    async fn forget_speech(&self, key: &Key) {
        if let Err(e) = self.voice.store.delete(key).await {
            tracing::debug!(key = %key, error = %e, "could not remove the speech audio");
        }
    }
}

/// Reads the transcoder's 16 kHz mono WAV (16-bit PCM) as samples in [-1, 1].
fn read_wav(data: &[u8]) -> Result<Vec<f32>, String> {
    let (channels, rate, at) =
        crate::audio::wav_header(data).ok_or("the speech audio is not a PCM WAV file")?;
    if channels != 1 || rate != 16_000 {
        return Err(format!(
            "the speech audio is {channels} channel(s) at {rate} Hz, not 16 kHz mono"
        ));
    }
    Ok(data[at..]
        .chunks_exact(2)
        .map(|b| f32::from(i16::from_le_bytes([b[0], b[1]])) / 32768.0)
        .collect())
}

#[async_trait]
impl Handler for Captioner {
    fn kind(&self) -> &'static str {
        moment::CAPTIONS_KIND
    }

    fn time_limit(&self) -> Duration {
        Duration::from_secs(1800)
    }

    async fn run(&self, job: &Job, _ctx: &JobContext) -> Result<(), JobError> {
        let Some(id) = job.payload["moment"].as_str() else {
            return Err(JobError::permanent("job payload names no moment"));
        };
        let key =
            Key::new(moment::speech_key(id)).map_err(|e| JobError::permanent(e.to_string()))?;
        let Some(m) = moment::get(&self.voice.db, id)
            .await
            .map_err(|e| JobError::retry(e.to_string()))?
        else {
            self.forget_speech(&key).await;
            return Ok(());
        };
        match m.state {
            State::Ready => {}
            State::Failed => {
                self.forget_speech(&key).await;
                return Ok(());
            }
            // queued just before `ready` is written: wait for it, never delay it
            _ => {
                return Err(JobError::defer(
                    "waiting for the moment to be ready",
                    Defer::For(Duration::from_millis(500)),
                ));
            }
        }
        if m.renditions["captions"]["status"] != "pending" {
            // done already (a second run after the first finished)
            self.forget_speech(&key).await;
            return Ok(());
        }
        let model = match self.model().await {
            Ok(m) => m,
            Err(why) => {
                self.record(id, json!({ "status": format!("none: {why}") }))
                    .await?;
                self.forget_speech(&key).await;
                return Ok(());
            }
        };
        let data = match self.voice.store.get_bytes(&key, 64 << 20).await {
            Ok(d) => d,
            Err(common::store::Error::NotFound(_)) => {
                self.record(id, json!({ "status": "none: the moment's audio is gone" }))
                    .await?;
                return Ok(());
            }
            Err(e) => return Err(JobError::retry(format!("reading the speech audio: {e}"))),
        };
        let samples = read_wav(&data).map_err(JobError::permanent)?;
        let duration = m.renditions["duration"]
            .as_f64()
            .unwrap_or(samples.len() as f64 / 16_000.0);
        let started = Instant::now();
        let (words, samples) = tokio::task::spawn_blocking(move || {
            let words = model.words(&samples);
            (words, samples)
        })
        .await
        .map_err(|e| JobError::retry(format!("captions thread: {e}")))?;
        let words = words.map_err(|e| JobError::retry(e.to_string()))?;
        let audio_secs = samples.len() as f64 / 16_000.0;
        let rtf = started.elapsed().as_secs_f64() / audio_secs.max(1e-3);
        let language = self.voice.config.whisper_language.clone();
        let value = match verdict(&words, &samples) {
            Err(why) => json!({ "status": format!("none: {why}"), "rtf": round3(rtf) }),
            Ok(()) => {
                let cues = cues(&words, duration);
                let vtt = packager::publish::captions(
                    &self.voice.store,
                    id,
                    &language,
                    language_name(&language),
                    &cues,
                    duration,
                )
                .await
                .map_err(|e| JobError::retry(e.to_string()))?;
                let transcript = words
                    .iter()
                    .map(|w| w.text.as_str())
                    .collect::<Vec<_>>()
                    .join(" ");
                json!({
                    "status": "ready",
                    "language": language,
                    "vtt_key": vtt,
                    "cues": cues.len(),
                    "transcript": transcript,
                    "rtf": round3(rtf),
                })
            }
        };
        tracing::info!(moment = %id, status = %value["status"], rtf, words = words.len(), "captions");
        self.record(id, value).await?;
        self.forget_speech(&key).await;
        Ok(())
    }

    async fn dead(&self, job: &Job, error: &str) {
        if let Some(id) = job.payload["moment"].as_str() {
            let status = json!({ "status": format!("none: captions failed ({error})") });
            if let Err(e) =
                moment::set_published_field(&self.voice.db, id, "captions", status).await
            {
                tracing::warn!(moment = %id, error = %e, "could not record the captions' failure");
            }
            if let Ok(key) = Key::new(moment::speech_key(id)) {
                self.forget_speech(&key).await;
            }
        }
    }
}

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

/// The `NAME` of a subtitle rendition in a language.
fn language_name(code: &str) -> &'static str {
    match code {
        "en" => "English",
        "zh" => "中文",
        "es" => "Español",
        "fr" => "Français",
        "de" => "Deutsch",
        _ => "Captions",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn word(text: &str, start: f64, end: f64) -> Word {
        Word {
            text: text.into(),
            start,
            end,
            probability: 0.9,
        }
    }

    /// Words of `text`, one every 0.3 s from `at`.
    fn spoken(text: &str, at: f64) -> Vec<Word> {
        text.split_whitespace()
            .enumerate()
            .map(|(i, w)| word(w, at + i as f64 * 0.3, at + i as f64 * 0.3 + 0.25))
            .collect()
    }

    #[test]
    fn cues_split_at_sentence_ends_and_pauses() {
        let mut words = spoken("We went to the harbour. It was cold.", 1.0);
        words.extend(spoken("Then we ate noodles", 5.0));
        let c = cues(&words, 10.0);
        let texts: Vec<String> = c.iter().map(|c| c.lines.join(" ")).collect();
        assert_eq!(
            texts,
            [
                "We went to the harbour.",
                "It was cold.",
                "Then we ate noodles"
            ]
        );
        assert!((c[0].start - 1.0).abs() < 1e-9);
        // the short second cue is held until 1 s, the pause leaves room
        assert!((c[1].end - c[1].start - MIN_CUE).abs() < 1e-9, "{c:?}");
        for pair in c.windows(2) {
            assert!(pair[0].end <= pair[1].start);
        }
    }

    #[test]
    fn cues_keep_to_two_lines_of_42_and_seven_seconds() {
        let text = "this is a long stream of words that nobody ever ends with a full stop \
                    because the speaker keeps talking about the noodles and the harbour and \
                    the boats and everything else that happened on that long day";
        let words = spoken(text, 0.0);
        let c = cues(&words, 100.0);
        assert!(c.len() >= 3);
        for cue in &c {
            assert!(cue.lines.len() <= MAX_LINES, "{cue:?}");
            assert!(
                cue.lines.iter().all(|l| l.chars().count() <= LINE_CHARS),
                "{cue:?}"
            );
            assert!(cue.end - cue.start <= MAX_CUE + 1e-9, "{cue:?}");
        }
        let back: Vec<String> = c.iter().flat_map(|c| c.lines.clone()).collect();
        assert_eq!(
            back.join(" "),
            text.split_whitespace().collect::<Vec<_>>().join(" ")
        );
    }

    #[test]
    fn cues_end_by_the_moment_s_end() {
        let c = cues(&spoken("Bye.", 4.8), 5.0);
        assert_eq!(c.len(), 1);
        assert!(c[0].end <= 5.0 && c[0].end > c[0].start, "{c:?}");
    }

    #[test]
    fn silence_tones_and_doubtful_words_are_not_captions() {
        let silent = vec![0.0f32; 32_000];
        assert!(
            verdict(&spoken("hello there", 0.0), &silent)
                .unwrap_err()
                .contains("silent")
        );
        let loud: Vec<f32> = (0..32_000).map(|i| (i as f32 * 0.2).sin() * 0.3).collect();
        assert_eq!(verdict(&[], &loud).unwrap_err(), "no speech");
        let mut doubtful = spoken("you you", 0.0);
        for w in &mut doubtful {
            w.probability = 0.2;
        }
        assert!(
            verdict(&doubtful, &loud)
                .unwrap_err()
                .contains("confidence")
        );
        assert!(verdict(&spoken("we went to the harbour", 0.0), &loud).is_ok());
    }

    #[test]
    fn speech_audio_must_be_16k_mono_wav() {
        let wav = crate::audio::wav_bytes(&[0, 16384, -16384], 16_000);
        assert_eq!(read_wav(&wav).unwrap(), vec![0.0, 0.5, -0.5]);
        let stereo = crate::audio::wav_bytes(&[0; 4], 48_000);
        assert!(read_wav(&stereo).unwrap_err().contains("48000 Hz"));
        assert!(read_wav(b"not a wav").is_err());
    }
}
