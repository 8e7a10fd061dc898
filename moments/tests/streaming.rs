//! Transcoding while the upload arrives, through the running service: a clip uploaded like a
//! slow phone (paced, irregular tus PATCHes) is transcoded as its bytes land and becomes the
//! same ladder as the same clip uploaded at once; fragmented MP4 and WebM stream; a
//! `moov`-at-end MP4 waits for its last byte and says why; abandoned uploads leave nothing;
//! a stalled or slow upload does not hold the worker hostage; bad media fails the same way
//! on both paths. On the local store with SQLite and on S3 with PostgreSQL.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly

mod support;

use std::time::Duration;

use support::{Stack, assert_same_ladder, faststart_clip, ladder, make, start};

/// The ladder test on one stack: paced upload streams, whole upload does not, same ladder.
async fn same_ladder_both_ways(s: &Stack, dir: &std::path::Path) {
    // 1080p so every rung is made; 6 Mbit/s over 4 s ≈ 3 MB, paced at 1 MB/s ≈ 3 s (at 2 s
    // the first encoded segment and the last byte were a close race on 2 busy cores)
    let clip = faststart_clip(dir, "clip.mp4", 1920, 1080, 4, 6000);
    let data = std::fs::read(&clip).unwrap();

    let (_, streamed, seen) = s.paced(&data, 1.0e6, None).await;
    assert_eq!(seen.streaming, Some(true), "{seen:?}");
    assert!(
        seen.poster,
        "the poster is published while the upload arrives: {seen:?}"
    );
    assert!(
        seen.encoded_s > 0.0,
        "encoding had started before the last byte: {seen:?}"
    );
    assert!(seen.received_s >= seen.encoded_s.min(1.0), "{seen:?}");
    let m = s.settle(&streamed, Duration::from_secs(180)).await;
    assert_eq!(m["state"], "ready", "{m}");
    assert_eq!(m["streaming"], true, "{m}");
    assert!((m["encoded_s"].as_f64().unwrap() - 4.0).abs() < 0.1, "{m}");

    let after = s.whole(&data).await;
    let m = s.settle(&after, Duration::from_secs(180)).await;
    assert_eq!(m["state"], "ready", "{m}");
    assert_eq!(m["streaming"], false, "{m}");
    assert!(m["reason"].as_str().unwrap().contains("complete"), "{m}");

    let a = ladder(s, &streamed, dir).await;
    let b = ladder(s, &after, dir).await;
    assert_eq!(a.len(), 3, "{a:?}");
    assert_same_ladder(&a, &b, 30.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paced_upload_streams_into_the_same_ladder_as_after_upload() {
    let dir = tempfile::tempdir().unwrap();
    let s = start(dir.path(), |_| {}).await;
    same_ladder_both_ways(&s, dir.path()).await;
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streaming_works_on_s3_and_postgresql() {
    let dir = tempfile::tempdir().unwrap();
    let s3 = common::testing::S3Server::start();
    // parts of the minimum size S3 allows, so the clip spans parts and a tail
    let store = std::sync::Arc::new(s3.store("moments-test", "streaming", 5 << 20).await);
    let pg = common::testing::fresh_pg().await;
    let (db_url, _sqlite) = match &pg {
        Some(pg) => (pg.url.clone(), None),
        None => {
            let t = tempfile::tempdir().unwrap();
            (
                format!("sqlite://{}", t.path().join("m.db").display()),
                Some(t),
            )
        }
    };
    let db = common::db::Db::connect(&db_url, 2).await.unwrap();
    let env = [
        ("MOMENTS_DATABASE_URL", db_url.clone()),
        ("MOMENTS_STORAGE", "s3://moments-test/streaming".to_string()),
        ("MOMENTS_S3_ENDPOINT", s3.endpoint.clone()),
        ("AWS_ACCESS_KEY_ID", s3.access_key.clone()),
        ("AWS_SECRET_ACCESS_KEY", s3.secret_key.clone()),
        ("AWS_REGION", "us-east-1".to_string()),
    ];
    std::fs::create_dir_all(dir.path().join("srv")).unwrap();
    let s = support::spawn(
        &dir.path().join("srv"),
        "[storage]\ns3_part_size = 5242880\n",
        &env,
        store,
        db,
    )
    .await;
    // a clip over one part: 12 Mbit/s over 4 s ≈ 6 MB
    let clip = faststart_clip(dir.path(), "big.mp4", 1280, 720, 4, 12000);
    let data = std::fs::read(&clip).unwrap();
    assert!(data.len() > 5 << 20, "{} bytes", data.len());
    let (_, id, seen) = s.paced(&data, 2.5e6, None).await;
    assert_eq!(seen.streaming, Some(true), "{seen:?}");
    assert!(seen.encoded_s > 0.0, "{seen:?}");
    let m = s.settle(&id, Duration::from_secs(180)).await;
    assert_eq!(m["state"], "ready", "{m}");
    // The source is assembled from its pieces by a queue job of its own, which may end after
    // the moment is ready (the transcoder read the pieces): then the assembled source is the
    // file, and no part or tail object is left behind.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let upload_keys = loop {
        let keys = s.keys("uploads/").await;
        if keys.len() == 1 || std::time::Instant::now() > deadline {
            break keys;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(upload_keys.len(), 1, "{upload_keys:?}");
    let stored = s
        .store()
        .get_bytes(
            &common::store::Key::new(upload_keys[0].clone()).unwrap(),
            64 << 20,
        )
        .await
        .unwrap();
    assert!(stored == data, "the assembled source differs from the file");
    let after = s.whole(&data).await;
    let m = s.settle(&after, Duration::from_secs(180)).await;
    assert_eq!(m["state"], "ready", "{m}");
    let a = ladder(&s, &id, dir.path()).await;
    let b = ladder(&s, &after, dir.path()).await;
    assert_same_ladder(&a, &b, 30.0);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fragmented_mp4_and_webm_stream_and_moov_at_the_end_waits_and_says_why() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let s = start(d, |_| {}).await;
    let src = "testsrc2=size=1280x720:rate=30:duration=4";
    let sine = "sine=frequency=300:duration=4";
    // what iOS AVAssetWriter and Safari's MediaRecorder write
    let fmp4 = make(
        &d.join("frag.mp4"),
        &[
            "-f",
            "lavfi",
            "-i",
            src,
            "-f",
            "lavfi",
            "-i",
            sine,
            "-c:v",
            "libx264",
            "-preset",
            "ultrafast",
            "-b:v",
            "8M",
            "-pix_fmt",
            "yuv420p",
            "-c:a",
            "aac",
            "-movflags",
            "frag_keyframe+empty_moov+default_base_moof",
            "-frag_duration",
            "500000",
        ],
    );
    // what Chrome's MediaRecorder writes: WebM, VP8 + Opus, live (sizes unknown, no cues)
    let webm = make(
        &d.join("rec.webm"),
        &[
            "-f",
            "lavfi",
            "-i",
            src,
            "-f",
            "lavfi",
            "-i",
            sine,
            "-c:v",
            "libvpx",
            "-deadline",
            "realtime",
            "-cpu-used",
            "8",
            "-b:v",
            "6M",
            "-c:a",
            "libopus",
            "-live",
            "1",
            "-f",
            "webm",
        ],
    );
    // an MP4 straight from a muxer without faststart
    let late = make(
        &d.join("late.mp4"),
        &[
            "-f",
            "lavfi",
            "-i",
            src,
            "-f",
            "lavfi",
            "-i",
            sine,
            "-c:v",
            "libx264",
            "-preset",
            "ultrafast",
            "-b:v",
            "8M",
            "-pix_fmt",
            "yuv420p",
            "-c:a",
            "aac",
        ],
    );
    for (file, what) in [(&fmp4, "fragmented MP4"), (&webm, "WebM")] {
        let data = std::fs::read(file).unwrap();
        let (_, id, seen) = s.paced(&data, 1.2e6, None).await;
        assert_eq!(seen.streaming, Some(true), "{what}: {seen:?}");
        assert!(
            seen.encoded_s > 0.0,
            "{what} was transcoded while it arrived: {seen:?}"
        );
        let m = s.settle(&id, Duration::from_secs(180)).await;
        assert_eq!(m["state"], "ready", "{what}: {m}");
        let names: Vec<_> = m["renditions"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["name"].as_str().unwrap().to_string())
            .collect();
        assert_eq!(names, ["480p", "720p"], "{what}");
    }
    let data = std::fs::read(&late).unwrap();
    let (_, id, seen) = s.paced(&data, 1.2e6, None).await;
    assert_eq!(seen.streaming, Some(false), "{seen:?}");
    assert_eq!(seen.reason.as_deref(), Some("moov at the end of the file"));
    assert_eq!(seen.encoded_s, 0.0, "{seen:?}");
    let m = s.settle(&id, Duration::from_secs(180)).await;
    assert_eq!(m["state"], "ready", "{m}");
    assert_eq!(m["streaming"], false);
    assert_eq!(m["reason"], "moov at the end of the file");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn moments_upload_makes_a_moov_at_the_end_mp4_streamable_and_resumes_it() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let s = start(d, |_| {}).await;
    let plain = make(
        &d.join("plain.mp4"),
        &[
            "-f",
            "lavfi",
            "-i",
            "testsrc2=size=1280x720:rate=30:duration=4",
            "-f",
            "lavfi",
            "-i",
            "sine=duration=4",
            "-c:v",
            "libx264",
            "-preset",
            "ultrafast",
            "-b:v",
            "8M",
            "-pix_fmt",
            "yuv420p",
            "-c:a",
            "aac",
        ],
    );
    // as a phone stores a portrait clip: sideways, with a display matrix
    let late = make(
        &d.join("late.mp4"),
        &[
            "-i",
            plain.to_str().unwrap(),
            "-c",
            "copy",
            "-metadata:s:v:0",
            "rotate=90",
        ],
    );
    assert!(transcode::container::needs_faststart(&late));
    let running = s.running.as_ref().unwrap();
    let quic = running.quic_addr.unwrap();
    let fp = running.cert_sha256.clone().unwrap();
    let state = d.join("client/uploads.json");
    let upload = |extra: &[&str]| {
        let mut c = std::process::Command::new(env!("CARGO_BIN_EXE_moments"));
        for (k, _) in std::env::vars() {
            if k.starts_with("MOMENTS_") && !k.starts_with("MOMENTS_TEST_") {
                c.env_remove(k);
            }
        }
        c.current_dir(d)
            .args(["upload", "--quiet", "--server"])
            .arg(format!("https://{quic}"))
            .args(["--token", &s.token, "--cert-sha256", &fp, "--state"])
            .arg(&state)
            .args(extra)
            .arg(&late);
        c
    };
    // killed part-way (paced, so it is still sending), then run again: it resumes
    let mut first = upload(&["--rate", "4Mbit"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while !std::fs::read_to_string(&state).is_ok_and(|s| s.contains("/files/")) {
        assert!(
            std::time::Instant::now() < deadline,
            "no upload was created"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(800));
    first.kill().unwrap();
    first.wait().unwrap();
    let report = d.join("report.json");
    let out = upload(&["--wait", "--report", report.to_str().unwrap()])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(
        stderr.contains("resumed https://"),
        "the re-run resumed: {stderr}"
    );
    let id = stdout
        .lines()
        .find_map(|l| l.strip_prefix("moment "))
        .unwrap()
        .to_string();
    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&report).unwrap()).unwrap();
    assert_eq!(report["faststart"], true);
    assert!(report["ready_ms"].as_i64().unwrap() >= report["last_chunk_ms"].as_i64().unwrap());
    // one cached copy, one upload: its bytes are the fast-start copy, which streams
    let copies: Vec<_> = std::fs::read_dir(d.join("client/faststart"))
        .unwrap()
        .collect();
    assert_eq!(copies.len(), 1);
    let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM uploads")
        .fetch_one(s.db.pool())
        .await
        .unwrap();
    assert_eq!(n, 1, "the re-run resumed the same upload");
    let uploaded = s.keys("uploads/").await;
    let bytes = std::fs::read(d.join("data/objects").join(&uploaded[0])).unwrap();
    assert!(matches!(
        transcode::container::sniff(&bytes, bytes.len() as u64),
        transcode::container::Sniff::Stream { .. }
    ));
    // the same media: ffprobe reads the same streams, duration and rotation from both
    let probe = |p: &std::path::Path| {
        let v = support::ffprobe(p.to_str().unwrap(), &["-show_streams", "-show_format"]);
        let streams: Vec<_> = v["streams"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| {
                (
                    s["codec_name"].clone(),
                    s["nb_frames"].clone(),
                    s["side_data_list"].clone(),
                )
            })
            .collect();
        (streams, v["format"]["duration"].clone())
    };
    let copy = d.join("data/objects").join(&uploaded[0]);
    assert_eq!(probe(&late), probe(&copy));
    assert_eq!(
        probe(&copy).0[0].2[0]["rotation"],
        90,
        "the display matrix is kept"
    );
    let m = s.moment(&id).await;
    assert_eq!(m["state"], "ready", "{m}");
    let names: Vec<_> = m["renditions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["name"].as_str().unwrap().to_string(),
                r["width"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        names,
        [("480p".into(), 480), ("720p".into(), 720)],
        "upright: {m}"
    );
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upload_abandoned_mid_stream_leaves_no_objects_and_no_job() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let s = start(d, |c| {
        c.ingest.expires_secs = 3;
        c.ingest.cleanup_interval_secs = 1;
        c.transcode.stream_idle_secs = 60;
    })
    .await;
    let clip = faststart_clip(d, "clip.mp4", 1280, 720, 6, 8000);
    let data = std::fs::read(&clip).unwrap();
    let half = data.len() as u64 / 2;

    // terminated: the client deletes it half-way
    let (url, id, seen) = s.paced(&data, 2e6, Some(half)).await;
    assert_eq!(seen.streaming, Some(true), "{seen:?}");
    assert!(seen.poster, "{seen:?}");
    assert!(
        !s.keys(&format!("hls/{id}/")).await.is_empty(),
        "it had published"
    );
    let r = s
        .http
        .delete(&url)
        .bearer_auth(&s.token)
        .header("tus-resumable", "1.0.0")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    // expired: the client goes silent half-way
    let (_, expired, seen) = s.paced(&data, 2e6, Some(half)).await;
    assert_eq!(seen.streaming, Some(true), "{seen:?}");

    for id in [&id, &expired] {
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            let left = s.keys(&format!("hls/{id}/")).await;
            let running = s.running_jobs(id).await;
            let jobs: i64 = sqlx::query_scalar(
                "SELECT COUNT(*) FROM jobs WHERE dedup_key = $1 AND state IN ('queued', 'running')",
            )
            .bind(format!("transcode:{id}"))
            .fetch_one(s.db.pool())
            .await
            .unwrap();
            if left.is_empty() && running == 0 && jobs == 0 {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "{id}: objects {left:?}, running {running}, waiting {jobs}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let r = s
            .http
            .get(format!("{}/v1/moments/{id}", s.base))
            .bearer_auth(&s.token)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 404, "the moment went with its upload");
    }
    assert!(s.keys("uploads/").await.is_empty());
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_or_slow_upload_does_not_hold_the_worker_hostage() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let s = start(d, |c| {
        c.transcode.workers = 1;
        c.transcode.stream_idle_secs = 2;
        c.transcode.stream_yield_secs = 1;
    })
    .await;
    let clip = faststart_clip(d, "clip.mp4", 640, 360, 4, 4000);
    let data = std::fs::read(&clip).unwrap();
    let other = faststart_clip(d, "other.mp4", 640, 360, 2, 1000);
    let other = std::fs::read(&other).unwrap();

    // stalled: half of A, then nothing; the worker gives A up and B (complete) gets made
    let half = data.len() as u64 / 2;
    let (url, a, seen) = s.paced(&data, 4e6, Some(half)).await;
    assert_eq!(seen.streaming, Some(true), "{seen:?}");
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while s.running_jobs(&a).await > 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the stalled job kept its worker"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let m = s.moment(&a).await;
    assert!(m["reason"].as_str().unwrap().contains("stalled"), "{m}");
    let b = s.whole(&other).await;
    let m = s.settle(&b, Duration::from_secs(60)).await;
    assert_eq!(m["state"], "ready", "{m}");
    assert_eq!(s.moment(&a).await["state"], "uploading");
    // A resumes and completes
    s.patch(&url, half, data[half as usize..].to_vec()).await;
    let m = s.settle(&a, Duration::from_secs(60)).await;
    assert_eq!(m["state"], "ready", "{m}");

    // slow: C keeps arriving; D, complete, must not wait for C's last byte
    let slow = s.client.clone();
    let c_task = tokio::spawn(async move {
        let data = data;
        slow.paced(&data, 150e3, None).await
    });
    // let C's job start streaming
    tokio::time::sleep(Duration::from_secs(2)).await;
    let dd = s.whole(&other).await;
    let m = s.settle(&dd, Duration::from_secs(30)).await;
    assert_eq!(m["state"], "ready", "{m}");
    let (_, c, _) = c_task.await.unwrap();
    let done_d: i64 = m["updated_at"].as_i64().unwrap();
    let mc = s.settle(&c, Duration::from_secs(60)).await;
    assert_eq!(mc["state"], "ready", "{mc}");
    assert!(
        done_d < mc["updated_at"].as_i64().unwrap(),
        "D was ready before C's upload ended"
    );
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_media_fails_the_same_way_streamed_or_not() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let s = start(d, |_| {}).await;
    let good = faststart_clip(d, "good.mp4", 640, 360, 3, 3000);
    let bytes = std::fs::read(&good).unwrap();
    // (what, bytes, must fail)
    let mut cases: Vec<(&str, Vec<u8>, bool)> = Vec::new();
    // a fast-start file whose media is overwritten with garbage after the header
    let moov_end = match transcode::container::sniff(&bytes, bytes.len() as u64) {
        transcode::container::Sniff::Stream { open_at, .. } => open_at as usize,
        other => panic!("{other:?}"),
    };
    let mut corrupt = bytes.clone();
    for b in &mut corrupt[moov_end + 64..] {
        *b = 0x5a;
    }
    cases.push(("corrupt media", corrupt, true));
    // (the cases that stream as far as they can before the last byte)
    let streams_first = ["corrupt media", "too short", "too wide"];
    // a fast-start file cut in half (its index promises more than there is)
    cases.push(("truncated", bytes[..bytes.len() / 2].to_vec(), false));
    // a fast-start file whose header is damaged
    let mut header = bytes.clone();
    for b in &mut header[40..200] {
        *b = 0xff;
    }
    cases.push(("damaged header", header, false));
    let mut x: u64 = 0x1234_5678_9abc_def1;
    cases.push((
        "noise",
        (0..300 * 1024)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect(),
        true,
    ));
    let voice = make(
        &d.join("voice.mp4"),
        &[
            "-f",
            "lavfi",
            "-i",
            "sine=duration=3",
            "-c:a",
            "aac",
            "-movflags",
            "+faststart",
        ],
    );
    cases.push(("audio only", std::fs::read(&voice).unwrap(), true));
    // too short, but big enough to arrive in several pieces (so it does stream)
    let short = make(
        &d.join("short.mp4"),
        &[
            "-f",
            "lavfi",
            "-i",
            "testsrc2=size=1280x720:rate=30:duration=0.3",
            "-c:v",
            "libx264",
            "-preset",
            "ultrafast",
            "-qp",
            "0",
            "-pix_fmt",
            "yuv420p",
            "-movflags",
            "+faststart",
        ],
    );
    let short = std::fs::read(&short).unwrap();
    assert!(short.len() > 200_000, "{} bytes", short.len());
    cases.push(("too short", short, true));
    // far too wide to be a phone's video
    let wide = make(
        &d.join("wide.mp4"),
        &[
            "-f",
            "lavfi",
            "-i",
            "testsrc2=size=9000x64:rate=30:duration=2",
            "-c:v",
            "libx264",
            "-preset",
            "ultrafast",
            "-qp",
            "0",
            "-pix_fmt",
            "yuv420p",
            "-movflags",
            "+faststart",
        ],
    );
    cases.push(("too wide", std::fs::read(&wide).unwrap(), true));
    // a still image, named as a video
    let photo = make(
        &d.join("photo.jpg"),
        &[
            "-f",
            "lavfi",
            "-i",
            "testsrc2=size=1920x1080",
            "-frames:v",
            "1",
            "-q:v",
            "1",
        ],
    );
    cases.push(("still image", std::fs::read(&photo).unwrap(), true));

    for (what, data, must_fail) in &cases {
        let (_, streamed, _) = s.paced(data, 1e6, None).await;
        let whole = s.whole(data).await;
        let a = s.settle(&streamed, Duration::from_secs(120)).await;
        let b = s.settle(&whole, Duration::from_secs(120)).await;
        if *must_fail {
            assert_eq!(b["state"], "failed", "{what}: {b}");
            assert!(!b["error"].as_str().unwrap_or("").is_empty(), "{what}: {b}");
        }
        assert_eq!(a["state"], b["state"], "{what}: {a} vs {b}");
        if streams_first.contains(what) {
            // the streaming path read it first: it failed it itself once every byte was in,
            // or it waited for the last byte and the after-upload path did (a tiny file may
            // also be all in before a worker takes it: then there was nothing to stream)
            let streamed = a["streaming"] == true;
            let waited = a["reason"].as_str().is_some_and(|r| {
                r.contains("could not be read while arriving")
                    || r.contains("the upload was complete when a worker took it")
            });
            assert!(streamed || waited, "{what}: {a}");
        }
        assert_eq!(a["error"], b["error"], "{what}: the same reason both ways");
    }
    s.stop().await;
}
