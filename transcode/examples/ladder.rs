//! Benchmark driver: one source file from "upload complete" to "ready" through the real job
//! path (SQLite queue, worker, FFmpeg, packager, local store), as `moments serve` runs it.
//!
//!   cargo run --release -p transcode --example ladder -- SOURCE OUTDIR [PRESET [X264_THREADS]]
//!
//! Prints the wall time; `deploy/bench/transcode.sh` runs it against the FFmpeg CLI anchor.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::moment::{self, State};
use common::queue::Queue;
use common::store::{Key, Local, ObjectStore, PutOptions};
use tokio_util::sync::CancellationToken;

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() < 3 {
        eprintln!("usage: ladder SOURCE OUTDIR [PRESET [X264_THREADS]]");
        std::process::exit(2);
    }
    let (source, out) = (
        std::path::PathBuf::from(&args[1]),
        std::path::PathBuf::from(&args[2]),
    );
    let mut config = transcode::Config::default();
    if let Some(p) = args.get(3) {
        config.x264_preset = p.clone();
    }
    if let Some(t) = args.get(4) {
        config.x264_threads = t.parse().expect("threads");
    }
    std::fs::create_dir_all(&out).unwrap();
    let db = common::db::Db::connect(&format!("sqlite://{}", out.join("bench.db").display()), 4)
        .await
        .unwrap();
    let store = Arc::new(Local::open(out.join("objects")).await.unwrap());
    let id = common::ids::new_id();
    let key = Key::new(format!("uploads/{id}")).unwrap();
    // the upload is already in the store when the clock starts (upload complete)
    store
        .put_file(&key, &source, &PutOptions::default())
        .await
        .unwrap();
    moment::create(&db, &id, "bench", State::Queued, Some(key.as_str()))
        .await
        .unwrap();
    let queue = Queue::new(
        db.clone(),
        common::queue::Config {
            poll_ms: 20,
            ..Default::default()
        },
    );

    let started = Instant::now();
    queue
        .enqueue(&moment::transcode_job(&id, Default::default()))
        .await
        .unwrap();
    let handler = transcode::job::Transcoder::new(
        queue.clone(),
        db.clone(),
        store.clone(),
        Arc::new(common::store::NoneGrowing),
        config,
        packager::Config::default(),
        None,
    );
    let shutdown = CancellationToken::new();
    let workers = tokio::spawn(common::queue::run_workers(
        queue,
        vec![transcode::job::handler(handler)],
        1,
        "bench",
        None,
        shutdown.clone(),
    ));
    let m = loop {
        let m = moment::get(&db, &id).await.unwrap().unwrap();
        if m.state.is_final() {
            break m;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let wall = started.elapsed().as_secs_f64();
    shutdown.cancel();
    let _ = workers.await;
    if m.state != State::Ready {
        eprintln!("failed: {:?}", m.error);
        std::process::exit(1);
    }
    let bytes: u64 = store
        .list(&format!("hls/{id}/"))
        .await
        .unwrap()
        .iter()
        .map(|o| o.size)
        .sum();
    println!("ready in {wall:.2} s, {} bytes published", bytes);
}
