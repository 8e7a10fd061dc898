//! The page at `GET /`: its routes on their own (dev tokens, vendor scripts missing), and the
//! whole page in Debian's Chromium against a real `moments serve` process that is killed
//! mid-upload and started again (player-test/browser/page-test.mjs).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

async fn start(
    tweak: impl FnOnce(&mut moments::Config),
) -> (moments::app::Running, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let mut config = moments::Config {
        data_dir: dir.path().join("data"),
        ..Default::default()
    };
    config.http.addr = "127.0.0.1:0".parse().unwrap();
    config.quic.addr = "127.0.0.1:0".parse().unwrap();
    tweak(&mut config);
    let running = moments::app::start(config, moments::app::all_roles())
        .await
        .unwrap();
    (running, dir)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_is_served_and_says_what_to_install_and_tokens_only_come_from_the_dev_key() {
    let (running, _dir) =
        start(|c| c.web.node_modules = PathBuf::from("/nonexistent/node_modules")).await;
    let base = format!("http://{}", running.http_addr);
    let http = reqwest::Client::new();
    let r = http.get(format!("{base}/")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "text/html; charset=utf-8");
    let html = r.text().await.unwrap();
    assert!(html.contains("/ui/vendor/hls.js") && html.contains("/ui/app.js"));
    for (path, ct) in [
        ("/ui/app.js", "text/javascript"),
        ("/ui/app.css", "text/css"),
    ] {
        let r = http.get(format!("{base}{path}")).send().await.unwrap();
        assert_eq!(r.status(), 200, "{path}");
        assert!(
            r.headers()["content-type"]
                .to_str()
                .unwrap()
                .starts_with(ct)
        );
    }
    // npm has not run: the scripts say what to install, and so does the page
    let r = http
        .get(format!("{base}/ui/vendor/hls.js"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    assert!(r.text().await.unwrap().contains("deploy/install-web.sh"));
    let js = http
        .get(format!("{base}/ui/app.js"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(js.contains("run deploy/install-web.sh"));
    assert_eq!(
        http.get(format!("{base}/ui/vendor/other.js"))
            .send()
            .await
            .unwrap()
            .status(),
        404
    );

    // a dev token works on the API; bad users are refused
    let r = http
        .post(format!("{base}/ui/dev-token"))
        .json(&serde_json::json!({"user": "web-test"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let v: serde_json::Value = r.json().await.unwrap();
    let token = v["token"].as_str().unwrap();
    let r = http
        .post(format!("{base}/v1/tickets"))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    for bad in [
        serde_json::json!({"user": ""}),
        serde_json::json!({"user": "a b"}),
        serde_json::json!({"user": "x".repeat(129)}),
    ] {
        let r = http
            .post(format!("{base}/ui/dev-token"))
            .json(&bad)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 400, "{bad}");
    }
    let r = http
        .post(format!("{base}/ui/dev-token"))
        .body("nope")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    running.stop().await.unwrap();

    // with a configured public key there are no page tokens
    let keys = tempfile::tempdir().unwrap();
    let (_, public) = common::auth::ensure_dev_key(keys.path()).unwrap();
    let pem = keys.path().join("pub.pem");
    std::fs::write(&pem, public).unwrap();
    let (running, _dir) = start(|c| c.auth.public_key = Some(pem.clone())).await;
    let r = http
        .post(format!("http://{}/ui/dev-token", running.http_addr))
        .json(&serde_json::json!({"user": "web-test"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    assert!(r.text().await.unwrap().contains("public key"));
    running.stop().await.unwrap();
}

fn serve(data: &Path, http: u16, quic: u16) -> tokio::process::Child {
    let mut c = tokio::process::Command::new(env!("CARGO_BIN_EXE_moments"));
    c.arg("serve")
        .env("MOMENTS_DATA_DIR", data)
        .env("MOMENTS_HTTP_ADDR", format!("127.0.0.1:{http}"))
        .env("MOMENTS_QUIC_ADDR", format!("127.0.0.1:{quic}"))
        .env("RUST_LOG", "warn")
        .env_remove("MOMENTS_DATABASE_URL")
        .env_remove("MOMENTS_STORAGE")
        .env_remove("MOMENTS_LLM_URL")
        .stdout(Stdio::null())
        .kill_on_drop(true);
    match common::testing::voice_models() {
        Some(m) => c.env("MOMENTS_MODELS_DIR", m),
        None => c.env_remove("MOMENTS_MODELS_DIR"),
    };
    c.spawn().unwrap()
}

async fn ready(http: u16) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(r) = reqwest::get(format!("http://127.0.0.1:{http}/readyz")).await
            && r.status() == 200
        {
            return;
        }
        assert!(Instant::now() < deadline, "the server did not come up");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn run(cmd: &mut std::process::Command) {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_in_chromium_uploads_resumes_plays_and_runs_the_voice_round() {
    let browser = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../player-test/browser");
    assert!(
        browser.join("node_modules/playwright-core").exists(),
        "npm packages missing: run deploy/install-test-tools.sh"
    );
    assert!(
        PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("web/node_modules/hls.js")
            .exists(),
        "the page's npm packages are missing: run deploy/install-web.sh"
    );
    assert!(
        PathBuf::from("/usr/bin/chromium").exists(),
        "chromium missing: run deploy/install-deps.sh --browser"
    );
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // a 6 s 720p clip (~4.5 MB at this bit rate, so the slowed upload takes a few seconds; two rungs)
    let clip = d.join("clip.mp4");
    common::testing::ffmpeg(&[
        "-f",
        "lavfi",
        "-i",
        "testsrc2=size=1280x720:rate=30:duration=6",
        "-f",
        "lavfi",
        "-i",
        "sine=frequency=300:duration=6",
        "-c:v",
        "libx264",
        "-preset",
        "ultrafast",
        "-b:v",
        "6M",
        "-pix_fmt",
        "yuv420p",
        "-c:a",
        "aac",
        "-shortest",
        clip.to_str().unwrap(),
    ]);
    run(std::process::Command::new("espeak-ng")
        .args(["-v", "en-us", "-w"])
        .arg(d.join("answer.wav"))
        .arg("I went swimming in the lake with my brother."));
    std::fs::write(d.join("notes.txt"), "just some notes\n").unwrap();
    std::fs::write(d.join("fake.mp4"), "not really a video\n".repeat(200)).unwrap();

    let (http, quic) = (common::testing::free_port(), common::testing::free_port());
    let data = d.join("data");
    let mut server = serve(&data, http, quic);
    ready(http).await;

    let artifacts = browser.join("artifacts");
    let mut node = tokio::process::Command::new("node")
        .arg(browser.join("page-test.mjs"))
        .arg(format!("http://127.0.0.1:{http}/"))
        .arg(d.join("clip.mp4"))
        .arg(d.join("notes.txt"))
        .arg(d.join("fake.mp4"))
        .arg(d.join("answer.wav"))
        .arg(&artifacts)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut stdin = node.stdin.take().unwrap();
    let mut lines = BufReader::new(node.stdout.take().unwrap()).lines();
    let mut summary = String::new();
    let mut killed = false;
    while let Some(line) = tokio::time::timeout(Duration::from_secs(300), lines.next_line())
        .await
        .expect("the page test went quiet")
        .unwrap()
    {
        if line.trim() == "KILL_SERVER" {
            // the server goes away mid-upload, stays away a moment, and comes back
            server.kill().await.unwrap();
            killed = true;
            tokio::time::sleep(Duration::from_secs(3)).await;
            server = serve(&data, http, quic);
            ready(http).await;
            stdin.write_all(b"RESTARTED\n").await.unwrap();
        } else {
            summary = line;
        }
    }
    let status = node.wait().await.unwrap();
    assert!(
        killed,
        "the page test never reached the mid-upload kill: {summary}"
    );
    let v: serde_json::Value =
        serde_json::from_str(&summary).unwrap_or_else(|_| panic!("{summary}"));
    assert!(status.success(), "{summary}");
    for c in [
        "vendor_scripts_loaded",
        "non_video_refused_on_the_page",
        "fake_video_gets_a_readable_error",
        "resumed_after_the_server_came_back",
        "plays_past_3s_with_a_rung_shown",
        "rung_selector_lists_the_ladder",
        "seek_bar_thumbnail",
        "poster_set",
        "question_audio_arrived_and_played",
        "transcript_arrived",
        "denied_mic_message",
        "typed_answer_accepted",
    ] {
        assert_eq!(v["checks"][c]["pass"], true, "{c}: {summary}");
    }
    if common::testing::voice_models().is_some() {
        let t = v["transcript"].as_str().unwrap().to_lowercase();
        assert!(
            t.contains("swimming") || t.contains("lake"),
            "Whisper heard {t:?}"
        );
    }
    for s in [
        "page-1-not-a-video",
        "page-4-playing",
        "page-6-answered",
        "page-7-mic-denied",
    ] {
        assert!(artifacts.join(format!("{s}.png")).exists(), "{s}");
    }
    server.kill().await.unwrap();
}
