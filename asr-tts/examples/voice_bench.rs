//! Voice benchmark: time to first audio with sentence streaming (the production `Voice::ask`
//! path: LLM stream → splitter → TTS → Opus) against the anchor — waiting for the whole LLM
//! reply, then synthesising it — under the same LLM timing (a local SSE server: first token
//! after 400 ms, then 40 ms per token, a five-sentence reply). Also the TTS and ASR real-time
//! factors. Every measurement runs for each engine pair in the same run: eSpeak NG +
//! pocketsphinx, and Piper + Whisper when their models are installed (`MOMENTS_MODELS_DIR`,
//! default `~/.cache/moments/models`; `deploy/install-models.sh` installs them), plus Piper's
//! RTF with 1 and 2 intra-op threads. Prints tables; run with:
//!
//!   cargo run --release -p asr-tts --example voice_bench [RUNS]

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use asr_tts::llm::{Context, Event, OpenAi, OpenAiConfig};
use asr_tts::voice::{AudioOut, Out, Voice, speak};
use axum::Router;
use axum::body::Body;
use axum::routing::post;
use futures::StreamExt;
use serde_json::json;

const REPLY: &str = "What a lovely evening by the sea. Who were you with when you filmed it? \
Did you plan the trip, or was it a surprise? I would love to hear what you ate. \
Tell me what made that moment special for you.";
const FIRST_TOKEN_MS: u64 = 400;
const PER_TOKEN_MS: u64 = 40;

async fn chat() -> axum::response::Response {
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<String, std::io::Error>>(4);
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(FIRST_TOKEN_MS)).await;
        for w in REPLY.split_inclusive(' ') {
            let chunk = json!({"choices": [{"delta": {"content": w}}]});
            if tx.send(Ok(format!("data: {chunk}\n\n"))).await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(PER_TOKEN_MS)).await;
        }
        let _ = tx.send(Ok("data: [DONE]\n\n".into())).await;
    });
    let stream =
        futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|x| (x, rx)) });
    axum::response::Response::builder()
        .header("content-type", "text/event-stream")
        .body(Body::from_stream(stream))
        .unwrap()
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

struct Row {
    label: String,
    first_audio: f64,
    after_token: f64,
    anchor: f64,
    anchor_after_token: f64,
    sentence_to_audio: f64,
    speak_ms: f64,
    tts: &'static str,
    tts_rtf: f64,
    asr: &'static str,
    asr_rtf: f64,
    asr_rtf_joined: f64,
    speech_secs: f64,
}

async fn measure(label: &str, config: asr_tts::Config, url: &str, runs: usize) -> Row {
    let dir = tempfile::tempdir().unwrap();
    let db = common::db::Db::connect(
        &format!("sqlite://{}", dir.path().join("b.db").display()),
        2,
    )
    .await
    .unwrap();
    let store: common::store::Store = Arc::new(
        common::store::Local::open(dir.path().join("o"))
            .await
            .unwrap(),
    );
    let queue = common::queue::Queue::new(db.clone(), Default::default());
    let (tts, asr) = asr_tts::engines(&config).unwrap();
    let voice = Arc::new(Voice::new(
        config,
        db,
        store,
        queue,
        tts.clone(),
        asr.clone(),
        None,
    ));
    let llm = OpenAi::new(OpenAiConfig {
        url: url.to_string(),
        model: "bench".into(),
        api_key: None,
        connect_timeout: Duration::from_secs(5),
        first_token_timeout: Duration::from_secs(5),
        max_tokens: 200,
    });
    let ctx = Context {
        round: 1,
        moment: "a 12-second video".into(),
        ..Default::default()
    };
    // warm up the engines once
    let _ = speak(&*tts, "Warm up.", AudioOut::Ogg);

    let (mut ours, mut ours_after_token, mut anchor, mut anchor_after_token) =
        (vec![], vec![], vec![], vec![]);
    let mut sentence_to_audio = vec![];
    for _ in 0..runs {
        // streaming: the production path
        let (tx, mut rx) = tokio::sync::mpsc::channel::<Out>(1024);
        let cancel = tokio_util::sync::CancellationToken::new();
        let t0 = Instant::now();
        let v = voice.clone();
        let c2 = ctx.clone();
        let task = tokio::spawn(async move { v.ask(&c2, AudioOut::Ogg, &tx, &cancel).await });
        let mut first_token = None;
        let mut first_audio = None;
        while let Some(m) = rx.recv().await {
            match m {
                Out::Json(j) if j["type"] == "metrics" => {
                    let (s, a) = (
                        j["first_sentence_ms"].as_f64().unwrap(),
                        j["first_audio_ms"].as_f64().unwrap(),
                    );
                    sentence_to_audio.push(a - s);
                }
                Out::Json(j) if j["type"] == "question_delta" => {
                    first_token.get_or_insert(t0.elapsed());
                }
                Out::Binary(_) => {
                    first_audio.get_or_insert(t0.elapsed());
                }
                _ => {}
            }
        }
        task.await.unwrap().unwrap();
        let (ft, fa) = (first_token.unwrap(), first_audio.unwrap());
        ours.push(fa.as_secs_f64() * 1000.0);
        ours_after_token.push((fa - ft).as_secs_f64() * 1000.0);

        // anchor: the whole reply first, then one synthesis
        let t0 = Instant::now();
        let mut s = llm
            .complete(OpenAi::messages(&ctx), Default::default())
            .await
            .unwrap();
        let mut text = String::new();
        let mut ft = None;
        while let Some(Ok(ev)) = s.next().await {
            if let Event::Token(t) = ev {
                ft.get_or_insert(t0.elapsed());
                text.push_str(&t);
            }
        }
        let t2 = tts.clone();
        let spoken = tokio::task::spawn_blocking(move || speak(&*t2, &text, AudioOut::Ogg))
            .await
            .unwrap()
            .unwrap();
        assert!(!spoken.bytes.is_empty());
        let fa = t0.elapsed();
        anchor.push(fa.as_secs_f64() * 1000.0);
        anchor_after_token.push((fa - ft.unwrap()).as_secs_f64() * 1000.0);
    }

    // real-time factors on the reply's sentences (ASR hears what this TTS said)
    let sentences = sentences();
    let (mut synth, mut audio, mut rec) = (0.0, 0.0, 0.0);
    let mut speak_ms = vec![];
    let mut joined: Vec<i16> = Vec::new();
    for _ in 0..runs {
        let t = Instant::now();
        let _ = speak(&*tts, &sentences[0], AudioOut::Ogg).unwrap();
        speak_ms.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    for s in &sentences {
        let t = Instant::now();
        let speech = tts.synthesize(s).unwrap();
        synth += t.elapsed().as_secs_f64();
        audio += speech.seconds();
        let pcm = speech.to_asr_pcm();
        joined.extend(&pcm);
        let t = Instant::now();
        let _ = asr.transcribe(&pcm).unwrap();
        rec += t.elapsed().as_secs_f64();
    }
    // the same speech as one answer (how a user answers: one recording, not five)
    let t = Instant::now();
    let _ = asr.transcribe(&joined).unwrap();
    let asr_rtf_joined = t.elapsed().as_secs_f64() / (joined.len() as f64 / 16_000.0);
    Row {
        asr_rtf_joined,
        label: label.to_string(),
        first_audio: median(ours),
        after_token: median(ours_after_token),
        anchor: median(anchor),
        anchor_after_token: median(anchor_after_token),
        sentence_to_audio: median(sentence_to_audio),
        speak_ms: median(speak_ms),
        tts: tts.name(),
        tts_rtf: synth / audio,
        asr: asr.name(),
        asr_rtf: rec / audio,
        speech_secs: audio,
    }
}

fn sentences() -> Vec<String> {
    let mut split = asr_tts::splitter::Splitter::default();
    let mut sentences = split.push(REPLY);
    sentences.extend(split.finish());
    sentences
}

/// Piper's RTF over the reply's sentences with `threads` intra-op threads.
fn piper_rtf(models: &std::path::Path, threads: usize, runs: usize) -> f64 {
    let p = asr_tts::piper::Piper::load(
        &models.join(asr_tts::PIPER_VOICE),
        &models.join(asr_tts::ONNXRUNTIME_LIB),
        threads,
        asr_tts::tts::Espeak { wpm: 165 },
    )
    .unwrap();
    let sentences = sentences();
    let mut rtfs = vec![];
    for _ in 0..runs {
        let (mut synth, mut audio) = (0.0, 0.0);
        for s in &sentences {
            let t = Instant::now();
            let speech = asr_tts::tts::Tts::synthesize(&p, s).unwrap();
            synth += t.elapsed().as_secs_f64();
            audio += speech.seconds();
        }
        rtfs.push(synth / audio);
    }
    median(rtfs)
}

#[tokio::main]
async fn main() {
    let runs: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(5);
    let app = Router::new().route("/v1/chat/completions", post(chat));
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/v1", l.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(l, app).await });

    let models = std::env::var_os("MOMENTS_MODELS_DIR")
        .map(std::path::PathBuf::from)
        .or_else(|| {
            std::env::var_os("HOME")
                .map(|h| std::path::PathBuf::from(h).join(".cache/moments/models"))
        })
        .filter(|d| d.join(".installed-v1").is_file());
    let mut rows = vec![
        measure(
            "eSpeak NG + pocketsphinx",
            asr_tts::Config {
                llm_url: Some(url.clone()),
                tts_engine: asr_tts::TtsEngine::EspeakNg,
                asr_engine: asr_tts::AsrEngine::Pocketsphinx,
                ..Default::default()
            },
            &url,
            runs,
        )
        .await,
    ];
    match &models {
        Some(m) => rows.push(
            measure(
                "Piper + Whisper",
                asr_tts::Config {
                    llm_url: Some(url.clone()),
                    tts_engine: asr_tts::TtsEngine::Piper,
                    asr_engine: asr_tts::AsrEngine::Whisper,
                    models_dir: Some(m.clone()),
                    ..Default::default()
                },
                &url,
                runs,
            )
            .await,
        ),
        None => println!(
            "(neural models not installed: run deploy/install-models.sh ~/.cache/moments/models to compare Piper and Whisper)"
        ),
    }

    let tokens = REPLY.split_inclusive(' ').count() as u64;
    println!(
        "Voice time to first audio: five-sentence reply, LLM first token after {FIRST_TOKEN_MS} ms then {PER_TOKEN_MS} ms per token ({tokens} tokens, ~{} ms in all); median of {runs}",
        FIRST_TOKEN_MS + tokens * PER_TOKEN_MS
    );
    println!(
        "{:<28}{:<34}{:>18}{:>22}",
        "engines", "approach", "first audio (ms)", "after 1st token (ms)"
    );
    for r in &rows {
        println!(
            "{:<28}{:<34}{:>18.0}{:>22.0}",
            r.label, "sentence streaming (Voice::ask)", r.first_audio, r.after_token
        );
        println!(
            "{:<28}{:<34}{:>18.0}{:>22.0}",
            r.label, "whole reply, then TTS (anchor)", r.anchor, r.anchor_after_token
        );
        println!(
            "{:<28}{:<34}{:>18.1}{:>22.1}",
            r.label,
            "anchor / streaming",
            r.anchor / r.first_audio,
            r.anchor_after_token / r.after_token
        );
    }
    println!();
    println!(
        "{:<28}{:>22}{:>18}{:>10}{:>16}{:>10}",
        "engines", "sentence→audio (ms)", "speak() (ms)", "TTS RTF", "ASR", "ASR RTF"
    );
    println!("(ASR RTF: each sentence on its own / the five as one answer)");
    for r in &rows {
        println!(
            "{:<28}{:>22.0}{:>18.0}{:>10.3}{:>16}{:>10.3} / {:.3}   ({} / {}; {:.1} s of speech)",
            r.label,
            r.sentence_to_audio,
            r.speak_ms,
            r.tts_rtf,
            r.asr,
            r.asr_rtf,
            r.asr_rtf_joined,
            r.tts,
            r.asr,
            r.speech_secs
        );
    }
    if let Some(m) = &models {
        println!();
        for threads in [1, 2] {
            println!(
                "Piper RTF with {threads} intra-op thread(s): {:.3} (median of {runs})",
                piper_rtf(m, threads, runs)
            );
        }
    }
}
