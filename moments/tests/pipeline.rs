//! The video path through the running service: a moment is queued as ingest queues it, the
//! in-process worker makes the ladder, the API and SSE report it, and the HLS origin serves it
//! to FFmpeg (an independent player) over HTTP.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly

use std::process::Command;
use std::time::{Duration, Instant};

use common::moment::{self, State};
use common::store::{Key, PutOptions};
use futures::StreamExt;

use common::testing::ffmpeg;

async fn start(dir: &std::path::Path) -> moments::app::Running {
    let mut config = moments::Config {
        data_dir: dir.join("data"),
        ..Default::default()
    };
    config.http.addr = "127.0.0.1:0".parse().unwrap();
    config.quic.addr = "127.0.0.1:0".parse().unwrap();
    config.transcode.x264_preset = "ultrafast".into();
    config.queue.poll_ms = 100;
    moments::app::start(config, moments::app::all_roles())
        .await
        .unwrap()
}

/// Puts a source in the store and queues it, as ingest does when an upload completes.
async fn submit(s: &moments::app::Services, user: &str, file: &std::path::Path) -> String {
    let id = common::ids::new_id();
    let key = Key::new(format!("uploads/{id}")).unwrap();
    s.store
        .put_file(&key, file, &PutOptions::default())
        .await
        .unwrap();
    moment::create(&s.db, &id, user, State::Queued, Some(key.as_str()))
        .await
        .unwrap();
    s.queue
        .enqueue(&moment::transcode_job(&id, Default::default()))
        .await
        .unwrap();
    id
}

// multi-threaded: FFmpeg (a blocking child process) fetches from the in-process server
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_moment_goes_from_queued_to_ready_and_plays_through_the_origin() {
    let dir = tempfile::tempdir().unwrap();
    let running = start(dir.path()).await;
    let s = running.services.clone();
    let base = format!("http://{}", running.http_addr);
    let (private, _) = common::auth::ensure_dev_key(&dir.path().join("data")).unwrap();
    let alice = common::auth::mint(&private, "alice", Duration::from_secs(600)).unwrap();
    let bob = common::auth::mint(&private, "bob", Duration::from_secs(600)).unwrap();
    let http = reqwest::Client::new();

    let src = dir.path().join("src.mp4");
    ffmpeg(&[
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
        "-pix_fmt",
        "yuv420p",
        "-c:a",
        "aac",
        src.to_str().unwrap(),
    ]);
    let id = submit(&s, "alice", &src).await;

    // the master is not served before the moment is ready
    let early = http
        .get(format!("{base}/hls/{id}/master.m3u8"))
        .send()
        .await
        .unwrap();
    assert_eq!(early.status(), 404);

    // SSE through a single-use ticket: state changes and progress until ready
    let ticket: serde_json::Value = http
        .post(format!("{base}/v1/tickets"))
        .bearer_auth(&alice)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let ticket = ticket["ticket"].as_str().unwrap().to_string();
    let resp = http
        .get(format!("{base}/v1/moments/{id}/events?ticket={ticket}"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert!(
        resp.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/event-stream")
    );
    let mut body = resp.bytes_stream();
    let mut text = String::new();
    let deadline = Instant::now() + Duration::from_secs(120);
    while !text.contains("\"state\":\"ready\"") && !text.contains("\"state\":\"failed\"") {
        assert!(Instant::now() < deadline, "no final event: {text}");
        match tokio::time::timeout(Duration::from_secs(30), body.next()).await {
            Ok(Some(chunk)) => text.push_str(&String::from_utf8_lossy(&chunk.unwrap())),
            Ok(None) => break,
            Err(_) => panic!("SSE stalled: {text}"),
        }
    }
    assert!(text.contains("event: moment"), "{text}");
    assert!(text.contains("\"state\":\"ready\""), "{text}");
    let states: Vec<&str> = ["queued", "transcoding", "ready"]
        .into_iter()
        .filter(|st| text.contains(&format!("\"state\":\"{st}\"")))
        .collect();
    assert!(
        states.contains(&"transcoding") && states.contains(&"ready"),
        "{text}"
    );
    // the ticket was single-use
    let again = http
        .get(format!("{base}/v1/moments/{id}/events?ticket={ticket}"))
        .send()
        .await
        .unwrap();
    assert_eq!(again.status(), 401);

    // the status API: owner sees it, others get 404, no token 401
    let v: serde_json::Value = http
        .get(format!("{base}/v1/moments/{id}"))
        .bearer_auth(&alice)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(v["state"], "ready");
    assert_eq!(v["progress"], 1.0);
    let master_url = v["master_url"].as_str().unwrap().to_string();
    assert_eq!(master_url, format!("{base}/hls/{id}/master.m3u8"));
    assert!(v["poster_url"].as_str().unwrap().ends_with("/poster.jpg"));
    assert_eq!(v["renditions"].as_array().unwrap().len(), 2);
    let other = http
        .get(format!("{base}/v1/moments/{id}"))
        .bearer_auth(&bob)
        .send()
        .await
        .unwrap();
    assert_eq!(other.status(), 404);
    let none = http
        .get(format!("{base}/v1/moments/{id}"))
        .send()
        .await
        .unwrap();
    assert_eq!(none.status(), 401);

    // the origin: content types, caching, CORS, ranges, validators, traversal
    let master = http.get(&master_url).send().await.unwrap();
    assert_eq!(master.status(), 200);
    assert_eq!(
        master.headers()["content-type"],
        "application/vnd.apple.mpegurl"
    );
    assert_eq!(master.headers()["access-control-allow-origin"], "*");
    assert!(
        master.headers()["cache-control"]
            .to_str()
            .unwrap()
            .contains("max-age=30")
    );
    let seg_url = format!("{base}/hls/{id}/720p/seg_00000.m4s");
    let seg = http.get(&seg_url).send().await.unwrap();
    assert_eq!(seg.headers()["content-type"], "video/iso.segment");
    assert!(
        seg.headers()["cache-control"]
            .to_str()
            .unwrap()
            .contains("immutable")
    );
    let etag = seg.headers()["etag"].to_str().unwrap().to_string();
    let full = seg.bytes().await.unwrap();
    let ranged = http
        .get(&seg_url)
        .header("range", "bytes=10-19")
        .send()
        .await
        .unwrap();
    assert_eq!(ranged.status(), 206);
    assert_eq!(
        ranged.headers()["content-range"],
        format!("bytes 10-19/{}", full.len())
    );
    assert_eq!(ranged.bytes().await.unwrap(), full.slice(10..20));
    let past = http
        .get(&seg_url)
        .header("range", format!("bytes={}-", full.len() + 5))
        .send()
        .await
        .unwrap();
    assert_eq!(past.status(), 416);
    assert_eq!(
        past.headers()["content-range"],
        format!("bytes */{}", full.len())
    );
    let cached = http
        .get(&seg_url)
        .header("if-none-match", &etag)
        .send()
        .await
        .unwrap();
    assert_eq!(cached.status(), 304);
    let head = http.head(&seg_url).send().await.unwrap();
    assert_eq!(head.status(), 200);
    assert_eq!(head.headers()["content-length"], full.len().to_string());
    for bad in [
        format!("{base}/hls/{id}/../../uploads/{id}"),
        format!("{base}/hls/{id}/%2e%2e/%2e%2e/uploads/{id}"),
        format!("{base}/hls/{id}/.meta/master.m3u8.json"),
        format!("{base}/hls/not-an-id/master.m3u8"),
        format!("{base}/hls/{id}/720p/nope.m4s"),
    ] {
        let r = http.get(&bad).send().await.unwrap();
        assert_eq!(r.status(), 404, "{bad}");
    }
    let preflight = http
        .request(reqwest::Method::OPTIONS, &seg_url)
        .header("origin", "https://app.example")
        .header("access-control-request-method", "GET")
        .send()
        .await
        .unwrap();
    assert!(preflight.status().is_success());
    assert!(
        preflight.headers()["access-control-allow-headers"]
            .to_str()
            .unwrap()
            .contains("Range")
    );

    // FFmpeg plays every rung to the end through the origin
    for v in 0..2 {
        let out = Command::new("ffmpeg")
            .args([
                "-v",
                "error",
                "-i",
                &master_url,
                "-map",
                &format!("0:v:{v}"),
                "-map",
                "0:a:0",
                "-f",
                "null",
                "-",
            ])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "rung {v}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            out.stderr.is_empty(),
            "decode errors on rung {v}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    // metrics know about the queue and the transcode
    let m = http
        .get(format!("{base}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        m.contains(r#"moments_jobs_total{kind="transcode",outcome="done"} 1"#),
        "{m}"
    );
    assert!(m.contains("moments_transcode_speed_ratio_count 1"), "{m}");
    assert!(m.contains("moments_job_duration_seconds_bucket{"), "{m}");
    running.stop().await.unwrap();
}
