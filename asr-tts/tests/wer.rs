//! Word error rates of the recognisers on clearly spoken sentences, a fixed set of twelve
//! synthesised by each TTS engine, measured and printed. The neural pair (Piper → Whisper) must
//! stay at or under 10 %; pocketsphinx's en-us model is weak on open vocabulary and on synthetic
//! voices, so for it the figure is reported and the check is only that it hears speech at all.
//! The neural engines' tests need the models (`deploy/install-models.sh`; see
//! `common::testing::voice_models`).

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly

use std::path::Path;

use asr_tts::asr::{Asr, PocketSphinx, word_error_rate};
use asr_tts::piper::Piper;
use asr_tts::tts::{Espeak, Tts};
use asr_tts::whisper::{Whisper, WhisperAsr};

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

/// Speaks every sentence with `tts`, recognises it with `asr`; prints each pair and returns
/// the word error rate over all words.
fn round_trip(tts: &dyn Tts, asr: &dyn Asr) -> f64 {
    let mut total_errors = 0.0;
    let mut total_words = 0usize;
    eprintln!("{:<62} | heard ({} → {})", "said", tts.name(), asr.name());
    for s in SENTENCES {
        let speech = tts.synthesize(s).unwrap();
        assert!(
            speech.seconds() > 0.5,
            "{} said nothing for {s:?}",
            tts.name()
        );
        let heard = asr.transcribe(&speech.to_asr_pcm()).unwrap();
        let words = s.split_whitespace().count();
        total_errors += word_error_rate(s, &heard) * words as f64;
        total_words += words;
        eprintln!("{s:<62} | {heard}");
    }
    let wer = total_errors / total_words as f64;
    eprintln!(
        "{} → {}: WER over {} sentences ({total_words} words): {:.1}%",
        tts.name(),
        asr.name(),
        SENTENCES.len(),
        wer * 100.0
    );
    wer
}

fn sphinx() -> PocketSphinx {
    PocketSphinx::new(Path::new(asr_tts::sphinx::DEFAULT_MODEL_DIR)).unwrap()
}

fn neural(models: &Path) -> (Piper, WhisperAsr) {
    let piper = Piper::load(
        &models.join(asr_tts::PIPER_VOICE),
        &models.join(asr_tts::ONNXRUNTIME_LIB),
        1,
        Espeak::default(),
    )
    .unwrap();
    let whisper = Whisper::load(&models.join(asr_tts::WHISPER_MODEL), 2, "en").unwrap();
    (piper, WhisperAsr::new(whisper))
}

#[test]
fn pocketsphinx_word_error_rate_on_espeak_speech() {
    let wer = round_trip(&Espeak::new().unwrap(), &sphinx());
    assert!(wer < 1.0, "the recogniser heard nothing right");
}

#[test]
fn piper_to_whisper_word_error_rate_is_at_most_ten_percent() {
    let Some(models) = common::testing::voice_models() else {
        return;
    };
    let (piper, whisper) = neural(&models);
    let neural_wer = round_trip(&piper, &whisper);
    // for comparison, the same voice heard by pocketsphinx, and eSpeak NG heard by Whisper
    let sphinx_wer = round_trip(&piper, &sphinx());
    let espeak_wer = round_trip(&Espeak::new().unwrap(), &whisper);
    eprintln!(
        "WER summary: piper → whisper {:.1}%, piper → pocketsphinx {:.1}%, espeak-ng → whisper {:.1}%",
        neural_wer * 100.0,
        sphinx_wer * 100.0,
        espeak_wer * 100.0
    );
    assert!(
        neural_wer <= 0.10,
        "Piper → Whisper WER {:.1}% is over 10%",
        neural_wer * 100.0
    );
}

#[test]
fn a_missing_or_corrupt_model_names_its_file() {
    let dir = tempfile::tempdir().unwrap();
    // missing
    let e = Whisper::load(dir.path(), 1, "en").unwrap_err();
    assert!(e.to_string().contains("model.bin is missing"), "{e}");
    let e = Piper::load(
        &dir.path().join("v.onnx"),
        &dir.path().join("lib.so"),
        1,
        Espeak::default(),
    )
    .unwrap_err();
    assert!(e.to_string().contains("v.onnx is missing"), "{e}");
    let Some(models) = common::testing::voice_models() else {
        return;
    };
    // corrupt: the real description and runtime, a garbage model
    let voice = dir.path().join("bad.onnx");
    std::fs::write(&voice, b"this is not an ONNX model").unwrap();
    std::fs::copy(
        models.join(format!("{}.json", asr_tts::PIPER_VOICE)),
        dir.path().join("bad.onnx.json"),
    )
    .unwrap();
    let e = Piper::load(
        &voice,
        &models.join(asr_tts::ONNXRUNTIME_LIB),
        1,
        Espeak::default(),
    )
    .unwrap_err();
    assert!(
        e.to_string().contains("bad.onnx could not be loaded"),
        "{e}"
    );
    // a corrupt Whisper model: the real tokenizer and configs, a truncated model.bin
    let wdir = dir.path().join("whisper");
    std::fs::create_dir(&wdir).unwrap();
    for f in asr_tts::whisper::MODEL_FILES {
        let src = models.join(asr_tts::WHISPER_MODEL).join(f);
        if f == "model.bin" {
            let bytes = std::fs::read(&src).unwrap();
            std::fs::write(wdir.join(f), &bytes[..4096]).unwrap();
        } else {
            std::fs::copy(&src, wdir.join(f)).unwrap();
        }
    }
    let e = Whisper::load(&wdir, 1, "en").unwrap_err();
    assert!(e.to_string().contains("could not be loaded"), "{e}");

    // the service's engine choice falls back to the older engines and says why
    let config = asr_tts::Config {
        piper_voice: Some(voice.clone()),
        onnxruntime: Some(models.join(asr_tts::ONNXRUNTIME_LIB)),
        whisper_model: Some(wdir.clone()),
        ..Default::default()
    };
    let (tts, asr) = asr_tts::engines(&config).unwrap();
    assert_eq!((tts.name(), asr.name()), ("espeak-ng", "pocketsphinx"));
    let config = asr_tts::Config {
        models_dir: Some(models.clone()),
        ..Default::default()
    };
    let (tts, asr) = asr_tts::engines(&config).unwrap();
    assert_eq!((tts.name(), asr.name()), ("piper", "whisper"));
}

#[test]
fn piper_skips_what_it_cannot_say_and_hands_mandarin_to_espeak() {
    let Some(models) = common::testing::voice_models() else {
        return;
    };
    let (piper, _) = neural(&models);
    let zh = piper.synthesize("今天晚上你打算做什么？").unwrap();
    let espeak = Espeak::default()
        .synthesize("今天晚上你打算做什么？")
        .unwrap();
    // eSpeak NG is not sample-exact from one call to the next: the same length within 2 %
    let (a, b) = (zh.samples.len() as f64, espeak.samples.len() as f64);
    assert!(
        zh.rate == espeak.rate && (a - b).abs() / b < 0.02,
        "Mandarin is spoken by eSpeak NG: {a} vs {b} samples"
    );
    let odd = piper.synthesize("Hello ☃ 🎉 world ∰.").unwrap();
    assert!(
        odd.seconds() > 0.3,
        "symbols without phonemes are skipped, the words are spoken"
    );
    // characters with no sound at all (private use, control): no audio, no error
    let none = piper.synthesize("\u{E000}\u{E001} \u{7}").unwrap();
    assert!(
        none.seconds() < 0.3,
        "nothing sayable gives (almost) nothing: {} s",
        none.seconds()
    );
}

#[test]
fn an_answer_longer_than_whispers_window_is_heard_window_by_window() {
    let Some(models) = common::testing::voice_models() else {
        return;
    };
    let (piper, whisper) = neural(&models);
    // ~40 s: every sentence with half a second of silence after it
    let mut pcm: Vec<i16> = Vec::new();
    for s in SENTENCES {
        let speech = piper.synthesize(s).unwrap();
        pcm.extend(speech.to_asr_pcm());
        pcm.extend(std::iter::repeat_n(0i16, 8000));
    }
    let secs = pcm.len() as f64 / 16_000.0;
    assert!(secs > 32.0, "{secs} s is not longer than one window");
    // streaming, as a session feeds it: 0.25 s at a time, asking for a partial every 5 s
    let mut r = whisper.start().unwrap();
    let mut partials = 0;
    for (i, chunk) in pcm.chunks(4000).enumerate() {
        r.feed(chunk).unwrap();
        if i % 20 == 19 && !r.partial().is_empty() {
            partials += 1;
        }
    }
    let streamed = r.finish().unwrap().to_lowercase();
    let whole = whisper.transcribe(&pcm).unwrap().to_lowercase();
    eprintln!("{secs:.1} s answer; streamed: {streamed}\nwhole: {whole}");
    assert!(partials > 0, "no partial transcripts");
    // Piper's voice is sampled with noise, so a word may differ run to run; a lost window
    // would cost about half of the words
    let said = SENTENCES.join(" ");
    for heard in [&streamed, &whole] {
        let wer = word_error_rate(&said, heard);
        assert!(wer <= 0.15, "WER {:.1}%: {heard}", wer * 100.0);
        // both ends are there: most words of the first and of the last sentence
        for s in [SENTENCES[0], SENTENCES[SENTENCES.len() - 1]] {
            let words: Vec<String> = s
                .split_whitespace()
                .map(|w| {
                    w.trim_matches(|c: char| !c.is_alphanumeric())
                        .to_lowercase()
                })
                .collect();
            let found = words.iter().filter(|w| heard.contains(w.as_str())).count();
            assert!(found * 4 >= words.len() * 3, "{s:?} not heard in: {heard}");
        }
    }
}
