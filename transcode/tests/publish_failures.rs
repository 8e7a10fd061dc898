//! Publishing under failure: a storage error mid-publish leaves no master visible and the job
//! retries to success; a rung whose encoder cannot run is recorded while the others publish.
//! Also the same ladder published to a real S3-compatible server.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use common::moment::State;
use common::store::{
    ByteRange, ByteStream, Error, Key, Local, Object, ObjectMeta, ObjectStore, PutOptions,
};

/// A real local store that refuses the N-th write under `hls/` once (a storage outage), and
/// remembers whether a master existed when it did.
#[derive(Debug)]
struct Outage {
    inner: Local,
    puts: AtomicUsize,
    fail_at: usize,
    master_seen_at_failure: std::sync::Mutex<Option<bool>>,
}

#[async_trait]
impl ObjectStore for Outage {
    async fn put(
        &self,
        key: &Key,
        body: ByteStream,
        opts: &PutOptions,
    ) -> Result<ObjectMeta, Error> {
        if key.as_str().starts_with("hls/") {
            let n = self.puts.fetch_add(1, Ordering::SeqCst) + 1;
            if n == self.fail_at {
                let id = key.as_str().split('/').nth(1).unwrap_or("");
                let master = Key::new(format!("hls/{id}/master.m3u8")).unwrap();
                let seen = self.inner.head(&master).await.is_ok();
                *self.master_seen_at_failure.lock().unwrap() = Some(seen);
                return Err(Error::Io(std::io::Error::other("simulated storage outage")));
            }
        }
        self.inner.put(key, body, opts).await
    }
    async fn get(&self, key: &Key, range: Option<ByteRange>) -> Result<Object, Error> {
        self.inner.get(key, range).await
    }
    async fn head(&self, key: &Key) -> Result<ObjectMeta, Error> {
        self.inner.head(key).await
    }
    async fn delete(&self, key: &Key) -> Result<(), Error> {
        self.inner.delete(key).await
    }
    async fn list(&self, prefix: &str) -> Result<Vec<ObjectMeta>, Error> {
        self.inner.list(prefix).await
    }
    async fn check(&self) -> Result<(), Error> {
        self.inner.check().await
    }
    fn describe(&self) -> String {
        "outage".into()
    }
    fn local_path(&self, key: &Key) -> Option<std::path::PathBuf> {
        self.inner.local_path(key)
    }
}

#[tokio::test]
async fn a_storage_error_mid_publish_shows_no_master_and_the_job_retries() {
    let tmp = tempfile::tempdir().unwrap();
    let store = Arc::new(Outage {
        inner: Local::open(tmp.path().join("objects")).await.unwrap(),
        puts: AtomicUsize::new(0),
        fail_at: 6,
        master_seen_at_failure: Default::default(),
    });
    let env = support::env_with(Some(store.clone()), support::transcode_config()).await;
    let src = support::clip(env.dir.path(), "in.mp4", 640, 360, 5.0, 30, true);
    let id = support::submit(&env, "alice", &src).await;
    let m = support::wait_final(&env, &id, Duration::from_secs(120)).await;
    assert_eq!(m.state, State::Ready, "{:?}", m.error);
    assert_eq!(
        *store.master_seen_at_failure.lock().unwrap(),
        Some(false),
        "no master before the failure"
    );
    let attempts: i64 = sqlx::query_scalar("SELECT attempts FROM jobs WHERE dedup_key = $1")
        .bind(format!("transcode:{id}"))
        .fetch_one(env.db.pool())
        .await
        .unwrap();
    assert_eq!(attempts, 2, "the failed attempt was retried");
    assert!(
        env.store
            .head(&Key::new(format!("hls/{id}/master.m3u8")).unwrap())
            .await
            .is_ok()
    );
}

#[tokio::test]
async fn a_lost_rung_is_recorded_and_the_others_publish() {
    let mut config = support::transcode_config();
    // 720p asks libx264 for a profile it does not have: that rung cannot be encoded
    config.rungs[1].profile = "no-such-profile".into();
    let env = support::env_with(None, config).await;
    let src = support::clip(env.dir.path(), "in.mp4", 1920, 1080, 3.0, 30, true);
    let id = support::submit(&env, "alice", &src).await;
    let m = support::wait_final(&env, &id, Duration::from_secs(120)).await;
    assert_eq!(m.state, State::Ready, "{:?}", m.error);
    let names: Vec<&str> = m.renditions["renditions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, vec!["480p", "1080p"]);
    let failed = m.renditions["failed"].as_array().unwrap();
    assert_eq!(failed.len(), 1);
    assert_eq!(failed[0]["name"], "720p");
    assert!(
        failed[0]["reason"].as_str().unwrap().contains("libx264"),
        "{failed:?}"
    );
    let master = String::from_utf8(
        env.store
            .get_bytes(&Key::new(format!("hls/{id}/master.m3u8")).unwrap(), 1 << 16)
            .await
            .unwrap()
            .to_vec(),
    )
    .unwrap();
    assert!(!master.contains("720p"), "{master}");
    // 480p is still scaled from the (unencodable) 720p picture in the cascade: it plays
    let probe = support::ffprobe(
        support::fetch_object(
            &*env.store,
            &format!("hls/{id}/480p/init.mp4"),
            env.dir.path(),
        )
        .await
        .to_str()
        .unwrap(),
        &["-show_streams"],
    );
    assert_eq!(probe["streams"][0]["width"], 854);
}

#[tokio::test]
async fn the_ladder_publishes_to_a_real_s3_server_with_headers() {
    let s3 = common::testing::S3Server::start();
    let store = Arc::new(s3.store("moments", "prod", 8 * 1024 * 1024).await);
    let env = support::env_with(Some(store.clone()), support::transcode_config()).await;
    let src = support::clip(env.dir.path(), "in.mp4", 1280, 720, 4.0, 30, true);
    let id = support::submit(&env, "alice", &src).await;
    let m = support::wait_final(&env, &id, Duration::from_secs(120)).await;
    assert_eq!(m.state, State::Ready, "{:?}", m.error);
    for (key, ct, immutable) in [
        (
            format!("hls/{id}/master.m3u8"),
            "application/vnd.apple.mpegurl",
            false,
        ),
        (
            format!("hls/{id}/720p/index.m3u8"),
            "application/vnd.apple.mpegurl",
            false,
        ),
        (format!("hls/{id}/720p/init.mp4"), "video/mp4", true),
        (
            format!("hls/{id}/720p/seg_00000.m4s"),
            "video/iso.segment",
            true,
        ),
        // the poster can change (the owner picks another frame): cacheable, not immutable
        (format!("hls/{id}/poster.jpg"), "image/jpeg", false),
    ] {
        let meta = store.head(&Key::new(key.clone()).unwrap()).await.unwrap();
        assert_eq!(meta.content_type.as_deref(), Some(ct), "{key}");
        let cc = meta.cache_control.unwrap_or_default();
        assert_eq!(cc.contains("immutable"), immutable, "{key}: {cc}");
    }
    // a readable rendition
    let init =
        support::fetch_object(&*store, &format!("hls/{id}/480p/init.mp4"), env.dir.path()).await;
    let probe = support::ffprobe(init.to_str().unwrap(), &["-show_streams"]);
    assert_eq!(probe["streams"][0]["height"], 480);
}

/// Every playlist a published master names, and every object those playlists name, exists
/// (what a player reading the master would need): the first key the store says is not there.
/// A read that fails otherwise (the server is down) proves nothing and ends the check.
async fn missing_under_master(store: &dyn ObjectStore, id: &str) -> Option<String> {
    let gone = |key: &str, r: Result<(), Error>| match r {
        Err(Error::NotFound(_)) => Some(Some(key.to_string())),
        Err(_) => Some(None),
        Ok(()) => None,
    };
    let master_key = Key::new(format!("hls/{id}/master.m3u8")).unwrap();
    let master = store.get_bytes(&master_key, 1 << 20).await.ok()?;
    let master = String::from_utf8_lossy(&master).to_string();
    for uri in master
        .lines()
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
    {
        let playlist_key = format!("hls/{id}/{uri}");
        let text = match store
            .get_bytes(&Key::new(playlist_key.clone()).unwrap(), 1 << 20)
            .await
        {
            Ok(t) => String::from_utf8_lossy(&t).to_string(),
            Err(e) => return gone(&playlist_key, Err(e)).flatten(),
        };
        let dir = uri.rsplit_once('/').map_or("", |(d, _)| d);
        let map = text
            .lines()
            .filter_map(|l| l.strip_prefix("#EXT-X-MAP:URI=\""))
            .map(|r| r.trim_end_matches('"'));
        let segments = text
            .lines()
            .filter(|l| !l.is_empty() && !l.starts_with('#'));
        for name in map.chain(segments) {
            let key = format!("hls/{id}/{dir}/{name}");
            let r = store
                .head(&Key::new(key.clone()).unwrap())
                .await
                .map(|_| ());
            if let Some(missing) = gone(&key, r) {
                return missing;
            }
        }
    }
    None
}

/// The S3 server stops for 10 s while a ladder is being published, with the queue's own
/// retry settings (3 attempts, 2 s backoff): the job retries and finishes, and a reader polling
/// the master throughout never sees one that names a missing object.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_s3_server_stopped_for_10_s_mid_publish_delays_the_ladder_but_never_breaks_it() {
    let s3 = Arc::new(common::testing::S3Server::start());
    let store = Arc::new(s3.store("moments", "outage", 8 * 1024 * 1024).await);
    let env = support::env_with_queue(
        Some(store.clone()),
        support::transcode_config(),
        common::queue::Config::default(),
    )
    .await;
    let src = support::clip(env.dir.path(), "in.mp4", 1280, 720, 8.0, 30, true);
    let id = support::submit(&env, "alice", &src).await;

    // the outage starts once the first object of the ladder is in
    let outage = {
        let (s3, store, id) = (s3.clone(), store.clone(), id.clone());
        tokio::spawn(async move {
            let deadline = std::time::Instant::now() + Duration::from_secs(120);
            loop {
                if let Ok(objects) = store.list(&format!("hls/{id}/")).await
                    && !objects.is_empty()
                {
                    break;
                }
                assert!(
                    std::time::Instant::now() < deadline,
                    "nothing was ever published"
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            let published_before = store
                .list(&format!("hls/{id}/"))
                .await
                .map_or(0, |o| o.len());
            tokio::task::spawn_blocking(move || {
                s3.kill();
                std::thread::sleep(Duration::from_secs(10));
                s3.restart();
            })
            .await
            .unwrap();
            published_before
        })
    };
    // a reader polling the master all along
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let reader = {
        let (store, id, done) = (store.clone(), id.clone(), done.clone());
        tokio::spawn(async move {
            let mut checks = 0;
            while !done.load(Ordering::SeqCst) {
                if let Some(missing) = missing_under_master(&*store, &id).await {
                    return Err(missing);
                }
                checks += 1;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Ok(checks)
        })
    };

    let m = support::wait_final(&env, &id, Duration::from_secs(240)).await;
    done.store(true, Ordering::SeqCst);
    let published_before = outage.await.unwrap();
    let checks = reader
        .await
        .unwrap()
        .unwrap_or_else(|k| panic!("the master named {k}, which was missing"));
    assert_eq!(m.state, State::Ready, "{:?}", m.error);
    assert!(missing_under_master(&*store, &id).await.is_none());
    let attempts = sqlx::query_scalar::<_, i64>("SELECT attempts FROM jobs WHERE dedup_key = $1")
        .bind(format!("transcode:{id}"))
        .fetch_one(env.db.pool())
        .await
        .unwrap();
    eprintln!(
        "S3 down 10 s after {published_before} objects were in: ready after {attempts} attempt(s); \
         the master was polled {checks} times"
    );
}
