//! Scale-out: `moments worker` processes against one PostgreSQL and one S3 server. A worker
//! killed with SIGKILL mid-job loses its lease, and another worker finishes the job.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::db::Db;
use common::moment::{self, State};
use common::queue::Queue;
use common::store::{Key, ObjectStore, PutOptions};
use common::testing::{S3Server, free_port, fresh_pg};

const BIN: &str = env!("CARGO_BIN_EXE_moments");

fn worker(dir: &std::path::Path, pg: &str, s3: &S3Server) -> Child {
    let mut cmd = Command::new(BIN);
    for (k, _) in std::env::vars() {
        if k.starts_with("MOMENTS_") && !k.starts_with("MOMENTS_TEST_") {
            cmd.env_remove(k);
        }
    }
    cmd.current_dir(dir)
        .env("MOMENTS_HTTP_ADDR", format!("127.0.0.1:{}", free_port()))
        .env("MOMENTS_DATABASE_URL", pg)
        .env("MOMENTS_STORAGE", "s3://moments/media")
        .env("MOMENTS_S3_ENDPOINT", &s3.endpoint)
        .env("AWS_ACCESS_KEY_ID", &s3.access_key)
        .env("AWS_SECRET_ACCESS_KEY", &s3.secret_key)
        .env("AWS_REGION", "us-east-1")
        .arg("worker")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_worker_job_completes_on_another_worker() {
    let Some(pg) = fresh_pg().await else { return };
    let s3 = S3Server::start();
    let store = s3.store("moments", "media", 8 * 1024 * 1024).await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("moments.toml"),
        "[queue]\nlease_secs = 2\npoll_ms = 200\nbackoff_base_ms = 200\n\n[transcode]\nx264_preset = \"veryfast\"\n",
    )
    .unwrap();
    let src = dir.path().join("long.mp4");
    let out = Command::new("ffmpeg")
        .args([
            "-v",
            "error",
            "-y",
            "-f",
            "lavfi",
            "-i",
            "testsrc2=size=1280x720:rate=30:duration=20",
        ])
        .args([
            "-f",
            "lavfi",
            "-i",
            "sine=duration=20",
            "-c:v",
            "libx264",
            "-preset",
            "ultrafast",
        ])
        .args(["-pix_fmt", "yuv420p", "-c:a", "aac"])
        .arg(&src)
        .output()
        .unwrap();
    assert!(out.status.success());

    // queue the moment as ingest would
    let db = Db::connect(&pg.url, 2).await.unwrap();
    let queue = Queue::new(db.clone(), Default::default());
    let id = common::ids::new_id();
    let key = Key::new(format!("uploads/{id}")).unwrap();
    store
        .put_file(&key, &src, &PutOptions::default())
        .await
        .unwrap();
    moment::create(&db, &id, "alice", State::Queued, Some(key.as_str()))
        .await
        .unwrap();
    let job = queue
        .enqueue(&moment::transcode_job(&id, Default::default()))
        .await
        .unwrap();

    let mut a = worker(dir.path(), &pg.url, &s3);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let m = moment::get(&db, &id).await.unwrap().unwrap();
        assert!(
            !m.state.is_final(),
            "finished before it could be killed; make the clip longer"
        );
        if m.state == State::Transcoding && m.progress > 0.05 {
            break;
        }
        assert!(Instant::now() < deadline, "worker A never got going");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    a.kill().unwrap(); // SIGKILL: no cleanup, the lease just stops being renewed
    a.wait().unwrap();
    assert_eq!(queue.get(&job).await.unwrap().unwrap().state, "running");

    let mut b = worker(dir.path(), &pg.url, &s3);
    let deadline = Instant::now() + Duration::from_secs(180);
    let m = loop {
        let m = moment::get(&db, &id).await.unwrap().unwrap();
        if m.state.is_final() {
            break m;
        }
        assert!(Instant::now() < deadline, "worker B did not finish the job");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let _ = b.kill();
    let _ = b.wait();
    assert_eq!(m.state, State::Ready, "{:?}", m.error);
    let rec = queue.get(&job).await.unwrap().unwrap();
    assert_eq!(rec.state, "done");
    assert_eq!(rec.attempts, 2, "taken over after the lease expired");
    let master = store
        .head(&Key::new(format!("hls/{id}/master.m3u8")).unwrap())
        .await
        .unwrap();
    assert_eq!(
        master.content_type.as_deref(),
        Some("application/vnd.apple.mpegurl")
    );
    let seg = store
        .head(&Key::new(format!("hls/{id}/720p/seg_00009.m4s")).unwrap())
        .await
        .unwrap();
    assert_eq!(seg.content_type.as_deref(), Some("video/iso.segment"));
    assert!(seg.cache_control.unwrap().contains("immutable"));
    db.close().await;
}
