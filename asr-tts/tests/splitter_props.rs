//! Property tests of the sentence splitter: fed in random pieces, the sentences joined equal
//! the input (whitespace aside, and a trailing unspeakable tail aside), none is empty or
//! punctuation-only, none exceeds the length limit, and how the text is cut into tokens never
//! loses or duplicates anything.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly

use asr_tts::splitter::{Config, Splitter, speakable};
use proptest::prelude::*;

fn strip_ws(s: &str) -> String {
    s.chars().filter(|c| !c.is_whitespace()).collect()
}

/// Text made of words, numbers, URLs, CJK and punctuation in realistic proportions.
fn text() -> impl Strategy<Value = String> {
    let piece = prop_oneof![
        4 => "[A-Za-z]{1,9}",
        1 => "[0-9]{1,4}(\\.[0-9]{1,2})?",
        1 => Just("Mr.".to_string()),
        1 => Just("e.g.".to_string()),
        1 => Just("example.com".to_string()),
        2 => "[你好世界天气很今明我们去]{1,6}",
        2 => prop::sample::select(vec![".", "!", "?", "...", "。", "！", "？", "；", "…", ",", "，", "、", ":", "\"", "」", ")", "\n"]).prop_map(str::to_string),
    ];
    proptest::collection::vec((piece, prop::bool::weighted(0.7)), 0..40).prop_map(|v| {
        v.into_iter()
            .map(|(p, space)| if space { format!("{p} ") } else { p })
            .collect()
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1500))]

    #[test]
    fn joined_sentences_equal_the_input(input in text(), cuts in proptest::collection::vec(1usize..7, 1..60), first in 0usize..30, max in 20usize..200) {
        let mut s = Splitter::new(Config { first_min_chars: first, first_min_words: first % 5, max_chars: max });
        let chars: Vec<char> = input.chars().collect();
        let mut out = Vec::new();
        let (mut i, mut k) = (0, 0);
        while i < chars.len() {
            let n = cuts[k % cuts.len()].min(chars.len() - i);
            let token: String = chars[i..i + n].iter().collect();
            out.extend(s.push(&token));
            i += n;
            k += 1;
        }
        out.extend(s.finish());
        for sentence in &out {
            prop_assert!(speakable(sentence), "unspeakable sentence {sentence:?}");
            prop_assert_eq!(sentence.trim(), sentence.as_str());
        }
        let joined = strip_ws(&out.concat());
        let whole = strip_ws(&input);
        prop_assert!(whole.starts_with(&joined), "lost or changed text:\n in  {whole:?}\n out {joined:?}");
        prop_assert!(!speakable(&whole[joined.len()..]), "dropped speakable text {:?}", &whole[joined.len()..]);
    }

    #[test]
    fn arbitrary_unicode_never_panics(input in ".{0,300}", first in 0usize..40, max in 1usize..100) {
        let mut s = Splitter::new(Config { first_min_chars: first, first_min_words: first % 5, max_chars: max });
        let mut n = 0;
        for c in input.chars() {
            n += s.push(&c.to_string()).len();
        }
        n += s.finish().len();
        prop_assert!(n <= input.chars().count() + 1);
    }
}
