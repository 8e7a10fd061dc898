//! Word error rate of the recogniser on clearly spoken sentences (made with eSpeak NG): a
//! fixed set of twelve, measured and printed. pocketsphinx's en-us model is weak on open
//! vocabulary and on synthetic voices, so this reports the figure and checks only that the
//! engine hears speech at all; the neural engine has its own, stricter bar.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly

use asr_tts::asr::{Asr, PocketSphinx, word_error_rate};
use asr_tts::tts::{Espeak, Tts};

const SENTENCES: &[&str] = &[
    "What are you going to do with your college friends tonight?",
    "I went hiking in the mountains last weekend.",
    "We had dumplings at the night market.",
    "My sister and I watched the sunset by the sea.",
    "The coffee shop on the corner has the best cake.",
    "I play the guitar every evening after work.",
    "Our dog loves running on the beach.",
    "We are planning a trip to Japan next spring.",
    "I cooked pasta for my friends on Friday.",
    "The concert was loud but really fun.",
    "I started learning to swim this summer.",
    "She gave me a book about old ships.",
];

#[test]
fn pocketsphinx_word_error_rate_on_espeak_speech() {
    let tts = Espeak::new().unwrap();
    let asr = PocketSphinx::new(std::path::Path::new(asr_tts::sphinx::DEFAULT_MODEL_DIR)).unwrap();
    let mut total_errors = 0.0;
    let mut total_words = 0usize;
    eprintln!("{:<62} | heard", "said");
    for s in SENTENCES {
        let speech = tts.synthesize(s).unwrap();
        let mono: Vec<f32> = speech
            .samples
            .iter()
            .map(|v| f32::from(*v) / 32768.0)
            .collect();
        let pcm =
            asr_tts::resample::to_i16(&asr_tts::resample::resample(&mono, speech.rate, 16_000));
        let heard = asr.transcribe(&pcm).unwrap();
        let words = s.split_whitespace().count();
        total_errors += word_error_rate(s, &heard) * words as f64;
        total_words += words;
        eprintln!("{s:<62} | {heard}");
    }
    let wer = total_errors / total_words as f64;
    eprintln!(
        "pocketsphinx WER over {} sentences ({total_words} words): {:.1}%",
        SENTENCES.len(),
        wer * 100.0
    );
    assert!(wer < 1.0, "the recogniser heard nothing right");
}
