//! Text to speech behind one trait. This build's engine is eSpeak NG (English and Mandarin,
//! picked by the text's script); a neural engine can be slotted in behind the same trait.

use crate::espeak;

/// Synthesised speech: mono 16-bit samples.
#[derive(Debug, Clone, PartialEq)]
pub struct Speech {
    /// Samples.
    pub samples: Vec<i16>,
    /// Sample rate.
    pub rate: u32,
}

impl Speech {
    /// The speech as the recognisers hear it: 16 kHz mono 16-bit.
    pub fn to_asr_pcm(&self) -> Vec<i16> {
        let mono: Vec<f32> = self
            .samples
            .iter()
            .map(|v| f32::from(*v) / 32768.0)
            .collect();
        crate::resample::to_i16(&crate::resample::resample(
            &mono,
            self.rate,
            crate::audio::ASR_RATE,
        ))
    }

    /// Duration in seconds.
    pub fn seconds(&self) -> f64 {
        if self.rate == 0 {
            0.0
        } else {
            self.samples.len() as f64 / f64::from(self.rate)
        }
    }
}

/// Which language a sentence is in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lang {
    /// English (and other Latin-script text).
    En,
    /// Mandarin Chinese.
    Zh,
}

/// Chinese when at least a third of the letters are CJK ideographs.
pub fn detect(text: &str) -> Lang {
    let (mut cjk, mut letters) = (0usize, 0usize);
    for c in text.chars() {
        if matches!(c as u32, 0x3400..=0x4DBF | 0x4E00..=0x9FFF | 0xF900..=0xFAFF) {
            cjk += 1;
            letters += 1;
        } else if c.is_alphabetic() {
            letters += 1;
        }
    }
    if letters > 0 && cjk * 3 >= letters {
        Lang::Zh
    } else {
        Lang::En
    }
}

/// TTS errors.
#[derive(Debug, thiserror::Error, Clone, PartialEq)]
pub enum Error {
    /// The engine failed.
    #[error("speech synthesis failed: {0}")]
    Engine(String),
}

/// A speech synthesiser. Calls block (run them off the async runtime).
pub trait Tts: Send + Sync {
    /// The engine's name (for logs and metrics).
    fn name(&self) -> &'static str;
    /// Speaks one sentence.
    fn synthesize(&self, text: &str) -> Result<Speech, Error>;
}

/// eSpeak NG: `en-us` for English, `cmn` for Mandarin.
#[derive(Debug, Clone)]
pub struct Espeak {
    /// Words per minute.
    pub wpm: i32,
}

impl Default for Espeak {
    fn default() -> Self {
        Espeak { wpm: 165 }
    }
}

impl Espeak {
    /// Checks that eSpeak NG starts.
    pub fn new() -> Result<Espeak, Error> {
        espeak::sample_rate().map_err(|e| Error::Engine(e.to_string()))?;
        Ok(Espeak::default())
    }
}

impl Tts for Espeak {
    fn name(&self) -> &'static str {
        "espeak-ng"
    }

    fn synthesize(&self, text: &str) -> Result<Speech, Error> {
        let voice = match detect(text) {
            Lang::En => "en-us",
            Lang::Zh => "cmn",
        };
        let samples =
            espeak::synthesize(text, voice, self.wpm).map_err(|e| Error::Engine(e.to_string()))?;
        let rate = espeak::sample_rate().map_err(|e| Error::Engine(e.to_string()))?;
        Ok(Speech { samples, rate })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn language_by_script() {
        assert_eq!(detect("Hello there."), Lang::En);
        assert_eq!(detect("你好，世界。"), Lang::Zh);
        assert_eq!(detect("我喜欢 Rust 语言。"), Lang::Zh);
        assert_eq!(detect("I like 饺子 very much indeed"), Lang::En);
        assert_eq!(detect("1234!"), Lang::En);
    }

    #[test]
    fn espeak_speaks_english_and_mandarin() {
        let tts = Espeak::new().unwrap();
        let en = tts
            .synthesize("What did you eat with your friend last week?")
            .unwrap();
        assert!(en.seconds() > 1.0 && en.seconds() < 6.0, "{}", en.seconds());
        assert!(en.samples.iter().any(|s| s.unsigned_abs() > 1000));
        let zh = tts.synthesize("你上周和朋友吃了什么？").unwrap();
        assert!(zh.seconds() > 1.0, "{}", zh.seconds());
    }
}
