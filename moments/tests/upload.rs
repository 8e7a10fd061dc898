//! `moments upload` as a user runs it against `moments serve`: over HTTP/3 by default,
//! killed mid-upload and re-run (it resumes the same upload), then `--wait` until the ladder is
//! ready; and over HTTP/1.1 with `--http`.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_moments");

fn clean(cmd: &mut Command) -> &mut Command {
    for (k, _) in std::env::vars() {
        if k.starts_with("MOMENTS_") && !k.starts_with("MOMENTS_TEST_") {
            cmd.env_remove(k);
        }
    }
    cmd
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upload_is_killed_re_run_resumes_and_waits_for_the_ladder() {
    let dir = tempfile::tempdir().unwrap();
    let http = format!("127.0.0.1:{}", common::testing::free_port());
    let quic = {
        let s = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        s.local_addr().unwrap().to_string()
    };
    std::fs::write(
        dir.path().join("moments.toml"),
        "[transcode]\nx264_preset = \"ultrafast\"\n",
    )
    .unwrap();
    let mut server = clean(&mut Command::new(BIN))
        .current_dir(dir.path())
        .env("MOMENTS_HTTP_ADDR", &http)
        .env("MOMENTS_QUIC_ADDR", &quic)
        .arg("serve")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(server.stdout.take().unwrap()).lines();
    for line in lines.by_ref() {
        if line.unwrap().contains("QUIC certificate SHA-256") {
            break;
        }
    }
    std::thread::spawn(move || for _ in lines {});

    // a high-bit-rate clip so the upload takes a while
    let clip = dir.path().join("clip.mp4");
    let out = Command::new("ffmpeg")
        .args([
            "-v",
            "error",
            "-y",
            "-f",
            "lavfi",
            "-i",
            "testsrc2=size=1280x720:rate=30:duration=6",
        ])
        .args([
            "-f",
            "lavfi",
            "-i",
            "sine=duration=6",
            "-c:v",
            "libx264",
            "-preset",
            "ultrafast",
        ])
        // fast-start, so the client sends the file as it is (a moov-at-end file would be sent
        // as a fast-start copy; see the streaming tests)
        .args(["-b:v", "30M", "-pix_fmt", "yuv420p", "-c:a", "aac"])
        .args(["-movflags", "+faststart"])
        .arg(&clip)
        .output()
        .unwrap();
    assert!(out.status.success());

    let state = dir.path().join("client-state.json");
    let upload = |extra: &[&str]| {
        let mut c = Command::new(BIN);
        clean(&mut c);
        c.current_dir(dir.path())
            .env("MOMENTS_HTTP_ADDR", &http)
            .env("MOMENTS_QUIC_ADDR", &quic)
            .args(["upload", "--quiet", "--chunk-size", "256KiB", "--state"])
            .arg(&state)
            .args(extra)
            .arg(&clip);
        c
    };
    // first run: killed as soon as the upload exists
    let mut first = upload(&[])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !std::fs::read_to_string(&state).is_ok_and(|s| s.contains("/files/")) {
        assert!(
            Instant::now() < deadline,
            "the client never created the upload"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    first.kill().unwrap();
    first.wait().unwrap();

    // second run: resumes the same upload and waits for the ladder
    let out = upload(&["--wait"]).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(stderr.contains("resumed https://"), "{stderr}");
    let moment = stdout
        .lines()
        .find_map(|l| l.strip_prefix("moment "))
        .unwrap()
        .to_string();
    let master = stdout
        .lines()
        .find_map(|l| l.strip_prefix("master "))
        .unwrap()
        .to_string();
    assert_eq!(master, format!("http://{http}/hls/{moment}/master.m3u8"));
    let playlist = reqwest::get(&master).await.unwrap();
    assert_eq!(playlist.status(), 200);
    assert!(playlist.text().await.unwrap().contains("720p/index.m3u8"));

    // exactly one upload was made, and its bytes are the file's
    let db = common::db::Db::connect(
        &format!("sqlite://{}", dir.path().join("data/moments.db").display()),
        1,
    )
    .await
    .unwrap();
    let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM uploads")
        .fetch_one(db.pool())
        .await
        .unwrap();
    assert_eq!(n, 1);
    let id: String = sqlx::query_scalar("SELECT id FROM uploads")
        .fetch_one(db.pool())
        .await
        .unwrap();
    use sha2::Digest;
    let stored = std::fs::read(dir.path().join(format!("data/objects/uploads/{id}"))).unwrap();
    let source = std::fs::read(&clip).unwrap();
    assert_eq!(sha2::Sha256::digest(&stored), sha2::Sha256::digest(&source));

    // the same over HTTP/1.1
    std::fs::remove_file(&state).ok();
    let out = upload(&["--http"]).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("moment "));
    // a missing file is a clear error naming it
    let out = clean(&mut Command::new(BIN))
        .current_dir(dir.path())
        .env("MOMENTS_HTTP_ADDR", &http)
        .env("MOMENTS_QUIC_ADDR", &quic)
        .args(["upload", "--quiet", "--state"])
        .arg(&state)
        .arg(dir.path().join("missing.mp4"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("missing.mp4"));
    let _ = server.kill();
    let _ = server.wait();
}
