//! Question writers behind one trait: an OpenAI-compatible streaming chat-completions client
//! (DeepSeek, OpenAI, vLLM, llama.cpp, Ollama all speak it), and the built-in local question
//! writer that keeps the Q&A working offline (never presented as an LLM). Plus the circuit
//! breaker that switches rounds to the local writer while the LLM keeps failing.

use std::pin::Pin;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use futures::{Stream, StreamExt};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

/// A piece of a streamed reply.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// Text.
    Token(String),
    /// Token counts, when the service reports them.
    Usage {
        /// Prompt tokens.
        prompt: u64,
        /// Completion tokens.
        completion: u64,
    },
}

/// Writer errors.
#[derive(Debug, thiserror::Error, Clone, PartialEq)]
pub enum Error {
    /// No connection, or no answer head in time.
    #[error("the LLM could not be reached: {0}")]
    Connect(String),
    /// An HTTP error answer.
    #[error("the LLM answered HTTP {status}: {body}")]
    Status {
        /// Status code.
        status: u16,
        /// The start of its body.
        body: String,
    },
    /// No first token within the limit.
    #[error("the LLM sent no text within {0:?}")]
    FirstTokenTimeout(Duration),
    /// The stream broke after it had started.
    #[error("the LLM stream broke off: {0}")]
    Broken(String),
    /// The stream held something that is not the expected JSON.
    #[error("the LLM sent an unreadable event: {0}")]
    Protocol(String),
}

/// A stream of reply events.
pub type Tokens = Pin<Box<dyn Stream<Item = Result<Event, Error>> + Send>>;

/// What a round's question is written from.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Context {
    /// 1 for the first question, 2 for the follow-up, …
    pub round: u32,
    /// Facts about the moment (duration, orientation, …) as text.
    pub moment: String,
    /// The poster, resized and JPEG-encoded, base64 (round 1).
    pub poster_b64: Option<String>,
    /// The user's profile text from earlier sessions.
    pub memory: Option<String>,
    /// Tags from earlier sessions.
    pub tags: Vec<String>,
    /// Earlier rounds of this session: (question, answer).
    pub history: Vec<(String, String)>,
    /// What the person says in the moment itself (its captions' transcript), when known.
    pub said: Option<String>,
}

/// Something that writes questions as a token stream.
#[async_trait]
pub trait Writer: Send + Sync {
    /// Its name, shown in events and logs.
    fn name(&self) -> &'static str;
    /// Starts writing the question for `ctx`.
    async fn question(&self, ctx: &Context, cancel: CancellationToken) -> Result<Tokens, Error>;
}

/// Settings of the OpenAI-compatible client.
#[derive(Debug, Clone)]
pub struct OpenAiConfig {
    /// Base URL, e.g. `https://api.deepseek.com/v1`; requests go to `{url}/chat/completions`.
    pub url: String,
    /// Model name.
    pub model: String,
    /// Bearer key, if the service needs one.
    pub api_key: Option<String>,
    /// Time allowed to connect and get the answer head.
    pub connect_timeout: Duration,
    /// Time allowed until the first text token.
    pub first_token_timeout: Duration,
    /// Upper bound on reply tokens.
    pub max_tokens: u32,
}

/// The OpenAI-compatible streaming client.
#[derive(Debug, Clone)]
pub struct OpenAi {
    config: OpenAiConfig,
    http: reqwest::Client,
}

const SYSTEM: &str = "You are the friendly interviewer of Moments, a dating app where people post \
short video moments. Ask exactly one short, warm, specific question (at most two sentences) that \
helps the user talk about themselves. In the first round, ask about what the moment shows; \
later, dig deeper into their last answer. Use what you remember about them when it fits. Reply \
in the language the user speaks; no lists, no emojis.";

impl OpenAi {
    /// A client for `config`.
    pub fn new(config: OpenAiConfig) -> OpenAi {
        let http = reqwest::Client::builder()
            .connect_timeout(config.connect_timeout)
            .build()
            .unwrap_or_default();
        OpenAi { config, http }
    }

    /// The chat messages for a round (public for tests and the benchmark).
    pub fn messages(ctx: &Context) -> Vec<Value> {
        let mut messages = vec![json!({"role": "system", "content": SYSTEM})];
        let mut intro = format!("My moment: {}.", ctx.moment);
        if let Some(m) = &ctx.memory {
            intro.push_str(&format!(
                " What you remember about me from earlier sessions: {m}"
            ));
        }
        if !ctx.tags.is_empty() {
            intro.push_str(&format!(" Tags: {}.", ctx.tags.join(", ")));
        }
        if let Some(said) = &ctx.said {
            intro.push_str(&format!(" In the video I say: \"{said}\""));
        }
        let first: Value = match &ctx.poster_b64 {
            Some(b64) => json!([
                {"type": "text", "text": format!("{intro} Here is a frame of it.")},
                {"type": "image_url", "image_url": {"url": format!("data:image/jpeg;base64,{b64}")}}
            ]),
            None => json!(intro),
        };
        messages.push(json!({"role": "user", "content": first}));
        for (q, a) in &ctx.history {
            messages.push(json!({"role": "assistant", "content": q}));
            messages.push(json!({"role": "user", "content": a}));
        }
        messages
    }

    /// Streams a completion for `messages`.
    pub async fn complete(
        &self,
        messages: Vec<Value>,
        cancel: CancellationToken,
    ) -> Result<Tokens, Error> {
        let body = json!({
            "model": self.config.model,
            "messages": messages,
            "stream": true,
            "stream_options": {"include_usage": true},
            "max_tokens": self.config.max_tokens,
            "temperature": 0.8,
        });
        let url = format!("{}/chat/completions", self.config.url.trim_end_matches('/'));
        let mut req = self.http.post(&url).json(&body);
        if let Some(k) = &self.config.api_key {
            req = req.bearer_auth(k);
        }
        let resp = tokio::select! {
            r = tokio::time::timeout(self.config.connect_timeout, req.send()) => match r {
                Ok(Ok(resp)) => resp,
                Ok(Err(e)) => return Err(Error::Connect(e.to_string())),
                Err(_) => return Err(Error::Connect(format!("no answer within {:?}", self.config.connect_timeout))),
            },
            _ = cancel.cancelled() => return Err(Error::Broken("cancelled".into())),
        };
        let status = resp.status();
        if !status.is_success() {
            let text = resp.text().await.unwrap_or_default();
            return Err(Error::Status {
                status: status.as_u16(),
                body: text.chars().take(300).collect(),
            });
        }
        let first_token = self.config.first_token_timeout;
        let bytes = resp.bytes_stream();
        struct St<S> {
            bytes: S,
            buf: String,
            pending: std::collections::VecDeque<Result<Event, Error>>,
            started: Instant,
            got_token: bool,
            done: bool,
            cancel: CancellationToken,
        }
        let st = St {
            bytes,
            buf: String::new(),
            pending: Default::default(),
            started: Instant::now(),
            got_token: false,
            done: false,
            cancel,
        };
        let stream = futures::stream::unfold(st, move |mut st| async move {
            loop {
                if let Some(ev) = st.pending.pop_front() {
                    if matches!(ev, Ok(Event::Token(_))) {
                        st.got_token = true;
                    }
                    if ev.is_err() {
                        st.done = true;
                    }
                    return Some((ev, st));
                }
                if st.done {
                    return None;
                }
                let wait = if st.got_token {
                    Duration::from_secs(60)
                } else {
                    first_token.saturating_sub(st.started.elapsed())
                };
                let next = tokio::select! {
                    n = tokio::time::timeout(wait, st.bytes.next()) => n,
                    _ = st.cancel.cancelled() => return None,
                };
                match next {
                    Err(_) if !st.got_token => {
                        st.done = true;
                        return Some((Err(Error::FirstTokenTimeout(first_token)), st));
                    }
                    Err(_) => {
                        st.done = true;
                        return Some((Err(Error::Broken("stalled for 60 s".into())), st));
                    }
                    Ok(None) => {
                        st.done = true;
                        if !st.got_token {
                            return Some((Err(Error::Broken("ended without text".into())), st));
                        }
                        return None;
                    }
                    Ok(Some(Err(e))) => {
                        st.done = true;
                        return Some((Err(Error::Broken(e.to_string())), st));
                    }
                    Ok(Some(Ok(chunk))) => {
                        st.buf.push_str(&String::from_utf8_lossy(&chunk));
                        while let Some(i) = st.buf.find('\n') {
                            let line: String = st.buf.drain(..=i).collect();
                            let line = line.trim();
                            let Some(data) = line.strip_prefix("data:") else {
                                continue;
                            };
                            let data = data.trim();
                            if data == "[DONE]" {
                                st.done = true;
                                break;
                            }
                            for ev in parse_chunk(data) {
                                st.pending.push_back(ev);
                            }
                        }
                        if st.buf.len() > MAX_EVENT_LINE {
                            // what came before it still goes out, then the error
                            st.buf = String::new();
                            let kib = MAX_EVENT_LINE / 1024;
                            let e = format!("a line of over {kib} KiB with no end");
                            st.pending.push_back(Err(Error::Protocol(e)));
                        }
                    }
                }
            }
        });
        Ok(Box::pin(stream))
    }
}

/// The longest line of the event stream kept while waiting for its end: a chat-completions
/// event is a few hundred bytes, so a server sending more without a newline is not speaking
/// the protocol, and its bytes are not buffered without bound.
pub const MAX_EVENT_LINE: usize = 64 * 1024;

/// Reads one SSE `data:` payload of a chat-completions stream.
pub fn parse_chunk(data: &str) -> Vec<Result<Event, Error>> {
    let v: Value = match serde_json::from_str(data) {
        Ok(v) => v,
        Err(_) => return vec![Err(Error::Protocol(data.chars().take(120).collect()))],
    };
    if let Some(err) = v.get("error") {
        return vec![Err(Error::Broken(err.to_string()))];
    }
    let mut out = Vec::new();
    if let Some(t) = v["choices"][0]["delta"]["content"].as_str()
        && !t.is_empty()
    {
        out.push(Ok(Event::Token(t.to_string())));
    }
    if let Some(u) = v.get("usage").filter(|u| !u.is_null()) {
        out.push(Ok(Event::Usage {
            prompt: u["prompt_tokens"].as_u64().unwrap_or(0),
            completion: u["completion_tokens"].as_u64().unwrap_or(0),
        }));
    }
    out
}

#[async_trait]
impl Writer for OpenAi {
    fn name(&self) -> &'static str {
        "llm"
    }

    async fn question(&self, ctx: &Context, cancel: CancellationToken) -> Result<Tokens, Error> {
        self.complete(Self::messages(ctx), cancel).await
    }
}

/// The built-in local question writer: questions from the moment's facts, the user's tags and
/// the words of their last answer. Deterministic, instant, offline.
#[derive(Debug, Clone, Default)]
pub struct Local;

const STOP: &[&str] = &[
    "the", "a", "an", "and", "or", "but", "i", "we", "you", "it", "was", "were", "is", "are", "to",
    "of", "in", "on", "at", "with", "my", "our", "me", "us", "that", "this", "for", "so", "then",
    "there", "they", "he", "she", "had", "have", "has", "be", "been", "just", "really", "very",
    "what", "when", "where", "who", "how", "did", "do", "does", "not", "no", "yes", "from",
    "about", "as", "by", "up", "out", "all", "some", "too", "also", "like", "went", "got", "get",
    "his", "her", "their", "them", "its", "if", "into", "after", "before",
];

/// The most telling words of a text (longest non-stop words first), for tags and follow-ups.
pub fn keywords(text: &str, n: usize) -> Vec<String> {
    let mut words: Vec<String> = text
        .split(|c: char| !c.is_alphanumeric() && c != '\'')
        .map(|w| w.trim_matches('\'').to_lowercase())
        .filter(|w| w.chars().count() >= 3 && !STOP.contains(&w.as_str()))
        .collect();
    let mut seen = std::collections::HashSet::new();
    words.retain(|w| seen.insert(w.clone()));
    words.sort_by_key(|w| std::cmp::Reverse(w.chars().count()));
    words.truncate(n);
    words
}

/// The first sentence of what someone said, short enough to quote back (at most 12 words).
fn quote(said: &str) -> Option<String> {
    let first = said
        .split_inclusive(['.', '?', '!'])
        .map(str::trim)
        .find(|s| s.split_whitespace().count() >= 2)?;
    let words: Vec<&str> = first.split_whitespace().collect();
    let text = if words.len() > 12 {
        format!("{}…", words[..12].join(" "))
    } else {
        let t = words.join(" ");
        if t.ends_with(['.', '?', '!']) {
            t
        } else {
            format!("{t}.")
        }
    };
    Some(format!("\u{201c}{text}\u{201d}"))
}

impl Local {
    /// The question text for `ctx`: round 1 quotes what the person said in the moment when its
    /// captions found speech.
    pub fn text(ctx: &Context) -> String {
        match ctx.history.last() {
            None => {
                let memory = ctx
                    .tags
                    .first()
                    .map(|t| format!("Last time you told me about {t}. "))
                    .unwrap_or_default();
                if let Some(quote) = ctx.said.as_deref().and_then(quote) {
                    return format!(
                        "{memory}In your moment you said: {quote} What was happening there, and why did you want to share it?"
                    );
                }
                format!(
                    "{memory}What was happening in this moment, and why did you want to share it? Tell me what you felt when you filmed it."
                )
            }
            Some((_, answer)) => match keywords(answer, 2).as_slice() {
                [a, b, ..] => format!(
                    "You mentioned {a} and {b}. What made {a} special for you, and who was there with you?"
                ),
                [a] => format!(
                    "You mentioned {a}. What made it special for you, and would you do it again?"
                ),
                [] => {
                    "I did not quite catch that. What happened just before you filmed this moment?"
                        .into()
                }
            },
        }
    }
}

#[async_trait]
impl Writer for Local {
    fn name(&self) -> &'static str {
        "local question writer"
    }

    async fn question(&self, ctx: &Context, _cancel: CancellationToken) -> Result<Tokens, Error> {
        let text = Self::text(ctx);
        // word by word, like a stream, so the same pipeline speaks it
        let tokens: Vec<Result<Event, Error>> = text
            .split_inclusive(' ')
            .map(|w| Ok(Event::Token(w.to_string())))
            .collect();
        Ok(Box::pin(futures::stream::iter(tokens)))
    }
}

/// Circuit breaker around the LLM (sans-IO: callers pass `now`). After `threshold`
/// consecutive failures it opens for `cooldown`; then one trial round is let through.
#[derive(Debug, Clone)]
pub struct Breaker {
    threshold: u32,
    cooldown: Duration,
    failures: u32,
    open_until: Option<Instant>,
}

impl Breaker {
    /// A closed breaker.
    pub fn new(threshold: u32, cooldown: Duration) -> Breaker {
        Breaker {
            threshold: threshold.max(1),
            cooldown,
            failures: 0,
            open_until: None,
        }
    }

    /// Whether the LLM may be tried now.
    pub fn allow(&self, now: Instant) -> bool {
        self.open_until.is_none_or(|until| now >= until)
    }

    /// Records a good round.
    pub fn success(&mut self) {
        self.failures = 0;
        self.open_until = None;
    }

    /// Records a failure; returns true when this opened the breaker.
    pub fn failure(&mut self, now: Instant) -> bool {
        self.failures += 1;
        if self.failures >= self.threshold {
            let was_closed = self.allow(now);
            self.open_until = Some(now + self.cooldown);
            return was_closed;
        }
        false
    }

    /// True while open.
    pub fn is_open(&self, now: Instant) -> bool {
        !self.allow(now)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_openai_chunks() {
        let c = parse_chunk(r#"{"choices":[{"delta":{"content":"Hel"}}]}"#);
        assert_eq!(c, vec![Ok(Event::Token("Hel".into()))]);
        let c = parse_chunk(
            r#"{"choices":[{"delta":{}}],"usage":{"prompt_tokens":12,"completion_tokens":7}}"#,
        );
        assert_eq!(
            c,
            vec![Ok(Event::Usage {
                prompt: 12,
                completion: 7
            })]
        );
        assert!(
            parse_chunk(r#"{"choices":[{"delta":{"role":"assistant"}}],"usage":null}"#).is_empty()
        );
        assert!(matches!(
            parse_chunk("not json")[0],
            Err(Error::Protocol(_))
        ));
        assert!(matches!(
            parse_chunk(r#"{"error":{"message":"overloaded"}}"#)[0],
            Err(Error::Broken(_))
        ));
    }

    #[test]
    fn breaker_opens_after_consecutive_failures_and_half_opens_after_cooldown() {
        let t0 = Instant::now();
        let mut b = Breaker::new(3, Duration::from_secs(30));
        assert!(b.allow(t0));
        assert!(!b.failure(t0));
        b.success();
        assert!(!b.failure(t0));
        assert!(!b.failure(t0));
        assert!(b.failure(t0), "third consecutive failure opens it");
        assert!(!b.allow(t0 + Duration::from_secs(10)));
        assert!(
            b.allow(t0 + Duration::from_secs(31)),
            "one trial after the cooldown"
        );
        assert!(
            b.failure(t0 + Duration::from_secs(31)),
            "a failed trial opens it again"
        );
        assert!(!b.allow(t0 + Duration::from_secs(40)));
        b.success();
        assert!(b.allow(t0 + Duration::from_secs(40)));
    }

    #[test]
    fn round_one_quotes_what_the_moment_says() {
        let ctx = Context {
            round: 1,
            said: Some("The noodles were the best part. We queued for an hour".into()),
            ..Default::default()
        };
        let q = Local::text(&ctx);
        assert!(
            q.contains("\u{201c}The noodles were the best part.\u{201d}"),
            "{q}"
        );
        let plain = Local::text(&Context {
            round: 1,
            ..Default::default()
        });
        assert_ne!(q, plain);
        let m = OpenAi::messages(&ctx);
        assert!(m[1]["content"].as_str().unwrap().contains("noodles"));
        assert_eq!(quote("Hi"), None);
    }

    #[test]
    fn local_writer_uses_memory_and_answers() {
        let ctx = Context {
            round: 1,
            tags: vec!["hiking".into()],
            ..Default::default()
        };
        assert!(Local::text(&ctx).starts_with("Last time you told me about hiking."));
        let ctx = Context {
            round: 2,
            history: vec![(
                "q".into(),
                "We had dumplings at the night market with my sister".into(),
            )],
            ..Default::default()
        };
        let q = Local::text(&ctx);
        assert!(q.contains("dumplings") && q.contains("market"), "{q}");
        assert_eq!(keywords("the the the", 3), Vec::<String>::new());
    }

    #[test]
    fn messages_carry_poster_memory_and_history() {
        let ctx = Context {
            round: 2,
            moment: "a 12 s portrait video".into(),
            poster_b64: Some("AAAA".into()),
            memory: Some("likes hiking".into()),
            tags: vec!["hiking".into()],
            history: vec![("Where was this?".into(), "At the beach".into())],
            said: None,
        };
        let m = OpenAi::messages(&ctx);
        let text = serde_json::to_string(&m).unwrap();
        assert!(text.contains("data:image/jpeg;base64,AAAA"));
        assert!(text.contains("likes hiking") && text.contains("Tags: hiking"));
        assert_eq!(m.last().unwrap()["content"], "At the beach");
    }
}
