//! Speech recognition behind one trait. This build's engine is CMU pocketsphinx with Debian's
//! en-us model: it streams partial results as audio arrives, but is weak on open vocabulary.

use std::path::Path;
use std::sync::Arc;

use crate::sphinx;

/// ASR errors.
#[derive(Debug, thiserror::Error, Clone, PartialEq)]
pub enum Error {
    /// The engine failed.
    #[error("speech recognition failed: {0}")]
    Engine(String),
}

/// One utterance being recognised.
pub trait Recognizer: Send {
    /// Feeds 16 kHz mono samples.
    fn feed(&mut self, pcm: &[i16]) -> Result<(), Error>;
    /// The best guess so far.
    fn partial(&mut self) -> String;
    /// Ends the utterance; the final text.
    fn finish(self: Box<Self>) -> Result<String, Error>;
}

/// A recogniser factory. Calls block (run them off the async runtime).
pub trait Asr: Send + Sync {
    /// The engine's name.
    fn name(&self) -> &'static str;
    /// A recogniser for one utterance.
    fn start(&self) -> Result<Box<dyn Recognizer>, Error>;
    /// Recognises a whole recording.
    fn transcribe(&self, pcm: &[i16]) -> Result<String, Error> {
        let mut r = self.start()?;
        for chunk in pcm.chunks(4000) {
            r.feed(chunk)?;
        }
        r.finish()
    }
}

/// pocketsphinx.
pub struct PocketSphinx {
    pool: Arc<sphinx::Pool>,
}

impl PocketSphinx {
    /// Loads the model in `dir` (Debian's: [`sphinx::DEFAULT_MODEL_DIR`]).
    pub fn new(dir: &Path) -> Result<PocketSphinx, Error> {
        let pool = sphinx::Pool::new(dir).map_err(|e| Error::Engine(e.to_string()))?;
        Ok(PocketSphinx {
            pool: Arc::new(pool),
        })
    }
}

struct SphinxUtterance {
    pool: Arc<sphinx::Pool>,
    decoder: Option<sphinx::Decoder>,
}

impl Recognizer for SphinxUtterance {
    fn feed(&mut self, pcm: &[i16]) -> Result<(), Error> {
        match self.decoder.as_mut() {
            Some(d) => d.feed(pcm).map_err(|e| Error::Engine(e.to_string())),
            None => Err(Error::Engine("utterance already finished".into())),
        }
    }

    fn partial(&mut self) -> String {
        self.decoder
            .as_mut()
            .map(|d| d.hypothesis())
            .unwrap_or_default()
    }

    fn finish(mut self: Box<Self>) -> Result<String, Error> {
        let mut d = self
            .decoder
            .take()
            .ok_or_else(|| Error::Engine("utterance already finished".into()))?;
        let text = d.end().map_err(|e| Error::Engine(e.to_string()));
        self.pool.give(d);
        text
    }
}

impl Drop for SphinxUtterance {
    fn drop(&mut self) {
        if let Some(mut d) = self.decoder.take() {
            let _ = d.end();
            self.pool.give(d);
        }
    }
}

impl Asr for PocketSphinx {
    fn name(&self) -> &'static str {
        "pocketsphinx"
    }

    fn start(&self) -> Result<Box<dyn Recognizer>, Error> {
        let mut d = self.pool.take().map_err(|e| Error::Engine(e.to_string()))?;
        d.start().map_err(|e| Error::Engine(e.to_string()))?;
        Ok(Box::new(SphinxUtterance {
            pool: self.pool.clone(),
            decoder: Some(d),
        }))
    }
}

/// Word error rate of `hypothesis` against `reference` (lower-cased words, punctuation
/// ignored): edit distance / reference words.
pub fn word_error_rate(reference: &str, hypothesis: &str) -> f64 {
    let words = |s: &str| -> Vec<String> {
        s.split_whitespace()
            .map(|w| {
                w.chars()
                    .filter(|c| c.is_alphanumeric() || *c == '\'')
                    .collect::<String>()
                    .to_lowercase()
            })
            .filter(|w| !w.is_empty())
            .collect()
    };
    let (r, h) = (words(reference), words(hypothesis));
    if r.is_empty() {
        return if h.is_empty() { 0.0 } else { 1.0 };
    }
    let mut prev: Vec<usize> = (0..=h.len()).collect();
    for (i, rw) in r.iter().enumerate() {
        let mut cur = vec![i + 1; h.len() + 1];
        for (j, hw) in h.iter().enumerate() {
            let sub = prev[j] + usize::from(rw != hw);
            cur[j + 1] = sub.min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[h.len()] as f64 / r.len() as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wer() {
        assert_eq!(word_error_rate("hello world", "hello world"), 0.0);
        assert_eq!(word_error_rate("Hello, world!", "hello world"), 0.0);
        assert_eq!(word_error_rate("hello world", "let oil"), 1.0);
        assert_eq!(word_error_rate("a b c d", "a x c"), 0.5);
        assert_eq!(word_error_rate("", ""), 0.0);
    }

    #[test]
    fn pocketsphinx_hears_espeak() {
        use crate::tts::Tts;
        let asr = PocketSphinx::new(Path::new(sphinx::DEFAULT_MODEL_DIR)).unwrap();
        let speech = crate::tts::Espeak::new()
            .unwrap()
            .synthesize("I went to the park with my friends")
            .unwrap();
        let text = asr.transcribe(&speech.to_asr_pcm()).unwrap();
        // pocketsphinx is weak on synthetic speech; it must at least hear words
        assert!(!text.is_empty(), "nothing recognised");
        eprintln!("pocketsphinx heard: {text:?}");
    }
}
