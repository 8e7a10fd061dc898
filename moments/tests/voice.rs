//! Voice Q&A end to end over the WebSocket, against a local stand-in for the LLM (an SSE
//! server streaming a five-sentence reply token by token with realistic delays — the only test
//! double, standing in for a paid API). Everything else is real: eSpeak NG, Opus via GStreamer,
//! pocketsphinx, the queue and its summary job, the database (each session test runs on SQLite
//! and on PostgreSQL).

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::extract::State;
use axum::response::IntoResponse;
use axum::routing::post;
use common::moment::{self, State as MomentState};
use common::store::{Key, PutOptions};
use common::testing::PgTestDb;
use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

const REPLY: &str = "What a lovely evening by the sea. Who were you with when you filmed it? \
Did you plan the trip, or was it a surprise? I would love to hear what you ate. \
Tell me what made that moment special for you.";

/// How the stand-in behaves.
const NORMAL: u32 = 0;
const FAIL: u32 = 1;
const STALL: u32 = 2;
const BREAK: u32 = 3;
/// 200 with an HTML error page instead of an event stream.
const HTML: u32 = 4;
/// An event stream whose events are not JSON.
const GARBLED: u32 = 5;
/// Words, fast and forever: a server that ignores `max_tokens`.
const ENDLESS: u32 = 6;
/// Bytes without a newline, forever.
const LONG_LINE: u32 = 7;

#[derive(Clone, Default)]
struct Fake {
    mode: Arc<AtomicU32>,
    requests: Arc<Mutex<Vec<Value>>>,
    /// ms since UNIX epoch when the last token of the last reply was sent
    ended_at: Arc<Mutex<Option<Instant>>>,
    /// tokens actually sent in the last reply
    sent: Arc<AtomicUsize>,
}

async fn chat(State(f): State<Fake>, body: String) -> impl IntoResponse {
    let req: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
    f.requests.lock().unwrap().push(req.clone());
    let summary = req["messages"][0]["content"]
        .as_str()
        .unwrap_or("")
        .contains("memory of a user");
    let mode = f.mode.load(Ordering::SeqCst);
    if mode == FAIL {
        return (axum::http::StatusCode::SERVICE_UNAVAILABLE, "overloaded").into_response();
    }
    if mode == HTML {
        let page = "<html><body><h1>502 Bad Gateway</h1></body></html>\n";
        return ([("content-type", "text/html")], page).into_response();
    }
    let text = if summary {
        r#"{"summary": "Spent an evening at the night market with their sister, eating dumplings.", "tags": ["dumplings", "sister", "night market"]}"#.to_string()
    } else {
        REPLY.to_string()
    };
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<String, std::io::Error>>(4);
    let f2 = f.clone();
    tokio::spawn(async move {
        if mode == STALL {
            tokio::time::sleep(Duration::from_secs(30)).await;
            return;
        }
        tokio::time::sleep(Duration::from_millis(250)).await; // time to first token
        if mode == GARBLED {
            for junk in [
                "{\"choices\": [{\"delta\": {\"content\": \"Wh",
                "<<<\u{fffd}>>>",
                "]]",
            ] {
                if tx.send(Ok(format!("data: {junk}\n\n"))).await.is_err() {
                    return;
                }
            }
            return;
        }
        if mode == LONG_LINE {
            let block = "x".repeat(16 * 1024);
            while tx.send(Ok(block.clone())).await.is_ok() {}
            return;
        }
        if mode == ENDLESS {
            for i in 0u64.. {
                let w = if i % 12 == 11 { "la. " } else { "la " };
                let chunk = json!({"choices": [{"delta": {"content": w}}]});
                if tx.send(Ok(format!("data: {chunk}\n\n"))).await.is_err() {
                    return;
                }
                f2.sent.fetch_add(1, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        }
        f2.sent.store(0, Ordering::SeqCst);
        let words: Vec<&str> = text.split_inclusive(' ').collect();
        for (i, w) in words.iter().enumerate() {
            if mode == BREAK && i == 6 {
                let _ = tx
                    .send(Err(std::io::Error::other("connection reset")))
                    .await;
                return;
            }
            let chunk = json!({"choices": [{"delta": {"content": w}}]});
            if tx.send(Ok(format!("data: {chunk}\n\n"))).await.is_err() {
                return; // the client went away: stop generating
            }
            f2.sent.fetch_add(1, Ordering::SeqCst);
            tokio::time::sleep(Duration::from_millis(45)).await;
        }
        *f2.ended_at.lock().unwrap() = Some(Instant::now());
        let usage = json!({"choices": [], "usage": {"prompt_tokens": 321, "completion_tokens": words.len()}});
        let _ = tx.send(Ok(format!("data: {usage}\n\n"))).await;
        let _ = tx.send(Ok("data: [DONE]\n\n".to_string())).await;
    });
    let stream =
        futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|x| (x, rx)) });
    axum::response::Response::builder()
        .header("content-type", "text/event-stream")
        .body(Body::from_stream(stream))
        .unwrap()
}

async fn fake_llm() -> (String, Fake) {
    let f = Fake::default();
    let app = Router::new()
        .route("/v1/chat/completions", post(chat))
        .with_state(f.clone());
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(l, app).await });
    (format!("http://{addr}/v1"), f)
}

/// A session test as two tests: `NAME::sqlite` and `NAME::postgres`.
macro_rules! on_both {
    ($name:ident) => {
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() {
                super::$name(None).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() {
                // None only with the explicit opt-out MOMENTS_TEST_SKIP_PG=1 (it says so)
                if let Some(pg) = common::testing::fresh_pg().await {
                    super::$name(Some(pg)).await
                }
            }
        }
    };
}

struct Env {
    running: moments::app::Running,
    base: String,
    addr: SocketAddr,
    token: String,
    moment: String,
    dir: tempfile::TempDir,
}

/// Starts every role on SQLite, or on PostgreSQL when `pg` is given.
async fn start(
    pg: &Option<PgTestDb>,
    llm: Option<String>,
    tweak: impl FnOnce(&mut moments::Config),
) -> Env {
    let dir = tempfile::tempdir().unwrap();
    let mut config = moments::Config {
        data_dir: dir.path().join("data"),
        ..Default::default()
    };
    config.http.addr = "127.0.0.1:0".parse().unwrap();
    config.quic.addr = "127.0.0.1:0".parse().unwrap();
    config.queue.poll_ms = 100;
    config.voice.llm_url = llm;
    config.voice.llm_first_token_timeout_ms = 1500;
    config.voice.breaker_failures = 2;
    config.database.url = pg.as_ref().map(|p| p.url.clone());
    tweak(&mut config);
    let running = moments::app::start(config, moments::app::all_roles())
        .await
        .unwrap();
    let s = running.services.clone();
    // a ready portrait moment with a poster, as the transcoder leaves it
    let id = common::ids::new_id();
    moment::create(&s.db, &id, "alice", MomentState::Queued, None)
        .await
        .unwrap();
    moment::set_ready(&s.db, &id, &json!({"duration": 12.0, "renditions": [{"name": "720p", "width": 720, "height": 1280}], "poster_key": format!("hls/{id}/poster.jpg")}), None)
        .await
        .unwrap();
    let poster = dir.path().join("poster.jpg");
    let out = std::process::Command::new("ffmpeg")
        .args([
            "-v",
            "error",
            "-y",
            "-f",
            "lavfi",
            "-i",
            "testsrc2=size=720x1280",
            "-frames:v",
            "1",
        ])
        .arg(&poster)
        .output()
        .unwrap();
    assert!(out.status.success());
    s.store
        .put_file(
            &Key::new(format!("hls/{id}/poster.jpg")).unwrap(),
            &poster,
            &PutOptions::default(),
        )
        .await
        .unwrap();
    let (private, _) = common::auth::ensure_dev_key(&dir.path().join("data")).unwrap();
    let token = common::auth::mint(&private, "alice", Duration::from_secs(3600)).unwrap();
    Env {
        base: format!("http://{}", running.http_addr),
        addr: running.http_addr,
        running,
        token,
        moment: id,
        dir,
    }
}

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn open(env: &Env, audio: &str) -> Ws {
    let http = reqwest::Client::new();
    let s: Value = http
        .post(format!("{}/v1/moments/{}/qa", env.base, env.moment))
        .bearer_auth(&env.token)
        .json(&json!({"audio": audio}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let mut req = format!("ws://{}{}", env.addr, s["ws_url"].as_str().unwrap())
        .into_client_request()
        .unwrap();
    req.headers_mut().insert(
        "authorization",
        format!("Bearer {}", env.token).parse().unwrap(),
    );
    let (ws, _) = tokio_tungstenite::connect_async(req).await.unwrap();
    ws
}

/// Everything a round sent, with arrival times.
#[derive(Default, Debug)]
struct Round {
    events: Vec<(Instant, Value)>,
    audio: Vec<Vec<u8>>,
    first_binary: Option<Instant>,
}

impl Round {
    fn of(&self, t: &str) -> Vec<&Value> {
        self.events
            .iter()
            .filter(|(_, v)| v["type"] == t)
            .map(|(_, v)| v)
            .collect()
    }
}

/// Reads until `stop` says so (or the socket ends).
async fn read_until(ws: &mut Ws, mut stop: impl FnMut(&Value) -> bool) -> Round {
    let mut r = Round::default();
    let mut current: Option<Vec<u8>> = None;
    loop {
        let msg = tokio::time::timeout(Duration::from_secs(60), ws.next())
            .await
            .expect("the server went quiet");
        let Some(Ok(msg)) = msg else { break };
        match msg {
            Message::Text(t) => {
                let v: Value = serde_json::from_str(t.as_str()).unwrap();
                match v["type"].as_str() {
                    Some("audio_start") => current = Some(Vec::new()),
                    Some("audio_end") => r.audio.push(current.take().unwrap_or_default()),
                    _ => {}
                }
                r.events.push((Instant::now(), v.clone()));
                if stop(&v) {
                    break;
                }
            }
            Message::Binary(b) => {
                r.first_binary.get_or_insert(Instant::now());
                current.get_or_insert_with(Vec::new).extend_from_slice(&b);
            }
            Message::Close(_) => break,
            _ => {}
        }
    }
    r
}

fn espeak_wav(dir: &std::path::Path, text: &str) -> Vec<u8> {
    let p = dir.join("answer.wav");
    let out = std::process::Command::new("espeak-ng")
        .args(["-v", "en-us", "-w"])
        .arg(&p)
        .arg(text)
        .output()
        .unwrap();
    assert!(out.status.success());
    std::fs::read(p).unwrap()
}

async fn send_answer(ws: &mut Ws, format: &str, audio: &[u8]) {
    ws.send(Message::Text(
        json!({"type": "answer_start", "format": format})
            .to_string()
            .into(),
    ))
    .await
    .unwrap();
    for chunk in audio.chunks(16 * 1024) {
        ws.send(Message::Binary(chunk.to_vec().into()))
            .await
            .unwrap();
    }
    ws.send(Message::Text(
        json!({"type": "answer_done"}).to_string().into(),
    ))
    .await
    .unwrap();
}

fn ogg_seconds(dir: &std::path::Path, name: &str, bytes: &[u8]) -> f64 {
    let p = dir.join(name);
    std::fs::write(&p, bytes).unwrap();
    let out = std::process::Command::new("ffprobe")
        .args([
            "-v",
            "error",
            "-show_entries",
            "format=duration",
            "-of",
            "csv=p=0",
        ])
        .arg(&p)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{name} does not decode: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // and it decodes cleanly to the end
    let dec = std::process::Command::new("ffmpeg")
        .args(["-v", "error", "-i"])
        .arg(&p)
        .args(["-f", "null", "-"])
        .output()
        .unwrap();
    assert!(
        dec.status.success() && dec.stderr.is_empty(),
        "{name}: {}",
        String::from_utf8_lossy(&dec.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
}

on_both!(a_session_streams_audio_before_the_llm_finishes_and_remembers_the_answers);
async fn a_session_streams_audio_before_the_llm_finishes_and_remembers_the_answers(
    pg: Option<PgTestDb>,
) {
    let (llm, fake) = fake_llm().await;
    // with the neural engines when they are installed (CI installs them), as users hear it
    let models = common::testing::voice_models();
    let neural = models.is_some();
    let env = start(&pg, Some(llm), |c| c.voice.models_dir = models).await;
    let mut ws = open(&env, "ogg").await;

    // round 1: the question streams; audio starts long before the LLM has finished
    let r1 = read_until(&mut ws, |v| v["type"] == "metrics").await;
    let ended = fake.ended_at.lock().unwrap().expect("the LLM reply ended");
    let first_audio = r1.first_binary.expect("audio arrived");
    assert!(
        first_audio < ended,
        "first audio must come before the LLM stream ends"
    );
    assert!(
        ended.duration_since(first_audio) > Duration::from_millis(500),
        "well before: {:?}",
        ended.duration_since(first_audio)
    );
    let sentences = r1.of("sentence");
    assert!(sentences.len() >= 5, "{sentences:?}");
    assert_eq!(r1.of("question_delta")[0]["writer"], "llm");
    let question: String = r1
        .of("question_delta")
        .iter()
        .map(|v| v["text"].as_str().unwrap())
        .collect();
    assert_eq!(question, REPLY);
    let m = &r1.of("metrics")[0];
    assert_eq!(m["round"], 1);
    assert_eq!(m["tts_engine"], if neural { "piper" } else { "espeak-ng" });
    assert!(m["llm_ttft_ms"].as_u64().unwrap() >= 200);
    assert!(
        m["first_audio_ms"].as_u64().unwrap() < m["llm_ttft_ms"].as_u64().unwrap() + 2000,
        "{m}"
    );
    // every sentence's audio is its own decodable Ogg/Opus stream, and together they make
    // the whole spoken question
    assert_eq!(r1.audio.len(), sentences.len());
    let total: f64 = r1
        .audio
        .iter()
        .enumerate()
        .map(|(i, a)| {
            assert!(a.starts_with(b"OggS"), "sentence {i} is not Ogg");
            ogg_seconds(env.dir.path(), &format!("s{i}.ogg"), a)
        })
        .sum();
    let reported = m["audio_seconds"].as_f64().unwrap();
    assert!(
        (total - reported).abs() < 0.1 * sentences.len() as f64,
        "decoded {total} s, synthesised {reported} s"
    );
    // round 1's request carried the poster and the moment's facts
    let req1 = fake.requests.lock().unwrap()[0].clone();
    let text = req1.to_string();
    assert!(text.contains("data:image/jpeg;base64,"), "poster inlined");
    assert!(text.contains("12-second portrait video"), "{text}");
    // the moment changes elsewhere (another connection pool with its own change channel, as
    // another node would): the next question is written from the new facts
    let other = common::db::Db::connect(
        &pg.as_ref().map_or_else(
            || {
                format!(
                    "sqlite://{}",
                    env.dir.path().join("data/moments.db").display()
                )
            },
            |p| p.url.clone(),
        ),
        1,
    )
    .await
    .unwrap();
    sqlx::query("UPDATE moments SET renditions = $1 WHERE id = $2")
        .bind(
            json!({"duration": 31.0, "renditions": [{"name": "720p", "width": 1280, "height": 720}]})
                .to_string(),
        )
        .bind(&env.moment)
        .execute(other.pool())
        .await
        .unwrap();
    other.notify(common::db::Change::Moment(env.moment.clone()));

    // the answer: with the neural engines, spoken by Piper (a voice much closer to a person's
    // than eSpeak NG's, which even Whisper mishears: "I am simply with my sister at the night
    // market") as Ogg/Opus from /v1/tts; otherwise a WAV made with espeak-ng
    let said = "I ate dumplings with my sister at the night market.";
    if neural {
        let ogg = reqwest::Client::new()
            .post(format!("{}/v1/tts", env.base))
            .bearer_auth(&env.token)
            .json(&json!({"text": said}))
            .send()
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap();
        send_answer(&mut ws, "ogg", &ogg).await;
    } else {
        send_answer(&mut ws, "wav", &espeak_wav(env.dir.path(), said)).await;
    }
    let a1 = read_until(&mut ws, |v| v["type"] == "round_done").await;
    let heard = a1.of("transcript")[0];
    let transcript = heard["text"].as_str().unwrap().to_string();
    if neural {
        assert_eq!(heard["engine"], "whisper");
        let words = transcript.to_lowercase();
        // Piper samples its voice with noise, so a word may vary run to run: 2 of 3 key phrases
        let got = ["dumplings", "sister", "night market"]
            .iter()
            .filter(|w| words.contains(*w))
            .count();
        assert!(got >= 2, "Whisper missed the answer: {transcript:?}");
    } else {
        assert_eq!(heard["engine"], "pocketsphinx");
        assert!(!transcript.is_empty(), "pocketsphinx heard nothing");
    }
    assert_eq!(a1.of("round_done")[0]["round"], 1);

    // round 2 digs into the transcript
    let r2 = read_until(&mut ws, |v| v["type"] == "metrics").await;
    assert_eq!(r2.of("metrics")[0]["round"], 2);
    let req2 = fake.requests.lock().unwrap()[1].clone();
    let msgs = req2["messages"].as_array().unwrap();
    assert_eq!(
        msgs.last().unwrap()["content"].as_str().unwrap(),
        transcript,
        "round 2 runs on the transcript"
    );
    assert!(
        req2.to_string().contains("31-second landscape video"),
        "round 2 knows what the moment became elsewhere: {req2}"
    );
    other.close().await;
    send_answer(
        &mut ws,
        "wav",
        &espeak_wav(env.dir.path(), "We laughed a lot."),
    )
    .await;
    let a2 = read_until(&mut ws, |_| false).await; // until the server closes
    assert_eq!(a2.of("round_done")[0]["round"], 2);

    // transcripts are stored with the moment, and the usage is recorded
    let s = &env.running.services;
    let sid: String = sqlx::query_scalar("SELECT id FROM qa_sessions WHERE moment_id = $1")
        .bind(&env.moment)
        .fetch_one(s.db.pool())
        .await
        .unwrap();
    let turns = asr_tts::store::turns(&s.db, &sid).await.unwrap();
    assert_eq!(turns.len(), 2);
    assert_eq!(turns[0].2.as_deref(), Some(transcript.as_str()));
    let (prompt, completion, local) = asr_tts::store::usage(&s.db, &sid).await.unwrap();
    assert_eq!(prompt, 642);
    assert!(completion > 20);
    assert_eq!(local, 0);
    let http = reqwest::Client::new();
    let metrics = http
        .get(format!("{}/metrics", env.base))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("moments_voice_llm_tokens_total{kind=\"prompt\"} 642"),
        "{metrics}"
    );
    assert!(
        metrics.contains("moments_voice_rounds_total{writer=\"llm\"} 2"),
        "{metrics}"
    );
    assert!(
        metrics.contains("moments_voice_first_audio_seconds_count 2"),
        "{metrics}"
    );

    // the summary job writes the memory, readable at /v1/users/me/profile …
    let deadline = Instant::now() + Duration::from_secs(30);
    let profile = loop {
        let p: Value = http
            .get(format!("{}/v1/users/me/profile", env.base))
            .bearer_auth(&env.token)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if !p["tags"].as_array().unwrap().is_empty() {
            break p;
        }
        assert!(Instant::now() < deadline, "no memory written");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(
        profile["tags"]
            .as_array()
            .unwrap()
            .iter()
            .any(|t| t == "dumplings"),
        "{profile}"
    );

    // … and the next session's first question carries it
    let before = fake.requests.lock().unwrap().len();
    let mut ws2 = open(&env, "ogg").await;
    let _ = read_until(&mut ws2, |v| v["type"] == "metrics").await;
    let next = fake.requests.lock().unwrap()[before].to_string();
    assert!(
        next.contains("night market with their sister") && next.contains("Tags: dumplings"),
        "{next}"
    );
    env.running.stop().await.unwrap();
}

on_both!(a_failing_llm_trips_the_breaker_and_rounds_still_complete_with_the_local_writer);
async fn a_failing_llm_trips_the_breaker_and_rounds_still_complete_with_the_local_writer(
    pg: Option<PgTestDb>,
) {
    let (llm, fake) = fake_llm().await;
    let env = start(&pg, Some(llm), |_| {}).await;
    fake.mode.store(FAIL, Ordering::SeqCst);
    for session in 0..3 {
        let before = fake.requests.lock().unwrap().len();
        let mut ws = open(&env, "pcm16").await;
        let r = read_until(&mut ws, |v| v["type"] == "metrics").await;
        let m = &r.of("metrics")[0];
        assert_eq!(m["writer"], "local question writer", "session {session}");
        assert!(!r.audio.is_empty(), "the round still speaks");
        let notice = &r.of("error")[0];
        assert_eq!(notice["degraded"], true);
        let hits = fake.requests.lock().unwrap().len() - before;
        if session < 2 {
            assert_eq!(hits, 2, "one retry before the first token");
        } else {
            assert_eq!(hits, 0, "the breaker is open: the LLM is not even asked");
            assert!(notice["message"].as_str().unwrap().contains("circuit open"));
        }
        // pcm16 question audio comes with its rate
        let start = r.of("audio_start")[0];
        assert_eq!(start["format"], "pcm16");
        assert!(start["sample_rate"].as_u64().unwrap() > 8000);
    }
    env.running.stop().await.unwrap();
}

/// One session's round 1 up to its first question text: the writer, the LLM requests it
/// made, and the error notices before it.
async fn first_question(env: &Env, fake: &Fake) -> (String, usize, Vec<String>) {
    let before = fake.requests.lock().unwrap().len();
    let mut ws = open(env, "pcm16").await;
    let r = read_until(&mut ws, |v| v["type"] == "question_delta").await;
    let writer = r.of("question_delta")[0]["writer"]
        .as_str()
        .unwrap()
        .to_string();
    let errors = r
        .of("error")
        .iter()
        .map(|e| e["message"].as_str().unwrap().to_string())
        .collect();
    let _ = ws.close(None).await;
    (writer, fake.requests.lock().unwrap().len() - before, errors)
}

on_both!(an_llm_answering_garbage_opens_the_breaker_which_closes_once_it_recovers);
async fn an_llm_answering_garbage_opens_the_breaker_which_closes_once_it_recovers(
    pg: Option<PgTestDb>,
) {
    let (llm, fake) = fake_llm().await;
    let cooldown = Duration::from_secs(2);
    let env = start(&pg, Some(llm), |c| {
        c.voice.breaker_failures = 2;
        c.voice.breaker_cooldown_secs = cooldown.as_secs();
    })
    .await;
    let local = "local question writer";

    // an HTML page, then events that are not JSON: two failed rounds open the breaker
    fake.mode.store(HTML, Ordering::SeqCst);
    let (writer, hits, errors) = first_question(&env, &fake).await;
    assert_eq!((writer.as_str(), hits), (local, 2), "{errors:?}");
    assert!(errors[0].contains("ended without text"), "{errors:?}");
    fake.mode.store(GARBLED, Ordering::SeqCst);
    let opened = Instant::now();
    let (writer, hits, errors) = first_question(&env, &fake).await;
    assert_eq!((writer.as_str(), hits), (local, 2), "{errors:?}");
    assert!(errors[0].contains("unreadable event"), "{errors:?}");
    let (writer, hits, errors) = first_question(&env, &fake).await;
    assert!(
        opened.elapsed() < cooldown,
        "the session took the whole cooldown"
    );
    assert_eq!(
        (writer.as_str(), hits),
        (local, 0),
        "open: the LLM is not asked"
    );
    assert!(errors[0].contains("circuit open"), "{errors:?}");

    // after the cooldown one trial round goes to the LLM; still garbage, so it opens again
    tokio::time::sleep(cooldown + Duration::from_millis(200)).await;
    fake.mode.store(LONG_LINE, Ordering::SeqCst);
    let (writer, hits, errors) = first_question(&env, &fake).await;
    assert_eq!((writer.as_str(), hits), (local, 2), "{errors:?}");
    assert!(errors[0].contains("with no end"), "{errors:?}");
    let (_, hits, errors) = first_question(&env, &fake).await;
    assert_eq!(hits, 0, "the failed trial opened it again: {errors:?}");

    // an LLM that ignores max_tokens is cut off at the bound, and that is a failure too
    tokio::time::sleep(cooldown + Duration::from_millis(200)).await;
    fake.mode.store(ENDLESS, Ordering::SeqCst);
    let mut ws = open(&env, "pcm16").await;
    let r = read_until(&mut ws, |v| {
        v["type"] == "error" && v["message"].as_str().unwrap_or("").contains("went on past")
    })
    .await;
    let cut = r.of("error").last().unwrap()["message"].as_str().unwrap();
    assert!(cut.contains("llm_max_tokens = 120"), "{cut}");
    assert!(
        !r.of("sentence").is_empty(),
        "what came before the bound is still asked"
    );
    drop(ws);
    let (_, hits, _) = first_question(&env, &fake).await;
    assert_eq!(hits, 0, "the endless reply opened the breaker again");

    // recovered: the trial round succeeds and the breaker closes, so the next asks the LLM too
    tokio::time::sleep(cooldown + Duration::from_millis(200)).await;
    fake.mode.store(NORMAL, Ordering::SeqCst);
    let mut ws = open(&env, "pcm16").await;
    let r = read_until(&mut ws, |v| v["type"] == "metrics").await;
    assert_eq!(r.of("metrics")[0]["writer"], "llm");
    assert!(r.of("error").is_empty(), "{:?}", r.of("error"));
    drop(ws);
    let (writer, hits, errors) = first_question(&env, &fake).await;
    assert_eq!(
        (writer.as_str(), hits),
        ("llm", 1),
        "closed again: {errors:?}"
    );
    assert!(errors.is_empty(), "{errors:?}");
    env.running.stop().await.unwrap();
}

on_both!(llm_stalls_and_breaks_and_bad_answers_get_clear_errors_and_the_session_stays_usable);
async fn llm_stalls_and_breaks_and_bad_answers_get_clear_errors_and_the_session_stays_usable(
    pg: Option<PgTestDb>,
) {
    let (llm, fake) = fake_llm().await;
    let env = start(&pg, Some(llm), |c| {
        c.voice.max_answer_bytes = 400_000;
        c.voice.breaker_failures = 10;
    })
    .await;

    // an LLM that never sends its first token: the local writer takes over in time
    fake.mode.store(STALL, Ordering::SeqCst);
    let t0 = Instant::now();
    let mut ws = open(&env, "ogg").await;
    let r = read_until(&mut ws, |v| v["type"] == "metrics").await;
    assert_eq!(r.of("metrics")[0]["writer"], "local question writer");
    assert!(t0.elapsed() < Duration::from_secs(8), "{:?}", t0.elapsed());
    assert!(
        r.of("error")[0]["message"]
            .as_str()
            .unwrap()
            .contains("no text within")
    );

    // a keep-alive ping is answered and changes nothing
    ws.send(Message::Text(json!({"type": "ping"}).to_string().into()))
        .await
        .unwrap();
    let p = read_until(&mut ws, |v| v["type"] == "pong" || v["type"] == "error").await;
    assert_eq!(p.of("pong").len(), 1, "{:?}", p.events);

    // bad answers, one after another, on the same session
    ws.send(Message::Text(json!({"type": "hello"}).to_string().into()))
        .await
        .unwrap();
    let e = read_until(&mut ws, |v| v["type"] == "error").await;
    assert!(
        e.of("error")[0]["message"]
            .as_str()
            .unwrap()
            .contains("unknown message type")
    );
    send_answer(&mut ws, "ogg", &espeak_wav(env.dir.path(), "hello")).await;
    let e = read_until(&mut ws, |v| v["type"] == "error").await;
    assert!(
        e.of("error")[0]["message"]
            .as_str()
            .unwrap()
            .contains("declared as ogg"),
        "{:?}",
        e.events
    );
    send_answer(&mut ws, "mp3", b"definitely not audio").await;
    let e = read_until(&mut ws, |v| v["type"] == "error").await;
    assert!(
        e.of("error")[0]["message"]
            .as_str()
            .unwrap()
            .contains("declared as mp3")
    );
    send_answer(&mut ws, "wav", &[]).await;
    let e = read_until(&mut ws, |v| v["type"] == "error").await;
    assert!(
        e.of("error")[0]["message"]
            .as_str()
            .unwrap()
            .contains("empty")
    );
    ws.send(Message::Text(
        json!({"type": "answer_start", "format": "pcm16"})
            .to_string()
            .into(),
    ))
    .await
    .unwrap();
    for _ in 0..30 {
        ws.send(Message::Binary(vec![0u8; 16_384].into()))
            .await
            .unwrap();
    }
    let e = read_until(&mut ws, |v| v["type"] == "error").await;
    assert!(
        e.of("error")[0]["message"]
            .as_str()
            .unwrap()
            .contains("limit")
    );
    // … and a good answer still works
    send_answer(
        &mut ws,
        "wav",
        &espeak_wav(env.dir.path(), "I was at the beach."),
    )
    .await;
    let ok = read_until(&mut ws, |v| v["type"] == "round_done").await;
    assert_eq!(ok.of("transcript").len(), 1);

    // an LLM that breaks mid-stream: an error event, the round completes with what came
    fake.mode.store(BREAK, Ordering::SeqCst);
    let r = read_until(&mut ws, |v| v["type"] == "metrics").await;
    assert!(
        r.of("error")
            .iter()
            .any(|e| e["message"].as_str().unwrap().contains("broke off")),
        "{:?}",
        r.events
    );
    assert!(!r.audio.is_empty());
    drop(ws);
    env.running.stop().await.unwrap();
}

on_both!(a_client_that_leaves_stops_the_llm_stream_and_barge_in_stops_the_question);
async fn a_client_that_leaves_stops_the_llm_stream_and_barge_in_stops_the_question(
    pg: Option<PgTestDb>,
) {
    let (llm, fake) = fake_llm().await;
    let env = start(&pg, Some(llm), |_| {}).await;
    fake.mode.store(NORMAL, Ordering::SeqCst);
    // barge-in: answering during the question stops it
    let mut ws = open(&env, "ogg").await;
    let _ = read_until(&mut ws, |v| v["type"] == "sentence").await;
    send_answer(
        &mut ws,
        "wav",
        &espeak_wav(env.dir.path(), "Stop, I know this one."),
    )
    .await;
    let r = read_until(&mut ws, |v| v["type"] == "round_done").await;
    assert!(r.of("metrics").is_empty(), "the question was cut off");
    assert_eq!(r.of("transcript").len(), 1);
    drop(ws);
    // leaving mid-question stops the LLM stream
    let mut ws = open(&env, "ogg").await;
    let _ = read_until(&mut ws, |v| v["type"] == "sentence").await;
    drop(ws);
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let words = REPLY.split_inclusive(' ').count();
    let sent = fake.sent.load(Ordering::SeqCst);
    assert!(
        sent < words,
        "the LLM kept streaming for a gone client ({sent} of {words} tokens)"
    );
    env.running.stop().await.unwrap();
}

on_both!(a_typed_answer_stands_in_for_the_microphone_and_bad_ones_get_errors);
async fn a_typed_answer_stands_in_for_the_microphone_and_bad_ones_get_errors(pg: Option<PgTestDb>) {
    let env = start(&pg, None, |_| {}).await;
    let mut ws = open(&env, "ogg").await;
    let _ = read_until(&mut ws, |v| v["type"] == "metrics").await;
    for bad in [
        json!({"type": "answer_text"}),
        json!({"type": "answer_text", "text": "   "}),
        json!({"type": "answer_text", "text": "x".repeat(2001)}),
    ] {
        ws.send(Message::Text(bad.to_string().into()))
            .await
            .unwrap();
        let r = read_until(&mut ws, |v| v["type"] == "error").await;
        let msg = r.of("error")[0]["message"].as_str().unwrap().to_string();
        assert!(msg.contains("answer_text needs a \"text\""), "{msg}");
    }
    ws.send(Message::Text(
        json!({"type": "answer_text", "text": "  We hiked up the hill at dawn.  "})
            .to_string()
            .into(),
    ))
    .await
    .unwrap();
    let r = read_until(&mut ws, |v| v["type"] == "round_done").await;
    let t = r.of("transcript")[0];
    assert_eq!(t["text"], "We hiked up the hill at dawn.");
    assert_eq!(t["engine"], "typed");
    // round 2 is asked about it, and the answer is stored like a spoken one
    let r2 = read_until(&mut ws, |v| v["type"] == "metrics").await;
    assert_eq!(r2.of("metrics")[0]["round"], 2);
    // a JSON message past its limit is refused unparsed, the session goes on…
    let huge = json!({"type": "answer_text", "text": "x".repeat(100_000)}).to_string();
    ws.send(Message::Text(huge.into())).await.unwrap();
    let r = read_until(&mut ws, |v| v["type"] == "error").await;
    let msg = r.of("error")[0]["message"].as_str().unwrap().to_string();
    assert!(msg.contains("at most 16384 bytes"), "{msg}");
    // …and a message past the WebSocket's limit (4 MiB) closes the connection (1009)
    let _ = ws.send(Message::Binary(vec![0u8; 5 << 20].into())).await;
    let closed = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match ws.next().await {
                None | Some(Err(_)) => return None,
                Some(Ok(Message::Close(frame))) => return frame.map(|f| u16::from(f.code)),
                Some(Ok(_)) => {}
            }
        }
    })
    .await
    .expect("the connection stays open after a 5 MiB message");
    assert!(matches!(closed, None | Some(1009)), "{closed:?}");
    drop(ws);
    let s = &env.running.services;
    let sid: String = sqlx::query_scalar("SELECT id FROM qa_sessions WHERE moment_id = $1")
        .bind(&env.moment)
        .fetch_one(s.db.pool())
        .await
        .unwrap();
    let turns = asr_tts::store::turns(&s.db, &sid).await.unwrap();
    assert_eq!(turns[0].2.as_deref(), Some("We hiked up the hill at dawn."));
    env.running.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_engines_on_their_own_asr_and_tts() {
    let env = start(&None, None, |_| {}).await;
    let http = reqwest::Client::new();
    // TTS: sentence by sentence, a chained Ogg stream
    let resp = http
        .post(format!("{}/v1/tts", env.base))
        .bearer_auth(&env.token)
        .json(&json!({"text": "Hello there. This is the second sentence. 你好。"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-type"], "audio/ogg");
    let ogg = resp.bytes().await.unwrap();
    assert!(ogg.starts_with(b"OggS"));
    ogg_seconds(env.dir.path(), "tts.ogg", &ogg);
    // decoded to the end: three sentences of speech
    let p = env.dir.path().join("tts.ogg");
    let pcm = std::process::Command::new("ffmpeg")
        .args(["-v", "error", "-i"])
        .arg(&p)
        .args(["-f", "s16le", "-ac", "1", "-ar", "16000", "-"])
        .output()
        .unwrap();
    let secs = pcm.stdout.len() as f64 / 32_000.0;
    assert!(secs > 2.5, "{secs}");
    // ASR of a WAV
    let wav = espeak_wav(env.dir.path(), "good morning");
    let resp = http
        .post(format!("{}/v1/asr?format=wav", env.base))
        .bearer_auth(&env.token)
        .body(wav)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["engine"], "pocketsphinx");
    assert!(v["seconds"].as_f64().unwrap() > 0.3);
    // bad input
    let r = http
        .post(format!("{}/v1/asr?format=wav", env.base))
        .bearer_auth(&env.token)
        .body("nope")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 422);
    let r = http
        .post(format!("{}/v1/asr", env.base))
        .bearer_auth(&env.token)
        .body("x")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let r = http
        .post(format!("{}/v1/asr?format=midi", env.base))
        .bearer_auth(&env.token)
        .body("x")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 415);
    let r = http
        .post(format!("{}/v1/tts", env.base))
        .bearer_auth(&env.token)
        .json(&json!({"text": "  ...  "}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let r = http
        .post(format!("{}/v1/tts", env.base))
        .bearer_auth(&env.token)
        .json(&json!({"text": "a".repeat(3000)}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 413);
    let r = http
        .post(format!("{}/v1/tts", env.base))
        .json(&json!({"text": "hi"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    // another user's moment has no Q&A for you; the local writer serves when no LLM is set
    let r = http
        .post(format!("{}/v1/moments/{}/qa", env.base, "0".repeat(26)))
        .bearer_auth(&env.token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    let mut ws = open(&env, "ogg").await;
    let r = read_until(&mut ws, |v| v["type"] == "metrics").await;
    assert_eq!(r.of("metrics")[0]["writer"], "local question writer");
    assert!(
        r.of("error").is_empty(),
        "no LLM configured is not a degradation"
    );
    env.running.stop().await.unwrap();
}
