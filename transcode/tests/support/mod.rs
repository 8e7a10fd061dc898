//! Shared test helpers: fixtures made with the ffmpeg CLI, ffprobe, and a real in-process
//! worker over SQLite + a local store.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::db::Db;
use common::moment::{self, Moment, State};
use common::queue::{Config as QueueConfig, Queue};
use common::store::{Key, Local, ObjectStore, PutOptions, Store};
use tokio_util::sync::CancellationToken;

#[allow(unused_imports)] // not every test binary uses each
pub use common::testing::{clip, ffmpeg, ffprobe};

pub struct Env {
    pub dir: tempfile::TempDir,
    pub db: Db,
    pub store: Store,
    pub queue: Queue,
    pub shutdown: CancellationToken,
    pub workers: tokio::task::JoinHandle<()>,
}

pub fn transcode_config() -> transcode::Config {
    transcode::Config {
        x264_preset: "ultrafast".into(),
        ..Default::default()
    }
}

pub async fn env_with(store: Option<Store>, config: transcode::Config) -> Env {
    let queue = QueueConfig {
        poll_ms: 50,
        backoff_base_ms: 100,
        ..Default::default()
    };
    env_with_queue(store, config, queue).await
}

/// [`env_with`] with the queue's own settings (retries, backoff) instead of the fast ones.
pub async fn env_with_queue(
    store: Option<Store>,
    config: transcode::Config,
    queue: QueueConfig,
) -> Env {
    let dir = tempfile::tempdir().unwrap();
    let db = Db::connect(
        &format!("sqlite://{}", dir.path().join("m.db").display()),
        4,
    )
    .await
    .unwrap();
    let store: Store = match store {
        Some(s) => s,
        None => Arc::new(Local::open(dir.path().join("objects")).await.unwrap()),
    };
    let queue = Queue::new(db.clone(), queue);
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
        queue.clone(),
        vec![transcode::job::handler(handler)],
        1,
        "test",
        None,
        shutdown.clone(),
    ));
    Env {
        dir,
        db,
        store,
        queue,
        shutdown,
        workers,
    }
}

pub async fn env() -> Env {
    env_with(None, transcode_config()).await
}

/// Stores `path` as an upload and enqueues its transcode, as ingest does.
pub async fn submit(env: &Env, user: &str, path: &Path) -> String {
    let id = common::ids::new_id();
    let key = Key::new(format!("uploads/{id}")).unwrap();
    env.store
        .put_file(&key, path, &PutOptions::default())
        .await
        .unwrap();
    moment::create(&env.db, &id, user, State::Queued, Some(key.as_str()))
        .await
        .unwrap();
    env.queue
        .enqueue(&moment::transcode_job(&id, Default::default()))
        .await
        .unwrap();
    id
}

pub async fn wait_final(env: &Env, id: &str, timeout: Duration) -> Moment {
    let deadline = Instant::now() + timeout;
    loop {
        let m = moment::get(&env.db, id).await.unwrap().unwrap();
        if m.state.is_final() {
            return m;
        }
        assert!(
            Instant::now() < deadline,
            "moment {id} still {:?} after {timeout:?}",
            m.state
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Copies a published rendition out of the store into `dir` so ffprobe can read it.
pub async fn fetch_object(store: &dyn ObjectStore, key: &str, dir: &Path) -> PathBuf {
    let path = dir.join(key.replace('/', "_"));
    store
        .download_to(&Key::new(key).unwrap(), &path)
        .await
        .unwrap();
    path
}
