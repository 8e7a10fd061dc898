//! Fuzzes the streaming sentence splitter: arbitrary text cut into arbitrary tokens must never
//! panic, never emit an unspeakable sentence, and never lose speakable text.
//!
//!   cd asr-tts/fuzz && RUSTC_BOOTSTRAP=1 cargo fuzz run splitter -- -max_total_time=60
#![no_main]

use asr_tts::splitter::{Config, Splitter, speakable};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&cfg, rest)) = data.split_first() else { return };
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
    let joined: String = out.concat().chars().filter(|c| !c.is_whitespace()).collect();
    let whole: String = text.chars().filter(|c| !c.is_whitespace()).collect();
    assert!(out.iter().all(|s| speakable(s)));
    assert!(whole.starts_with(&joined));
    assert!(!speakable(&whole[joined.len()..]));
});
