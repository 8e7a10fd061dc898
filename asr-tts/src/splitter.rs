//! Streaming sentence splitter (sans-IO): `push(text)` returns the sentences completed so far,
//! `finish()` flushes the rest. Built for LLM token streams in English, Chinese or both.
//!
//! A sentence ends at `。！？；…`, at `.`/`!`/`?`/`...` when what follows shows it is an end,
//! or at a newline; closing quotes and brackets after the terminator stay with the sentence.
//! A `.` is not an end inside numbers (3.14, $29.99, 8,848.86, 2024.05.01), URLs and e-mail
//! addresses (no space follows), after abbreviations (Mr. Dr. e.g. U.S. Ph.D.) and initials, or
//! when the next word starts in lower case (checked after abbreviations, ellipses and closers;
//! a plain `word. ` ends at once). A sentence is handed out as soon as that is certain —
//! usually when the next character arrives, at once for CJK terminators without closers.
//!
//! Two rules serve speech: the first sentence may be cut early at a clause boundary
//! (`，,、：:` followed by a space for the Latin ones) once it is `first_min_chars` long, so the
//! first audio starts sooner — and, when no clause boundary comes, before a preposition or
//! conjunction once `first_min_words` words are in (`What a lovely evening | by the sea.`), so
//! the first fragment is a natural phrase; and no sentence grows beyond `max_chars` — it is cut at the last
//! clause boundary, else the last space, else hard. Sentences with nothing speakable in them
//! (only punctuation) are never emitted: such a fragment is carried into the next sentence, and
//! dropped if it ends the stream.

/// Splitter settings.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// The first sentence may end at a clause boundary once this long (chars; CJK count
    /// double). 0 disables the fast path.
    pub first_min_chars: usize,
    /// The first sentence may also end before a preposition or conjunction (`by`, `when`,
    /// `and` …) once it has this many words. 0 disables it.
    pub first_min_words: usize,
    /// Longest sentence (chars); longer text is cut at a clause boundary.
    pub max_chars: usize,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            first_min_chars: 24,
            first_min_words: 3,
            max_chars: 180,
        }
    }
}

/// The splitter state.
#[derive(Debug, Clone)]
pub struct Splitter {
    config: Config,
    buf: String,
    emitted: usize,
}

/// Words a spoken phrase naturally breaks before (English prepositions and conjunctions).
const PHRASE_STARTS: &[&str] = &[
    "about", "after", "and", "as", "at", "because", "before", "but", "by", "during", "for", "from",
    "if", "in", "into", "near", "of", "on", "or", "since", "so", "than", "that", "through", "to",
    "until", "when", "where", "which", "while", "who", "with", "without",
];

const ABBREVIATIONS: &[&str] = &[
    "mr", "mrs", "ms", "dr", "prof", "sr", "jr", "st", "vs", "e.g", "i.e", "ph.d", "u.s", "u.k",
    "a.m", "p.m", "no", "approx", "dept", "inc", "ltd", "co", "corp", "fig", "vol", "mt", "ft",
    "jan", "feb", "mar", "apr", "jun", "jul", "aug", "sep", "sept", "oct", "nov", "dec", "gen",
    "col", "capt", "lt", "sgt", "rev", "hon", "messrs", "cf", "al",
];

fn is_cjk(c: char) -> bool {
    matches!(c as u32,
        0x3000..=0x303F | 0x3040..=0x30FF | 0x3400..=0x4DBF | 0x4E00..=0x9FFF |
        0xF900..=0xFAFF | 0xFF00..=0xFFEF | 0x20000..=0x2FA1F)
}

/// A character that can be spoken (letter, digit, CJK ideograph).
fn is_word_char(c: char) -> bool {
    c.is_alphanumeric()
}

/// True when `s` has something to say.
pub fn speakable(s: &str) -> bool {
    s.chars().any(is_word_char)
}

fn is_closer(c: char) -> bool {
    matches!(
        c,
        '"' | '\'' | '”' | '’' | '」' | '』' | '）' | ')' | '】' | ']' | '》' | '〉' | '»' | '}'
    )
}

fn is_cjk_terminator(c: char) -> bool {
    matches!(c, '。' | '！' | '？' | '；' | '…' | '．')
}

fn is_clause(c: char) -> bool {
    matches!(c, '，' | ',' | '、' | '：' | ':' | '；' | ';')
}

fn is_latin_clause(c: char) -> bool {
    matches!(c, ',' | ':' | ';')
}

/// Length in "speech chars": CJK characters count double (they carry a syllable each).
fn weight(s: &str) -> usize {
    s.chars().map(|c| if is_cjk(c) { 2 } else { 1 }).sum()
}

enum Decision {
    /// A sentence ends at this byte index (exclusive).
    End(usize),
    /// Not an end; keep scanning after this byte index.
    Continue(usize),
    /// Cannot tell until more text arrives.
    Wait,
}

impl Splitter {
    /// A splitter with `config`.
    pub fn new(config: Config) -> Splitter {
        Splitter {
            config,
            buf: String::new(),
            emitted: 0,
        }
    }

    /// Adds streamed text; returns the sentences it completed.
    pub fn push(&mut self, text: &str) -> Vec<String> {
        self.buf.push_str(text);
        self.drain(false)
    }

    /// Ends the stream; returns what is left as sentences.
    pub fn finish(&mut self) -> Vec<String> {
        self.drain(true)
    }

    /// Sentences emitted so far.
    pub fn emitted(&self) -> usize {
        self.emitted
    }

    fn drain(&mut self, last: bool) -> Vec<String> {
        let mut out = Vec::new();
        'sentences: loop {
            // the first cut whose text so far has something to say; punctuation-only pieces
            // before it travel with it
            let mut from = 0;
            let cut = loop {
                if from >= self.buf.len() {
                    break None;
                }
                match self.next_cut_after(from, last) {
                    Some(e) if speakable(&self.buf[..e]) => break Some(e),
                    Some(e) if e > from => from = e,
                    _ => break None,
                }
            };
            let Some(end) = cut else { break 'sentences };
            let sentence = self.buf[..end].trim().to_string();
            self.buf.replace_range(..end, "");
            self.emitted += 1;
            out.push(sentence);
        }
        if last {
            let rest = std::mem::take(&mut self.buf);
            if speakable(&rest) {
                self.emitted += 1;
                out.push(rest.trim().to_string());
            }
        }
        out
    }

    fn next_cut_after(&self, from: usize, last: bool) -> Option<usize> {
        if from == 0 {
            return self.next_cut(last);
        }
        let mut probe = self.clone();
        probe.buf = self.buf[from..].to_string();
        probe.next_cut(last).map(|e| e + from)
    }

    /// The end of the next sentence in the buffer, if certain.
    fn next_cut(&self, last: bool) -> Option<usize> {
        let s = &self.buf;
        let chars: Vec<(usize, char)> = s.char_indices().collect();
        let fast = self.fast_cut(&chars, last);
        let mut i = 0;
        while i < chars.len() {
            match self.decide(&chars, i, last) {
                Decision::End(e) => return Some(fast.map_or(e, |f| f.min(e))),
                Decision::Continue(next) => {
                    if let Some(f) = fast
                        && f <= self.byte(&chars, next)
                    {
                        return Some(f);
                    }
                    i = next
                }
                Decision::Wait => return fast.or_else(|| self.forced_cut(last)),
            }
        }
        fast.or_else(|| self.forced_cut(last))
    }

    /// The first sentence's early cut at a clause boundary, once it is long enough.
    fn fast_cut(&self, chars: &[(usize, char)], last: bool) -> Option<usize> {
        if self.emitted > 0 || self.config.first_min_chars == 0 {
            return None;
        }
        let s = &self.buf;
        for (idx, &(b, c)) in chars.iter().enumerate() {
            if !is_clause(c) {
                continue;
            }
            let end = b + c.len_utf8();
            if weight(&s[..end]) < self.config.first_min_chars {
                continue;
            }
            if is_latin_clause(c) {
                match chars.get(idx + 1) {
                    Some((_, n)) if n.is_whitespace() => return Some(end),
                    Some(_) => continue, // 8,848 or 10:30
                    None if last => return None,
                    None => return None, // wait for the next char
                }
            }
            return Some(end);
        }
        self.phrase_cut()
    }

    /// The first sentence's early cut before a phrase-starting word (complete: followed by
    /// whitespace) once `first_min_words` words precede it.
    fn phrase_cut(&self) -> Option<usize> {
        if self.config.first_min_words == 0 {
            return None;
        }
        let s = &self.buf;
        let mut words = 0;
        let mut prev_end = 0;
        let mut start = None;
        for (b, c) in s.char_indices() {
            match (c.is_whitespace(), start) {
                (false, None) => start = Some(b),
                (true, Some(st)) => {
                    let word = &s[st..b];
                    if !word.chars().all(|c| c.is_ascii_alphabetic() || c == '\'') {
                        if !word.is_ascii() {
                            return None; // not English: clause boundaries only
                        }
                    } else if words >= self.config.first_min_words
                        && PHRASE_STARTS.contains(&word.to_ascii_lowercase().as_str())
                    {
                        return Some(prev_end);
                    }
                    words += 1;
                    prev_end = b;
                    start = None;
                }
                _ => {}
            }
        }
        None
    }

    /// Byte index of `chars[k]` (or the end of the buffer).
    fn byte(&self, chars: &[(usize, char)], k: usize) -> usize {
        chars.get(k).map_or(self.buf.len(), |(b, _)| *b)
    }

    fn decide(&self, chars: &[(usize, char)], i: usize, last: bool) -> Decision {
        let c = chars[i].1;
        if c == '\n' {
            return Decision::End(self.byte(chars, i + 1));
        }
        let terminator = is_cjk_terminator(c) || matches!(c, '.' | '!' | '?');
        if !terminator {
            return Decision::Continue(i + 1);
        }
        // the run of terminators ("?!", "...", "。。") and closers after it
        let mut j = i;
        while j < chars.len()
            && (is_cjk_terminator(chars[j].1) || matches!(chars[j].1, '.' | '!' | '?'))
        {
            j += 1;
        }
        let run: String = chars[i..j].iter().map(|(_, c)| *c).collect();
        while j < chars.len() && is_closer(chars[j].1) {
            j += 1;
        }
        if j == chars.len() && !last {
            return Decision::Wait; // a closer or more dots may still come
        }
        let end = self.byte(chars, j);
        let next = chars.get(j).map(|(_, c)| *c);
        if run.chars().any(is_cjk_terminator) {
            return Decision::End(end);
        }
        // Latin terminators need a space (or the end) after them.
        match next {
            None => return Decision::End(end),
            Some(n) if n.is_whitespace() => {}
            Some(n) if is_cjk(n) => return Decision::End(end),
            Some(_) => return Decision::Continue(j), // 3.14, example.com, U.S, e.g.x
        }
        let closed = j > i + run.chars().count();
        if (run.contains('!') || run.contains('?')) && !closed {
            return Decision::End(end);
        }
        // a single '.' or an ellipsis: look at the word before and the word after
        if run == "." && self.abbreviation_before(chars, i) {
            return Decision::Continue(j);
        }
        if run == "." && !closed {
            // "word. " is an end — no need to wait for the next word (40 ms per LLM token)
            return Decision::End(end);
        }
        let mut k = j;
        while k < chars.len() && chars[k].1.is_whitespace() {
            if chars[k].1 == '\n' {
                return Decision::End(end);
            }
            k += 1;
        }
        let Some(&(_, after)) = chars.get(k) else {
            return if last {
                Decision::End(end)
            } else {
                Decision::Wait
            };
        };
        if after.is_lowercase() {
            Decision::Continue(j) // "e.g. cats", "well... maybe", "'Quoted?' she asked"
        } else {
            Decision::End(end)
        }
    }

    /// True when the word before `chars[dot]` is an abbreviation or an initial.
    fn abbreviation_before(&self, chars: &[(usize, char)], dot: usize) -> bool {
        let mut k = dot;
        while k > 0
            && !chars[k - 1].1.is_whitespace()
            && !is_closer(chars[k - 1].1)
            && chars[k - 1].1 != '('
        {
            k -= 1;
        }
        let word: String = chars[k..dot].iter().map(|(_, c)| *c).collect();
        let word = word.trim_start_matches(['"', '\'', '“', '‘']);
        if word.is_empty() {
            return false;
        }
        let lower = word.to_lowercase();
        if ABBREVIATIONS.contains(&lower.as_str()) {
            return true;
        }
        // initials and dotted abbreviations: "J", "U.S", "e.g"
        let letters: Vec<char> = word.chars().filter(|c| *c != '.').collect();
        let dotted = word.contains('.')
            && word
                .split('.')
                .all(|p| p.chars().count() <= 2 && !p.is_empty());
        (letters.len() == 1 && letters[0].is_uppercase()) || dotted
    }

    /// Length limit: a cut at a clause boundary (or space) when the pending text is too long.
    fn forced_cut(&self, last: bool) -> Option<usize> {
        if last {
            return None;
        }
        let s = &self.buf;
        let chars: Vec<(usize, char)> = s.char_indices().collect();
        // length limit: cut at the last clause boundary, else the last space, else hard
        if weight(s) <= self.config.max_chars {
            return None;
        }
        let mut budget = 0;
        let mut last_clause = None;
        let mut last_space = None;
        let mut hard = s.len();
        for (idx, &(b, c)) in chars.iter().enumerate() {
            budget += if is_cjk(c) { 2 } else { 1 };
            if budget > self.config.max_chars {
                hard = b;
                break;
            }
            let end = b + c.len_utf8();
            if is_clause(c)
                && (!is_latin_clause(c)
                    || chars.get(idx + 1).is_some_and(|(_, n)| n.is_whitespace()))
            {
                last_clause = Some(end);
            }
            if c.is_whitespace() && idx > 0 {
                last_space = Some(b);
            }
        }
        last_clause.or(last_space).or(Some(hard)).filter(|e| *e > 0)
    }
}

impl Default for Splitter {
    fn default() -> Self {
        Splitter::new(Config::default())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Splits `text` fed one char at a time (the worst case for a streaming splitter) and also
    /// all at once; both must agree.
    fn split_with(text: &str, cfg: Config) -> Vec<String> {
        let mut a = Splitter::new(cfg.clone());
        let mut by_char = Vec::new();
        for c in text.chars() {
            by_char.extend(a.push(&c.to_string()));
        }
        by_char.extend(a.finish());
        let mut b = Splitter::new(cfg);
        let mut whole = b.push(text);
        whole.extend(b.finish());
        assert_eq!(
            by_char, whole,
            "streaming and whole-text splits differ for {text:?}"
        );
        by_char
    }

    fn split(text: &str) -> Vec<String> {
        split_with(
            text,
            Config {
                first_min_chars: 0,
                first_min_words: 0,
                max_chars: 500,
            },
        )
    }

    #[test]
    fn table() {
        let cases: &[(&str, &[&str])] = &[
            // plain English
            ("Hello world.", &["Hello world."]),
            ("Hi. How are you?", &["Hi.", "How are you?"]),
            ("Wow! That is great.", &["Wow!", "That is great."]),
            ("Really?! No way.", &["Really?!", "No way."]),
            ("One. Two. Three.", &["One.", "Two.", "Three."]),
            ("No terminator", &["No terminator"]),
            ("Ends with space. ", &["Ends with space."]),
            ("  Leading space. Next.", &["Leading space.", "Next."]),
            ("Line one\nLine two", &["Line one", "Line two"]),
            ("A.\n\nB.", &["A.", "B."]),
            // closers stay with their sentence
            (
                "He said \"stop.\" Then left.",
                &["He said \"stop.\"", "Then left."],
            ),
            ("Is it (really)? Yes.", &["Is it (really)?", "Yes."]),
            ("'Quoted?' she asked.", &["'Quoted?' she asked."]),
            (
                "She whispered, “Go.” We went.",
                &["She whispered, “Go.”", "We went."],
            ),
            ("Done!\" Next one.", &["Done!\"", "Next one."]),
            // abbreviations and initials
            ("Mr. Smith went home.", &["Mr. Smith went home."]),
            ("Dr. Who is here. Hi.", &["Dr. Who is here.", "Hi."]),
            ("Use e.g. a pen.", &["Use e.g. a pen."]),
            ("I.e. this one. Ok.", &["I.e. this one.", "Ok."]),
            (
                "She lives in the U.S. now.",
                &["She lives in the U.S. now."],
            ),
            ("He has a Ph.D. in math.", &["He has a Ph.D. in math."]),
            ("J. K. Rowling wrote it.", &["J. K. Rowling wrote it."]),
            ("Meet at 9 a.m. tomorrow.", &["Meet at 9 a.m. tomorrow."]),
            (
                "Mrs. Brown and Prof. Green met.",
                &["Mrs. Brown and Prof. Green met."],
            ),
            (
                "Apples vs. oranges. Pick one.",
                &["Apples vs. oranges.", "Pick one."],
            ),
            (
                "It is on St. Mark's street.",
                &["It is on St. Mark's street."],
            ),
            // numbers, money, times, dates
            ("Pi is 3.14 roughly.", &["Pi is 3.14 roughly."]),
            ("It costs $29.99. Cheap!", &["It costs $29.99.", "Cheap!"]),
            (
                "Everest is 8,848.86 m tall.",
                &["Everest is 8,848.86 m tall."],
            ),
            ("Meet at 10:30. Fine?", &["Meet at 10:30.", "Fine?"]),
            (
                "The date is 2024.05.01 today.",
                &["The date is 2024.05.01 today."],
            ),
            (
                "Version 1.2.3 is out. Update.",
                &["Version 1.2.3 is out.", "Update."],
            ),
            ("I scored 9.5/10. Nice.", &["I scored 9.5/10.", "Nice."]),
            // URLs and e-mail
            (
                "See https://example.com/a.b?x=1 for more.",
                &["See https://example.com/a.b?x=1 for more."],
            ),
            (
                "Visit www.moments.app today. Bye.",
                &["Visit www.moments.app today.", "Bye."],
            ),
            (
                "Mail me at ann.lee@mail.example.com please.",
                &["Mail me at ann.lee@mail.example.com please."],
            ),
            (
                "Go to example.com. Then sign up.",
                &["Go to example.com.", "Then sign up."],
            ),
            // ellipses
            ("Wait... what happened?", &["Wait... what happened?"]),
            ("Well... Maybe later.", &["Well...", "Maybe later."]),
            ("Hmm… I see.", &["Hmm…", "I see."]),
            ("So....", &["So...."]),
            // Chinese
            ("你好。今天天气很好！", &["你好。", "今天天气很好！"]),
            ("你去哪儿？我去学校。", &["你去哪儿？", "我去学校。"]),
            (
                "他说：「好的。」然后走了。",
                &["他说：「好的。」", "然后走了。"],
            ),
            ("第一；第二；第三。", &["第一；", "第二；", "第三。"]),
            ("价格是3.5元。便宜。", &["价格是3.5元。", "便宜。"]),
            ("真的吗？！太好了。", &["真的吗？！", "太好了。"]),
            ("没有标点", &["没有标点"]),
            (
                "（括号里的话。）下一句。",
                &["（括号里的话。）", "下一句。"],
            ),
            // mixed
            ("我喜欢Rust。It is fast!", &["我喜欢Rust。", "It is fast!"]),
            ("That's 很好. 对吗？", &["That's 很好.", "对吗？"]),
            ("Hello!你好。", &["Hello!", "你好。"]),
            (
                "去看看example.com吧。Ok.",
                &["去看看example.com吧。", "Ok."],
            ),
            // nothing speakable is never a sentence
            ("...", &[]),
            ("!!! ???", &[]),
            ("", &[]),
            ("   ", &[]),
            ("Hi. !!! Bye.", &["Hi.", "!!! Bye."]),
            ("Done. ...", &["Done."]),
            ("。。。好。", &["。。。好。"]),
            // lower case after a period is not a new sentence
            ("The end. and more", &["The end.", "and more"]),
            (
                "He said \"stop.\" then left.",
                &["He said \"stop.\" then left."],
            ),
            ("A cat. A dog.", &["A cat.", "A dog."]),
            ("It is 5 p.m. Let's go.", &["It is 5 p.m. Let's go."]),
            ("Numbers: 1. 2. 3.", &["Numbers: 1.", "2.", "3."]),
        ];
        assert!(cases.len() >= 60, "{} cases", cases.len());
        for (input, want) in cases {
            assert_eq!(split(input), *want, "input {input:?}");
        }
    }

    #[test]
    fn sentences_are_emitted_as_soon_as_certain() {
        let mut s = Splitter::new(Config {
            first_min_chars: 0,
            first_min_words: 0,
            max_chars: 500,
        });
        assert!(
            s.push("Hello there.").is_empty(),
            "a closer or more may follow"
        );
        assert_eq!(
            s.push(" "),
            vec!["Hello there."],
            "'.' + space after a plain word is certain"
        );
        assert!(s.push("Use e.g.").is_empty());
        assert!(
            s.push(" ").is_empty(),
            "after an abbreviation the next word decides"
        );
        assert!(s.push("a pen...").is_empty());
        assert!(
            s.push(" ").is_empty(),
            "after an ellipsis the next word decides"
        );
        assert_eq!(s.push("How"), vec!["Use e.g. a pen..."]);
        assert!(s.push(" are you?").is_empty());
        assert_eq!(s.push(" "), vec!["How are you?"], "'?' + space is certain");
        assert_eq!(s.push("好的。"), Vec::<String>::new());
        assert_eq!(
            s.push("再"),
            vec!["好的。"],
            "a CJK terminator is certain once no closer follows"
        );
        assert_eq!(s.finish(), vec!["再"]);
    }

    #[test]
    fn first_fragment_fast_path() {
        let cfg = Config {
            first_min_chars: 24,
            first_min_words: 0,
            max_chars: 500,
        };
        let out = split_with(
            "Looking at this sunset by the sea, what did you feel? And then?",
            cfg.clone(),
        );
        assert_eq!(
            out,
            vec![
                "Looking at this sunset by the sea,",
                "what did you feel?",
                "And then?"
            ]
        );
        // too short for the fast path: the comma is kept inside
        assert_eq!(
            split_with("Hi, there. Bye.", cfg.clone()),
            vec!["Hi, there.", "Bye."]
        );
        // only the first sentence is cut early
        assert_eq!(
            split_with(
                "First sentence ends here now. Second one, with a comma that is long enough, ends.",
                cfg.clone()
            ),
            vec![
                "First sentence ends here now.",
                "Second one, with a comma that is long enough, ends."
            ]
        );
        // numbers are not clause boundaries
        assert_eq!(
            split_with("The mountain is 8,848 metres high and cold.", cfg.clone()),
            vec!["The mountain is 8,848 metres high and cold."]
        );
        assert_eq!(
            split_with("看着这片美丽海边的夕阳和日落，你想到了什么？", cfg),
            vec!["看着这片美丽海边的夕阳和日落，", "你想到了什么？"]
        );
    }

    #[test]
    fn first_fragment_breaks_before_a_phrase_when_no_clause_comes() {
        let cfg = Config {
            first_min_chars: 24,
            first_min_words: 3,
            max_chars: 500,
        };
        assert_eq!(
            split_with(
                "What a lovely evening by the sea. Who were you with when you filmed it?",
                cfg.clone()
            ),
            vec![
                "What a lovely evening",
                "by the sea.",
                "Who were you with when you filmed it?"
            ]
        );
        // no phrase word, a sentence end first, or too few words: the sentence stays whole
        for whole in [
            "Did you enjoy the trip?",
            "Was it fun? And then by the way.",
            "Go to the park.",
        ] {
            let out = split_with(whole, cfg.clone());
            assert_eq!(
                out[0],
                whole.split_inclusive('?').next().unwrap().trim(),
                "{whole}"
            );
        }
        // streaming: the cut comes as soon as the phrase word is complete
        let mut sp = Splitter::new(cfg.clone());
        assert!(sp.push("What a lovely evening b").is_empty());
        assert_eq!(sp.push("y "), vec!["What a lovely evening"]);
        // words with digits or apostrophes are words; other scripts turn it off
        assert_eq!(
            split_with("It's 5 o'clock and we swam.", cfg.clone()),
            vec!["It's 5 o'clock", "and we swam."]
        );
        assert_eq!(
            split_with("Café olé très bien and more.", cfg),
            vec!["Café olé très bien and more."]
        );
    }

    #[test]
    fn long_sentences_are_cut_at_clause_boundaries() {
        let cfg = Config {
            first_min_chars: 0,
            first_min_words: 0,
            max_chars: 40,
        };
        let out = split_with(
            "This is a rather long sentence, which keeps going and going, until it must stop.",
            cfg.clone(),
        );
        assert_eq!(
            out,
            vec![
                "This is a rather long sentence,",
                "which keeps going and going,",
                "until it must stop."
            ]
        );
        for s in &out {
            assert!(s.chars().count() <= 40, "{s}");
        }
        let out = split_with(
            "wordswithoutanyspacesatallthatgoonforeverandever",
            cfg.clone(),
        );
        assert!(out.iter().all(|s| s.chars().count() <= 40));
        assert_eq!(
            out.concat(),
            "wordswithoutanyspacesatallthatgoonforeverandever"
        );
        let out = split_with(
            "no punctuation here but plenty of spaces to break the text apart",
            cfg,
        );
        assert!(
            out.len() >= 2 && out.iter().all(|s| s.chars().count() <= 40),
            "{out:?}"
        );
    }
}
