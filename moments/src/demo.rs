//! `moments demo`: the whole path a newcomer wants to see, on embedded defaults — start the
//! service, make (or take) a clip, upload it over QUIC, follow the transcode, play the ladder
//! with the player harness, run one voice Q&A round, print where everything is, keep serving.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

use crate::config::Config;

/// `moments demo`.
#[derive(Debug, clap::Args)]
pub struct DemoArgs {
    /// Upload this video instead of a generated sample clip.
    #[arg(long, value_name = "FILE")]
    pub input: Option<PathBuf>,
    /// Stop after the voice round (exit 0) instead of serving until Ctrl-C.
    #[arg(long)]
    pub exit: bool,
    /// Where the demo writes its files (sample clip, question audio, answer, report).
    /// Default: $DATA/demo.
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
    /// What the spoken answer says (synthesised with eSpeak NG into a WAV).
    #[arg(
        long,
        value_name = "TEXT",
        default_value = "I watched the sunset with my best friend and we ate noodles by the harbour."
    )]
    pub answer: String,
    /// No progress bars.
    #[arg(long, short)]
    pub quiet: bool,
}

/// The sample clip: 8 s of 1280x720 test pattern with a tone, H.264 + AAC in MP4.
const SAMPLE_SECONDS: u32 = 8;

/// Runs the demo.
pub async fn run(config: Config, args: DemoArgs) -> anyhow::Result<()> {
    let out_dir = args
        .out
        .clone()
        .unwrap_or_else(|| config.data_dir.join("demo"));
    std::fs::create_dir_all(&out_dir)
        .with_context(|| format!("cannot create {}", out_dir.display()))?;
    let out_dir = std::fs::canonicalize(&out_dir)?;
    let clip = match &args.input {
        Some(p) => {
            if !p.is_file() {
                bail!("--input {}: no such file", p.display());
            }
            p.clone()
        }
        None => sample_clip(&out_dir)?,
    };

    say(&format!(
        "1/5 starting the service (data in {}; the voice models take a few seconds to load)",
        config.data_dir.display()
    ));
    let data_dir = config.data_dir.clone();
    let congestion = config.quic.congestion;
    let running = crate::app::start(config, crate::app::all_roles()).await?;
    let http = running.http_addr;
    let base = format!("http://{}", crate::cli::local_addr(http));
    let (Some(quic), Some(fingerprint)) = (running.quic_addr, running.cert_sha256.clone()) else {
        bail!("the service is not listening for QUIC");
    };
    let shutdown = running.shutdown_token();
    let signal = shutdown.clone();
    tokio::spawn(async move {
        common::server::shutdown_signal().await;
        tracing::info!("shutting down: finishing in-flight requests");
        signal.cancel();
    });

    let outcome = tokio::select! {
        r = steps(&args, &clip, &out_dir, &data_dir, &base, quic, &fingerprint, congestion) => r,
        () = shutdown.cancelled() => Err(anyhow::anyhow!("interrupted")),
    };
    let summary = match outcome {
        Ok(s) => s,
        Err(e) => {
            let _ = running.stop().await;
            return Err(e);
        }
    };
    let mut o = std::io::stdout().lock();
    writeln!(o)?;
    writeln!(o, "Moments demo — everything worked:")?;
    writeln!(o, "  moment              {}", summary.moment)?;
    writeln!(o, "  master playlist     {}", summary.master)?;
    writeln!(
        o,
        "  web page            {base}/?user=demo&moment={}",
        summary.moment
    )?;
    writeln!(
        o,
        "  service             {base}  (HTTP/3: https://{})",
        crate::cli::local_addr(quic)
    )?;
    writeln!(o, "  uploaded clip       {}", clip.display())?;
    for f in &summary.files {
        writeln!(o, "  {:<19} {}", f.0, f.1.display())?;
    }
    writeln!(o, "  demo token (24 h)   {}", summary.token_file.display())?;
    let data_shown = std::fs::canonicalize(&data_dir).unwrap_or_else(|_| data_dir.clone());
    writeln!(o, "  data directory      {}", data_shown.display())?;
    writeln!(o, "  try: ffplay {}", summary.master)?;
    o.flush()?;
    drop(o);
    if args.exit {
        running.stop().await
    } else {
        say("serving until Ctrl-C");
        running.wait().await
    }
}

struct Summary {
    moment: String,
    master: String,
    files: Vec<(&'static str, PathBuf)>,
    token_file: PathBuf,
}

fn say(msg: &str) {
    eprintln!("moments demo: {msg}");
}

#[allow(clippy::too_many_arguments)]
async fn steps(
    args: &DemoArgs,
    clip: &Path,
    out_dir: &Path,
    data_dir: &Path,
    base: &str,
    quic: std::net::SocketAddr,
    fingerprint: &str,
    congestion: common::server::h3::Congestion,
) -> anyhow::Result<Summary> {
    let (private, _) = common::auth::ensure_dev_key(data_dir)
        .context("the demo signs its token with the development key")?;
    let token = common::auth::mint(&private, "demo", Duration::from_secs(24 * 3600))?;
    let token_file = out_dir.join("token.txt");
    std::fs::write(&token_file, format!("{token}\n"))?;

    // 2. upload over HTTP/3 (the resume file starts empty each run: every run uploads for real)
    say(&format!(
        "2/5 uploading {} over HTTP/3 (QUIC)",
        clip.display()
    ));
    let state_file = out_dir.join("upload-state.json");
    match std::fs::remove_file(&state_file) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).context(format!("cannot reset {}", state_file.display())),
    }
    let opts = ingest::client::Options {
        server: format!("https://{}", crate::cli::local_addr(quic)),
        protocol: ingest::client::Protocol::Http3,
        token: token.clone(),
        trust: Some(common::server::tls::Trust::Pinned(fingerprint.to_string())),
        chunking: ingest::client::Chunking::Auto,
        rate: None,
        state_file,
        max_retries: 5,
        progress: !args.quiet,
        congestion,
    };
    let upload = crate::cli::streamable(clip, &out_dir.join("faststart"), args.quiet)?;
    let done = ingest::client::upload(&upload, &opts)
        .await
        .context("the upload failed")?;
    say(&format!(
        "   uploaded {} bytes → moment {}",
        done.size, done.moment
    ));

    // 3. transcode progress until the ladder is ready
    say("3/5 transcoding the HLS ladder");
    let master = ingest::client::wait_ready(&done.moment, &opts)
        .await
        .context("the moment did not become ready")?;
    say(&format!("   ready: {master}"));

    // 4. the player harness
    say("4/5 playing it with the player harness (every segment of every rung decoded)");
    let report = player_test::play(&master, &player_test::Options::default()).await;
    let report_file = out_dir.join("player-report.json");
    std::fs::write(&report_file, serde_json::to_vec_pretty(&report)?)?;
    eprintln!(
        "   played {} segments: startup {} ms, avg {} kbit/s, {} bytes, {} switch(es), {} stall(s), {} violation(s)",
        report.played.len(),
        report.startup_ms,
        report.avg_kbps,
        report.bytes,
        report.switches.len(),
        report.stalls.len(),
        report.violations.len()
    );
    for s in &report.switches {
        eprintln!("   switch t={:.1}s {} → {}", s.t, s.from, s.to);
    }
    for v in &report.violations {
        eprintln!("   VIOLATION {v}");
    }
    if !report.violations.is_empty() {
        bail!(
            "the player harness found {} violation(s); see {}",
            report.violations.len(),
            report_file.display()
        );
    }

    // 5. one voice round
    say("5/5 one voice Q&A round");
    let mut files = vec![("player report", report_file)];
    files.extend(voice_round(args, out_dir, base, &done.moment, &token).await?);
    Ok(Summary {
        moment: done.moment,
        master,
        files,
        token_file,
    })
}

/// Makes the sample clip with the ffmpeg CLI (once; later runs reuse it).
fn sample_clip(out_dir: &Path) -> anyhow::Result<PathBuf> {
    let clip = out_dir.join("sample.mp4");
    if clip.is_file() {
        return Ok(clip);
    }
    say(&format!(
        "making an {SAMPLE_SECONDS} s 720p sample clip ({})",
        clip.display()
    ));
    let partial = out_dir.join("sample.partial.mp4");
    let d = SAMPLE_SECONDS.to_string();
    let status = std::process::Command::new("ffmpeg")
        .args(["-v", "error", "-y", "-f", "lavfi", "-i"])
        .arg(format!("testsrc2=size=1280x720:rate=30:duration={d}"))
        .args(["-f", "lavfi", "-i"])
        .arg(format!("sine=frequency=440:sample_rate=48000:duration={d}"))
        .args([
            "-c:v", "libx264", "-preset", "veryfast", "-pix_fmt", "yuv420p", "-c:a", "aac",
            "-shortest", "-movflags", "+faststart",
        ])
        .arg(&partial)
        .status()
        .context("the sample clip is made with the ffmpeg CLI, which is not installed (deploy/install-deps.sh installs it); or pass --input FILE")?;
    if !status.success() {
        bail!("ffmpeg could not make the sample clip ({status}); pass --input FILE instead");
    }
    std::fs::rename(&partial, &clip)?;
    Ok(clip)
}

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn next_json(ws: &mut Ws, audio: &mut Vec<Vec<u8>>) -> anyhow::Result<Option<Value>> {
    loop {
        let msg = tokio::time::timeout(Duration::from_secs(120), ws.next())
            .await
            .context("the voice session went quiet for 2 minutes")?;
        match msg {
            None | Some(Ok(Message::Close(_))) => return Ok(None),
            Some(Err(e)) => return Err(e.into()),
            Some(Ok(Message::Text(t))) => {
                let v: Value = serde_json::from_str(t.as_str())?;
                if v["type"] == "audio_start" {
                    audio.push(Vec::new());
                }
                return Ok(Some(v));
            }
            Some(Ok(Message::Binary(b))) => {
                if let Some(last) = audio.last_mut() {
                    last.extend_from_slice(&b);
                }
            }
            Some(Ok(_)) => {}
        }
    }
}

async fn voice_round(
    args: &DemoArgs,
    out_dir: &Path,
    base: &str,
    moment: &str,
    token: &str,
) -> anyhow::Result<Vec<(&'static str, PathBuf)>> {
    let http = reqwest::Client::new();
    let resp = http
        .post(format!("{base}/v1/moments/{moment}/qa"))
        .bearer_auth(token)
        .json(&json!({"audio": "ogg"}))
        .send()
        .await?;
    if !resp.status().is_success() {
        bail!(
            "creating the Q&A session: {} {}",
            resp.status(),
            resp.text().await.unwrap_or_default()
        );
    }
    let session: Value = resp.json().await?;
    let ws_path = session["ws_url"]
        .as_str()
        .context("no ws_url in the session")?;
    let mut req =
        format!("{}{ws_path}", base.replacen("http://", "ws://", 1)).into_client_request()?;
    req.headers_mut()
        .insert("authorization", format!("Bearer {token}").parse()?);
    let (mut ws, _) = tokio_tungstenite::connect_async(req).await?;

    // the question, sentence by sentence
    let mut audio = Vec::new();
    let mut question = String::new();
    let mut metrics = Value::Null;
    while let Some(v) = next_json(&mut ws, &mut audio).await? {
        match v["type"].as_str() {
            Some("question_delta") => question.push_str(v["text"].as_str().unwrap_or("")),
            Some("sentence") => eprintln!("   question: {}", v["text"].as_str().unwrap_or("")),
            Some("error") => eprintln!("   notice: {}", v["message"].as_str().unwrap_or("")),
            Some("metrics") => {
                metrics = v;
                break;
            }
            _ => {}
        }
    }
    if metrics.is_null() {
        bail!("the voice session ended before the question was asked");
    }
    eprintln!(
        "   {} wrote it; first audio {} ms after the request; TTS {} (RTF {})",
        metrics["writer"].as_str().unwrap_or("?"),
        metrics["first_audio_ms"],
        metrics["tts_engine"].as_str().unwrap_or("?"),
        metrics["tts_rtf"]
    );
    let mut files = vec![];
    for (i, a) in audio.iter().enumerate() {
        let p = out_dir.join(format!("question-{}.ogg", i + 1));
        std::fs::write(&p, a)?;
        files.push(("question audio", p));
    }
    let qfile = out_dir.join("question.txt");
    std::fs::write(&qfile, format!("{}\n", question.trim()))?;
    files.push(("question text", qfile));

    // the spoken answer: a WAV made with eSpeak NG
    let espeak = asr_tts::tts::Espeak::new()?;
    let speech = asr_tts::tts::Tts::synthesize(&espeak, &args.answer)?;
    let wav = asr_tts::audio::wav_bytes(&speech.samples, speech.rate);
    let wav_file = out_dir.join("answer.wav");
    std::fs::write(&wav_file, &wav)?;
    files.push(("answer (spoken)", wav_file));
    eprintln!("   answering: {}", args.answer);
    ws.send(Message::Text(
        json!({"type": "answer_start", "format": "wav"})
            .to_string()
            .into(),
    ))
    .await?;
    for chunk in wav.chunks(16 * 1024) {
        ws.send(Message::Binary(chunk.to_vec().into())).await?;
    }
    ws.send(Message::Text(
        json!({"type": "answer_done"}).to_string().into(),
    ))
    .await?;
    let mut transcript = None;
    let mut ignored = Vec::new();
    while let Some(v) = next_json(&mut ws, &mut ignored).await? {
        match v["type"].as_str() {
            Some("transcript") => {
                eprintln!(
                    "   heard ({}): {}",
                    v["engine"].as_str().unwrap_or("?"),
                    v["text"].as_str().unwrap_or("")
                );
                transcript = v["text"].as_str().map(str::to_string);
            }
            Some("error") => bail!("the answer was not recognised: {}", v["message"]),
            Some("round_done") => break,
            _ => {}
        }
    }
    let _ = ws.close(None).await;
    let transcript = transcript.context("the voice session ended without a transcript")?;
    let tfile = out_dir.join("transcript.txt");
    std::fs::write(&tfile, format!("{transcript}\n"))?;
    files.push(("transcript", tfile));
    Ok(files)
}
