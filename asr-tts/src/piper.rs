//! Piper: neural (VITS) voices run with ONNX Runtime through `ort`, which loads
//! `libonnxruntime` dynamically (one environment per process). Text becomes IPA phonemes with
//! libespeak-ng (as Piper does), phonemes become ids through the voice's `phoneme_id_map`
//! (`^ _ p1 _ p2 _ … _ $`), and the model turns ids into 16-bit samples at the voice's rate.
//! Text the voice cannot say (another script, characters without ids) is skipped, not fatal;
//! Mandarin goes to eSpeak NG.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};

use ort::session::Session;
use ort::value::Tensor;
use serde::Deserialize;
use unicode_normalization::UnicodeNormalization;

use crate::espeak;
use crate::tts::{Error, Espeak, Lang, Speech, Tts, detect};

/// Why a voice could not be loaded; names the file.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// A file is missing.
    #[error("{0} is missing")]
    Missing(PathBuf),
    /// The voice description is not what Piper writes.
    #[error("{path} is not a Piper voice description: {reason}")]
    BadConfig {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// ONNX Runtime could not be loaded.
    #[error("ONNX Runtime could not be loaded from {path}: {reason}")]
    Runtime {
        /// The library.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// The model could not be loaded or run.
    #[error("{path} could not be loaded as a voice model: {reason}")]
    Model {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
}

#[derive(Debug, Deserialize)]
struct VoiceJson {
    audio: AudioJson,
    espeak: EspeakJson,
    inference: InferenceJson,
    phoneme_id_map: HashMap<String, Vec<i64>>,
    #[serde(default)]
    num_speakers: u32,
}

#[derive(Debug, Deserialize)]
struct AudioJson {
    sample_rate: u32,
}

#[derive(Debug, Deserialize)]
struct EspeakJson {
    voice: String,
}

#[derive(Debug, Deserialize)]
struct InferenceJson {
    noise_scale: f32,
    length_scale: f32,
    noise_w: f32,
}

/// The process's ONNX Runtime environment: the first library path wins.
static RUNTIME: OnceLock<Result<ort::environment::Environment, String>> = OnceLock::new();

fn runtime(lib: &Path) -> Result<&'static ort::environment::Environment, LoadError> {
    RUNTIME
        .get_or_init(|| {
            let builder = ort::init_from(lib).map_err(|e| e.to_string())?;
            builder
                .with_name("moments")
                .build()
                .map_err(|e| e.to_string())
        })
        .as_ref()
        .map_err(|reason| LoadError::Runtime {
            path: lib.to_path_buf(),
            reason: reason.clone(),
        })
}

/// A loaded Piper voice (English; other scripts go to eSpeak NG).
pub struct Piper {
    session: Mutex<Session>,
    ids: HashMap<char, Vec<i64>>,
    rate: u32,
    scales: [f32; 3],
    espeak_voice: String,
    fallback: Espeak,
}

impl std::fmt::Debug for Piper {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Piper")
            .field("rate", &self.rate)
            .field("espeak_voice", &self.espeak_voice)
            .finish_non_exhaustive()
    }
}

impl Piper {
    /// Loads the voice `model` (`.onnx`; its description is `model` + `.json`) with ONNX
    /// Runtime from `runtime_lib`, using `threads` intra-op threads, and speaks one sentence to
    /// prove it works. `fallback` speaks what this voice cannot (Mandarin).
    pub fn load(
        model: &Path,
        runtime_lib: &Path,
        threads: usize,
        fallback: Espeak,
    ) -> Result<Piper, LoadError> {
        let json_path = PathBuf::from(format!("{}.json", model.display()));
        for p in [model, json_path.as_path(), runtime_lib] {
            if !p.is_file() {
                return Err(LoadError::Missing(p.to_path_buf()));
            }
        }
        let bad = |reason: String| LoadError::BadConfig {
            path: json_path.clone(),
            reason,
        };
        let text = std::fs::read_to_string(&json_path).map_err(|e| bad(e.to_string()))?;
        let desc: VoiceJson = serde_json::from_str(&text).map_err(|e| bad(e.to_string()))?;
        if desc.num_speakers > 1 {
            return Err(bad(format!(
                "{} speakers; only single-speaker voices are supported",
                desc.num_speakers
            )));
        }
        let mut ids = HashMap::new();
        for (k, v) in desc.phoneme_id_map {
            let mut chars = k.chars();
            match (chars.next(), chars.next()) {
                (Some(c), None) => {
                    ids.insert(c, v);
                }
                _ => return Err(bad(format!("phoneme {k:?} is not one character"))),
            }
        }
        for required in ['^', '_', '$'] {
            if !ids.contains_key(&required) {
                return Err(bad(format!("phoneme_id_map has no {required:?}")));
            }
        }
        let env = runtime(runtime_lib)?;
        let model_err = |reason: String| LoadError::Model {
            path: model.to_path_buf(),
            reason,
        };
        let session = Session::builder(env)
            .map_err(|e| model_err(e.to_string()))?
            .with_intra_threads(threads.max(1))
            .map_err(|e| model_err(e.to_string()))?
            .commit_from_file(model)
            .map_err(|e| model_err(e.to_string()))?;
        let piper = Piper {
            session: Mutex::new(session),
            ids,
            rate: desc.audio.sample_rate,
            scales: [
                desc.inference.noise_scale,
                desc.inference.length_scale,
                desc.inference.noise_w,
            ],
            espeak_voice: desc.espeak.voice,
            fallback,
        };
        let probe = piper
            .speak("Hello.")
            .map_err(|e| model_err(e.to_string()))?;
        if probe.samples.is_empty() {
            return Err(model_err("it produced no audio".into()));
        }
        Ok(piper)
    }

    /// The phoneme ids of `text` (`^ _ p1 _ p2 _ … _ $`); phonemes without an id are skipped.
    pub fn phoneme_ids(&self, text: &str) -> Result<Vec<i64>, Error> {
        let phonemes = phonemize(text, &self.espeak_voice)?;
        let pad = &self.ids[&'_'];
        let mut out = self.ids[&'^'].clone();
        out.extend(pad);
        for c in phonemes.nfd() {
            if let Some(id) = self.ids.get(&c) {
                out.extend(id);
                out.extend(pad);
            }
        }
        out.extend(&self.ids[&'$']);
        Ok(out)
    }

    fn speak(&self, text: &str) -> Result<Speech, Error> {
        let ids = self.phoneme_ids(text)?;
        if ids.len() <= 3 {
            // nothing sayable: ^ _ $
            return Ok(Speech {
                samples: Vec::new(),
                rate: self.rate,
            });
        }
        let engine = |e: ort::Error| Error::Engine(format!("piper: {e}"));
        let n = ids.len();
        let input = Tensor::from_array(([1usize, n], ids)).map_err(engine)?;
        let lengths = Tensor::from_array(([1usize], vec![n as i64])).map_err(engine)?;
        let scales = Tensor::from_array(([3usize], self.scales.to_vec())).map_err(engine)?;
        let mut session = self.session.lock().unwrap_or_else(|e| e.into_inner());
        let outputs = session
            .run(ort::inputs!["input" => input, "input_lengths" => lengths, "scales" => scales])
            .map_err(engine)?;
        let (_, audio) = outputs[0].try_extract_tensor::<f32>().map_err(engine)?;
        Ok(Speech {
            samples: normalize(audio),
            rate: self.rate,
        })
    }
}

/// Peak-normalises float audio to 16-bit (as Piper does).
fn normalize(audio: &[f32]) -> Vec<i16> {
    let peak = audio.iter().fold(0.0f32, |m, s| m.max(s.abs())).max(0.01);
    let gain = 32767.0 / peak;
    audio
        .iter()
        .map(|s| (s * gain).clamp(-32768.0, 32767.0) as i16)
        .collect()
}

/// Clause punctuation Piper keeps in the phoneme string (CJK forms mapped to ASCII).
fn clause_mark(c: char) -> Option<char> {
    match c {
        '.' | '。' | '…' => Some('.'),
        ',' | '，' | '、' => Some(','),
        '?' | '？' => Some('?'),
        '!' | '！' => Some('!'),
        ';' | '；' => Some(';'),
        ':' | '：' => Some(':'),
        _ => None,
    }
}

/// Splits `text` into clauses at punctuation followed by a space (or the end), keeping each
/// clause's mark: `3.14` and `e.g.` inside a clause stay whole.
fn clauses(text: &str) -> Vec<(String, Option<char>)> {
    let chars: Vec<char> = text.chars().collect();
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        let next = chars.get(i + 1).copied();
        match clause_mark(c) {
            Some(mark)
                if next.is_none_or(|n| {
                    n.is_whitespace() || clause_mark(n).is_some() || !n.is_ascii()
                }) =>
            {
                // a run of marks ("?!", "...") counts once: the last one
                let mut mark = mark;
                while let Some(m) = chars.get(i + 1).copied().and_then(clause_mark) {
                    mark = m;
                    i += 1;
                }
                if !cur.trim().is_empty() {
                    out.push((cur.trim().to_string(), Some(mark)));
                }
                cur.clear();
            }
            _ => cur.push(c),
        }
        i += 1;
    }
    if !cur.trim().is_empty() {
        out.push((cur.trim().to_string(), None));
    }
    out
}

/// IPA phonemes for `text`, clause by clause, with the clause punctuation put back (Piper's
/// voices were trained with it: it shapes pauses and intonation).
fn phonemize(text: &str, voice: &str) -> Result<String, Error> {
    let mut out = String::new();
    for (clause, mark) in clauses(text) {
        let pieces = espeak::phonemes(&clause, voice).map_err(|e| Error::Engine(e.to_string()))?;
        let ph = pieces
            .iter()
            .map(|p| p.trim())
            .collect::<Vec<_>>()
            .join(" ");
        if ph.is_empty() {
            continue;
        }
        if !out.is_empty() {
            out.push(' ');
        }
        out.push_str(&ph);
        if let Some(m) = mark {
            out.push(m);
        }
    }
    Ok(out)
}

impl Tts for Piper {
    fn name(&self) -> &'static str {
        "piper"
    }

    fn synthesize(&self, text: &str) -> Result<Speech, Error> {
        match detect(text) {
            Lang::Zh => self.fallback.synthesize(text),
            Lang::En => self.speak(text),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clauses_keep_their_marks_and_numbers_stay_whole() {
        assert_eq!(
            clauses("Hello there, it costs 3.14 dollars. Really?! Yes"),
            vec![
                ("Hello there".to_string(), Some(',')),
                ("it costs 3.14 dollars".to_string(), Some('.')),
                ("Really".to_string(), Some('!')),
                ("Yes".to_string(), None),
            ]
        );
        assert_eq!(clauses("  ...  "), vec![]);
        assert_eq!(
            clauses("好的，走吧。"),
            vec![
                ("好的".to_string(), Some(',')),
                ("走吧".to_string(), Some('.'))
            ]
        );
    }

    #[test]
    fn phonemes_carry_clause_punctuation() {
        let ph = phonemize("Hello, world.", "en-us").unwrap();
        assert!(ph.contains(',') && ph.ends_with('.'), "{ph}");
        assert!(ph.contains("wˈɜːld"), "{ph}");
    }

    #[test]
    fn normalization_peaks_at_full_scale() {
        let s = normalize(&[0.0, 0.5, -0.25]);
        assert_eq!(s, vec![0, 32767, -16383]);
        assert_eq!(normalize(&[0.0, 0.0]), vec![0, 0], "silence stays silent");
    }
}
