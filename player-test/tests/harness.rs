//! The harness against HLS it did not make: a ladder written by the FFmpeg CLI, served over
//! HTTP, then broken in each way a server can break it. Every problem is reported with its
//! URL and a non-zero exit, never a panic.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly

use std::path::{Path, PathBuf};
use std::process::Command;

use axum::Router;
use axum::extract::{Path as UrlPath, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use player_test::trace::Trace;

const BIN: &str = env!("CARGO_BIN_EXE_player-test");

async fn file(State(root): State<PathBuf>, UrlPath(p): UrlPath<String>) -> impl IntoResponse {
    if p.contains("..") {
        return (StatusCode::NOT_FOUND, Vec::new());
    }
    match std::fs::read(root.join(p)) {
        Ok(b) => (StatusCode::OK, b),
        Err(_) => (StatusCode::NOT_FOUND, Vec::new()),
    }
}

async fn serve(root: &Path) -> String {
    let app = Router::new()
        .route("/{*p}", axum::routing::get(file))
        .with_state(root.to_path_buf());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    format!("http://{addr}")
}

/// A two-rung fMP4 ladder (360p at ~3 Mbit/s, 180p at ~0.8 Mbit/s), 2 s segments, made by FFmpeg.
fn ladder(dir: &Path, secs: u32) {
    let out = Command::new("ffmpeg")
        .current_dir(dir)
        .args([
            "-v",
            "error",
            "-y",
            "-f",
            "lavfi",
            "-i",
            &format!("testsrc2=size=640x360:rate=30:duration={secs}"),
        ])
        .args(["-f", "lavfi", "-i", &format!("sine=duration={secs}")])
        .args(["-filter_complex", "[0:v]split=2[a][b];[b]scale=320:180[b1]"])
        .args([
            "-map", "[a]", "-map", "[b1]", "-map", "0:a?", "-map", "1:a", "-map", "1:a",
        ])
        .args([
            "-c:v",
            "libx264",
            "-preset",
            "ultrafast",
            "-g",
            "60",
            "-keyint_min",
            "60",
            "-sc_threshold",
            "0",
        ])
        .args([
            "-b:v:0",
            "3000k",
            "-maxrate:v:0",
            "3000k",
            "-bufsize:v:0",
            "6000k",
        ])
        .args([
            "-b:v:1",
            "800k",
            "-maxrate:v:1",
            "800k",
            "-bufsize:v:1",
            "1600k",
        ])
        .args([
            "-c:a",
            "aac",
            "-b:a",
            "64k",
            "-f",
            "hls",
            "-hls_time",
            "2",
            "-hls_playlist_type",
            "vod",
        ])
        .args([
            "-hls_segment_type",
            "fmp4",
            "-master_pl_name",
            "master.m3u8",
        ])
        .args(["-var_stream_map", "v:0,a:0 v:1,a:1", "r%v/index.m3u8"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn run(url: &str, extra: &[&str]) -> (i32, serde_json::Value) {
    let out = Command::new(BIN)
        .arg(url)
        .arg("--json")
        .args(extra)
        .output()
        .unwrap();
    let report: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|_| panic!("no JSON report: {}", String::from_utf8_lossy(&out.stderr)));
    (out.status.code().unwrap_or(-1), report)
}

fn violations(r: &serde_json::Value) -> Vec<String> {
    r["violations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| {
            format!(
                "{} {}",
                v["url"].as_str().unwrap(),
                v["message"].as_str().unwrap()
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_good_ladder_plays_and_adapts_to_the_trace() {
    let dir = tempfile::tempdir().unwrap();
    ladder(dir.path(), 30);
    let base = serve(dir.path()).await;
    let trace = dir.path().join("drop.txt");
    std::fs::write(&trace, "0 8000\n4 600\n14 8000\n").unwrap();
    let (code, r) = run(
        &format!("{base}/master.m3u8"),
        &["--trace", trace.to_str().unwrap()],
    );
    assert_eq!(code, 0, "{:?}", violations(&r));
    assert_eq!(r["clock"], "virtual");
    let switches = r["switches"].as_array().unwrap();
    assert!(
        switches
            .iter()
            .any(|s| s["from"] == "360p" && s["to"] == "180p"),
        "{r}"
    );
    assert!(
        switches
            .iter()
            .any(|s| s["from"] == "180p" && s["to"] == "360p"),
        "{r}"
    );
    assert_eq!(r["stalls"].as_array().unwrap().len(), 0, "{r}");
    assert_eq!(r["played"].as_array().unwrap().len(), 15);
    assert!(r["startup_ms"].as_u64().unwrap() > 0);
    assert!(r["bytes"].as_u64().unwrap() > 1_000_000);
    assert!(r["avg_kbps"].as_f64().unwrap() > 500.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_starved_link_stalls_and_says_so() {
    let dir = tempfile::tempdir().unwrap();
    ladder(dir.path(), 10);
    let base = serve(dir.path()).await;
    let trace = dir.path().join("slow.txt");
    std::fs::write(&trace, "0 300\n").unwrap();
    let (code, r) = run(
        &format!("{base}/master.m3u8"),
        &["--trace", trace.to_str().unwrap(), "--no-decode"],
    );
    assert_eq!(code, 0);
    assert!(!r["stalls"].as_array().unwrap().is_empty(), "{r}");
    assert!(r["played"].as_array().unwrap().iter().all(|p| p == "180p"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_broken_ladder_is_reported_with_its_url() {
    let dir = tempfile::tempdir().unwrap();
    ladder(dir.path(), 6);
    let base = serve(dir.path()).await;
    let d = dir.path();

    // a 404 segment
    let seg = d.join("r0/index1.m4s");
    let saved = std::fs::read(&seg).unwrap();
    std::fs::remove_file(&seg).unwrap();
    let (code, r) = run(
        &format!("{base}/master.m3u8"),
        &["--trace", &write(d, "fast.txt", "0 100000")],
    );
    assert_eq!(code, 1);
    assert!(
        violations(&r)
            .iter()
            .any(|v| v.contains("/r0/index1.m4s") && v.contains("404")),
        "{:?}",
        violations(&r)
    );

    // a truncated segment
    std::fs::write(&seg, &saved[..saved.len() / 3]).unwrap();
    let (code, r) = run(
        &format!("{base}/master.m3u8"),
        &["--trace", &write(d, "fast.txt", "0 100000")],
    );
    assert_eq!(code, 1);
    assert!(
        violations(&r)
            .iter()
            .any(|v| v.contains("/r0/index1.m4s") && v.contains("decode")),
        "{:?}",
        violations(&r)
    );
    std::fs::write(&seg, &saved).unwrap();

    // a wrong TARGETDURATION
    let pl = d.join("r1/index.m3u8");
    let text = std::fs::read_to_string(&pl).unwrap();
    std::fs::write(
        &pl,
        text.replace("#EXT-X-TARGETDURATION:2", "#EXT-X-TARGETDURATION:1"),
    )
    .unwrap();
    let (code, r) = run(&format!("{base}/master.m3u8"), &["--no-decode"]);
    assert_eq!(code, 1);
    assert!(
        violations(&r)
            .iter()
            .any(|v| v.contains("/r1/index") && v.contains("TARGETDURATION")),
        "{:?}",
        violations(&r)
    );
    std::fs::write(&pl, text).unwrap();

    // a master pointing at a missing rung
    let master = std::fs::read_to_string(d.join("master.m3u8")).unwrap();
    std::fs::write(
        d.join("broken.m3u8"),
        format!("{master}#EXT-X-STREAM-INF:BANDWIDTH=9000000,RESOLUTION=1920x1080,CODECS=\"avc1.640028\"\nr9/index.m3u8\n"),
    )
    .unwrap();
    let (code, r) = run(&format!("{base}/broken.m3u8"), &["--no-decode"]);
    assert_eq!(code, 1);
    assert!(
        violations(&r)
            .iter()
            .any(|v| v.contains("/r9/index.m3u8") && v.contains("404")),
        "{:?}",
        violations(&r)
    );

    // a body that is not a playlist
    std::fs::write(d.join("nonsense.m3u8"), "<html>not here</html>").unwrap();
    let (code, r) = run(&format!("{base}/nonsense.m3u8"), &[]);
    assert_eq!(code, 1);
    assert!(
        violations(&r)[0].contains("not an HLS playlist"),
        "{:?}",
        violations(&r)
    );

    // a master that lies about the resolution
    std::fs::write(
        d.join("liar.m3u8"),
        master.replace("RESOLUTION=640x360", "RESOLUTION=1280x720"),
    )
    .unwrap();
    let (code, r) = run(
        &format!("{base}/liar.m3u8"),
        &["--trace", &write(d, "fast.txt", "0 100000")],
    );
    assert_eq!(code, 1, "{r}");
    assert!(
        violations(&r)
            .iter()
            .any(|v| v.contains("RESOLUTION 1280x720")),
        "{:?}",
        violations(&r)
    );

    // nothing at all, and a bad trace file
    let (code, r) = run(&format!("{base}/missing.m3u8"), &[]);
    assert_eq!(code, 1);
    assert!(violations(&r)[0].contains("404"));
    let out = Command::new(BIN)
        .arg(format!("{base}/master.m3u8"))
        .args(["--trace", &write(d, "bad.txt", "zero 1")])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("line 1"));
}

fn write(dir: &Path, name: &str, text: &str) -> String {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p.to_string_lossy().into_owned()
}

#[test]
fn traces_parse_from_files() {
    assert!(Trace::parse("0 8000\n10 1000\n20 8000\n").is_ok());
}
