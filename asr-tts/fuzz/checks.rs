//! The bodies of asr-tts's fuzz targets, shared by the libFuzzer binaries (`fuzz_targets/`) and
//! by the test suite (`tests/fuzz.rs`, through `common::testing::fuzz::replay`).

#![allow(clippy::unwrap_used, clippy::expect_used)] // a check reports by panicking

use asr_tts::session::{ClientText, MAX_TEXT_BYTES, parse_text};
use asr_tts::splitter::{Config, Splitter, speakable};

/// The streaming sentence splitter: arbitrary text cut into arbitrary tokens never panics,
/// never emits an unspeakable sentence, and never loses speakable text.
pub fn splitter(data: &[u8]) {
    let Some((&cfg, rest)) = data.split_first() else {
        return;
    };
    let text = String::from_utf8_lossy(rest);
    let mut s = Splitter::new(Config {
        first_min_chars: usize::from(cfg & 0x1f),
        first_min_words: usize::from(cfg % 4),
        max_chars: 8 + usize::from(cfg >> 3),
    });
    let mut out = Vec::new();
    let chars: Vec<char> = text.chars().collect();
    let step = 1 + usize::from(cfg % 5);
    for chunk in chars.chunks(step) {
        out.extend(s.push(&chunk.iter().collect::<String>()));
    }
    out.extend(s.finish());
    let joined: String = out
        .concat()
        .chars()
        .filter(|c| !c.is_whitespace())
        .collect();
    let whole: String = text.chars().filter(|c| !c.is_whitespace()).collect();
    assert!(out.iter().all(|s| speakable(s)), "{out:?}");
    assert!(whole.starts_with(&joined), "{whole:?} / {joined:?}");
    assert!(
        !speakable(&whole[joined.len()..]),
        "lost {:?}",
        &whole[joined.len()..]
    );
}

pub fn splitter_seeds() -> Vec<Vec<u8>> {
    [
        "\x07Hello there. How was the trip? It looked amazing!",
        "\x1fDr. Smith paid $3.50 for 2.5 kg... then left.",
        "\x00\u{4f60}\u{597d}\u{3002}\u{4f60}\u{597d}\u{ff01}",
        "\x13\"Quoted,\" she said. (Really?) Yes.\n\nNew paragraph",
    ]
    .iter()
    .map(|s| s.as_bytes().to_vec())
    .collect()
}

/// The Q&A WebSocket's text-message parser: arbitrary text gets a message or a reason, never a
/// panic; what it accepts is within the protocol's bounds and parses back the same.
pub fn ws_message(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    match parse_text(&text) {
        Ok(msg) => {
            assert!(text.len() <= MAX_TEXT_BYTES);
            let again = match &msg {
                ClientText::Start(f) => {
                    serde_json::json!({"type": "answer_start", "format": f.name()})
                }
                ClientText::Done => serde_json::json!({"type": "answer_done"}),
                ClientText::Ping => serde_json::json!({"type": "ping"}),
                ClientText::Text(t) => {
                    assert!(!t.is_empty() && t.trim() == t && t.chars().count() <= 2000);
                    serde_json::json!({"type": "answer_text", "text": t})
                }
            };
            assert_eq!(parse_text(&again.to_string()).as_ref(), Ok(&msg));
        }
        Err(reason) => {
            assert!(!reason.is_empty());
        }
    }
}

pub fn ws_message_seeds() -> Vec<Vec<u8>> {
    [
        r#"{"type":"answer_start","format":"pcm16"}"#,
        r#"{"type":"answer_start","format":"audio/webm;codecs=opus"}"#,
        r#"{"type":"answer_done"}"#,
        r#"{"type":"ping"}"#,
        r#"{"type":"answer_text","text":"  we went to the lake \u00e9  "}"#,
        r#"{"type":["answer_done"],"format":{"a":[1,2,3]}}"#,
        r#"[{"type":"answer_done"}]"#,
    ]
    .iter()
    .map(|s| s.as_bytes().to_vec())
    .collect()
}
