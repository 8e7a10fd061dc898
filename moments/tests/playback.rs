//! Playback from outside: a 30 s moment made by the running service is played by the
//! player-test harness under a bandwidth trace (8 → 1 → 8 Mbit/s), and by hls.js in Debian's
//! Chromium (driven by playwright-core), which must switch down when its bandwidth is capped.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use common::moment::{self, State};
use common::store::{Key, PutOptions};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_30s_moment_adapts_in_the_harness_and_plays_in_chromium() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = moments::Config {
        data_dir: dir.path().join("data"),
        ..Default::default()
    };
    config.http.addr = "127.0.0.1:0".parse().unwrap();
    config.quic.addr = "127.0.0.1:0".parse().unwrap();
    config.transcode.x264_preset = "ultrafast".into();
    config.queue.poll_ms = 100;
    let running = moments::app::start(config, moments::app::all_roles())
        .await
        .unwrap();
    let s = running.services.clone();

    let src = dir.path().join("src.mp4");
    let out = Command::new("ffmpeg")
        .args([
            "-v",
            "error",
            "-y",
            "-f",
            "lavfi",
            "-i",
            "testsrc2=size=1280x720:rate=30:duration=30",
        ])
        .args([
            "-f",
            "lavfi",
            "-i",
            "sine=frequency=500:duration=30",
            "-c:v",
            "libx264",
        ])
        .args(["-preset", "ultrafast", "-pix_fmt", "yuv420p", "-c:a", "aac"])
        .arg(&src)
        .output()
        .unwrap();
    assert!(out.status.success());
    let id = common::ids::new_id();
    let key = Key::new(format!("uploads/{id}")).unwrap();
    s.store
        .put_file(&key, &src, &PutOptions::default())
        .await
        .unwrap();
    moment::create(&s.db, &id, "alice", State::Queued, Some(key.as_str()))
        .await
        .unwrap();
    s.queue
        .enqueue(&moment::transcode_job(&id, Default::default()))
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(240);
    loop {
        let m = moment::get(&s.db, &id).await.unwrap().unwrap();
        if m.state == State::Ready {
            break;
        }
        assert!(m.state != State::Failed, "{:?}", m.error);
        assert!(Instant::now() < deadline, "not ready in time");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let master = format!("http://{}/hls/{id}/master.m3u8", running.http_addr);

    // the harness with player-test/traces/drop.txt: 8 Mbit/s, 1 Mbit/s from 4 s to 12 s, then
    // 8 Mbit/s again
    let drop = std::fs::read_to_string(
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../player-test/traces/drop.txt"),
    )
    .unwrap();
    let trace = player_test::trace::Trace::parse(&drop).unwrap();
    let report = player_test::play(
        &master,
        &player_test::Options {
            trace: Some(trace),
            ..Default::default()
        },
    )
    .await;
    assert!(report.violations.is_empty(), "{:#?}", report.violations);
    assert_eq!(report.played.len(), 15);
    let down = report
        .switches
        .iter()
        .any(|s| s.from == "720p" && s.to == "480p");
    let up_later = report
        .switches
        .iter()
        .skip_while(|s| !(s.from == "720p" && s.to == "480p"))
        .any(|s| s.from == "480p" && s.to == "720p");
    assert!(down && up_later, "{:#?}", report.switches);
    assert!(report.stalls.is_empty(), "{:#?}", report.stalls);

    // hls.js in Chromium
    let browser = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../player-test/browser");
    assert!(
        browser.join("node_modules/hls.js").exists()
            && browser.join("node_modules/playwright-core").exists(),
        "npm packages missing: run deploy/install-test-tools.sh"
    );
    assert!(
        PathBuf::from("/usr/bin/chromium").exists(),
        "chromium missing: run deploy/install-deps.sh --browser"
    );
    let artifacts = browser.join("artifacts");
    let out = tokio::process::Command::new("node")
        .arg(browser.join("hls-test.mjs"))
        .arg(&master)
        .arg(&artifacts)
        .output()
        .await
        .unwrap();
    let summary = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{summary}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_str(&summary).unwrap();
    for check in [
        "mse_h264",
        "plays_past_5s",
        "switches_down_when_capped",
        "no_fatal_error",
    ] {
        assert_eq!(v["checks"][check]["pass"], true, "{check}: {summary}");
    }
    assert!(artifacts.join("hls-playing.png").exists());
    running.stop().await.unwrap();
}
