//! The running stack for streaming tests: start `moments` in-process on free ports, upload
//! over tus as a slow phone would (paced, in irregular pieces) or all at once, follow the
//! moment, and summarise a published ladder with tools that are not ours (ffprobe, m3u8-rs,
//! pymp4) so two ladders can be compared.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)] // test support: fail loudly

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::store::{Key, ObjectStore};
use serde_json::Value;

pub struct Stack {
    /// The in-process service, or…
    pub running: Option<moments::app::Running>,
    /// …a `moments serve` process.
    pub child: Option<std::process::Child>,
    pub client: Client,
    pub store: common::store::Store,
    pub db: common::db::Db,
}

impl Drop for Stack {
    fn drop(&mut self) {
        if let Some(c) = &mut self.child {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Talks to the stack over HTTP, as an app does (cheap to clone into a task).
#[derive(Clone)]
pub struct Client {
    pub base: String,
    pub token: String,
    pub http: reqwest::Client,
}

impl std::ops::Deref for Stack {
    type Target = Client;
    fn deref(&self) -> &Client {
        &self.client
    }
}

/// Starts every role with fast test settings, then lets `tweak` change the config.
pub async fn start(dir: &Path, tweak: impl FnOnce(&mut moments::Config)) -> Stack {
    let mut config = moments::Config {
        data_dir: dir.join("data"),
        ..Default::default()
    };
    config.http.addr = "127.0.0.1:0".parse().unwrap();
    config.quic.addr = "127.0.0.1:0".parse().unwrap();
    config.transcode.x264_preset = "ultrafast".into();
    config.queue.poll_ms = 100;
    config.queue.backoff_base_ms = 200;
    tweak(&mut config);
    let running = moments::app::start(config, moments::app::all_roles())
        .await
        .unwrap();
    let (private, _) = common::auth::ensure_dev_key(&dir.join("data")).unwrap();
    let token = common::auth::mint(&private, "alice", Duration::from_secs(3600)).unwrap();
    Stack {
        client: Client {
            base: format!("http://{}", running.http_addr),
            token,
            http: reqwest::Client::new(),
        },
        store: running.services.store.clone(),
        db: running.services.db.clone(),
        running: Some(running),
        child: None,
    }
}

/// Runs `moments serve` as its own process with `env` (what a deployment sets), inspecting
/// its `store` and `db` from outside.
pub async fn spawn(
    dir: &Path,
    toml: &str,
    env: &[(&str, String)],
    store: common::store::Store,
    db: common::db::Db,
) -> Stack {
    let http = format!("127.0.0.1:{}", common::testing::free_port());
    let quic = std::net::UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .to_string();
    std::fs::write(
        dir.join("moments.toml"),
        format!(
            "[transcode]\nx264_preset = \"ultrafast\"\n\n{}{toml}",
            // the caller's own [queue] section replaces the fast test defaults
            if toml.contains("[queue]") {
                ""
            } else {
                "[queue]\npoll_ms = 100\nbackoff_base_ms = 200\n\n"
            }
        ),
    )
    .unwrap();
    let child = moments_command(dir)
        .env("MOMENTS_HTTP_ADDR", &http)
        .env("MOMENTS_QUIC_ADDR", &quic)
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .arg("serve")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let (private, _) = common::auth::ensure_dev_key(&dir.join("data")).unwrap();
    let token = common::auth::mint(&private, "alice", Duration::from_secs(3600)).unwrap();
    let client = Client {
        base: format!("http://{http}"),
        token,
        http: reqwest::Client::new(),
    };
    let stack = Stack {
        running: None,
        child: Some(child),
        client,
        store,
        db,
    };
    wait_ready(&stack.base).await;
    stack
}

/// The `moments` binary to run in `dir`, without the `MOMENTS_*` settings of the environment
/// the tests run in (the `MOMENTS_TEST_*` knobs stay).
pub fn moments_command(dir: &Path) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_moments"));
    for (k, _) in std::env::vars() {
        if k.starts_with("MOMENTS_") && !k.starts_with("MOMENTS_TEST_") {
            cmd.env_remove(k);
        }
    }
    cmd.current_dir(dir);
    cmd
}

/// Waits (up to a minute) until `base/readyz` answers 200.
pub async fn wait_ready(base: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(r) = reqwest::get(format!("{base}/readyz")).await
            && r.status() == 200
        {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "moments serve never became ready"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A `moments serve --roles ROLES` process started by [`node`]; killed when dropped.
pub struct Node {
    child: std::process::Child,
    /// `http://127.0.0.1:PORT`.
    pub base: String,
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `moments serve --roles ROLES` in `dir` (its `moments.toml` and data directory) on
/// free HTTP and QUIC ports with `env` besides, and waits until it is ready. Several nodes on
/// one `dir` share its key and (with `MOMENTS_DATABASE_URL`) a database.
pub async fn node(dir: &Path, roles: &str, env: &[(&str, &str)]) -> Node {
    let http = format!("127.0.0.1:{}", common::testing::free_port());
    let quic = std::net::UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .to_string();
    let child = moments_command(dir)
        .env("MOMENTS_HTTP_ADDR", &http)
        .env("MOMENTS_QUIC_ADDR", &quic)
        .envs(env.iter().copied())
        .args(["serve", "--roles", roles])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let node = Node {
        child,
        base: format!("http://{http}"),
    };
    wait_ready(&node.base).await;
    node
}

/// Makes a clip with the ffmpeg CLI.
pub fn make(path: &Path, args: &[&str]) -> PathBuf {
    let out = Command::new("ffmpeg")
        .args(["-v", "error", "-y"])
        .args(args)
        .arg(path)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "ffmpeg {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    path.to_path_buf()
}

/// A fast-start MP4 with audio that every rung re-encodes (GOPs longer than a segment).
pub fn faststart_clip(dir: &Path, name: &str, w: u32, h: u32, secs: u32, kbps: u32) -> PathBuf {
    let size = format!("testsrc2=size={w}x{h}:rate=30:duration={secs}");
    let sine = format!("sine=frequency=440:duration={secs}");
    let rate = format!("{kbps}k");
    make(
        &dir.join(name),
        &[
            "-f",
            "lavfi",
            "-i",
            &size,
            "-f",
            "lavfi",
            "-i",
            &sine,
            "-c:v",
            "libx264",
            "-preset",
            "ultrafast",
            "-b:v",
            &rate,
            "-g",
            "150",
            "-pix_fmt",
            "yuv420p",
            "-c:a",
            "aac",
            "-movflags",
            "+faststart",
        ],
    )
}

/// What was seen of the moment while its bytes were still arriving.
#[derive(Debug, Default, Clone)]
pub struct Seen {
    /// `streaming` as last reported before the last byte.
    pub streaming: Option<bool>,
    /// `reason` as last reported before the last byte.
    pub reason: Option<String>,
    /// Largest `encoded_s` seen before the last byte.
    pub encoded_s: f64,
    /// Largest `received_s` seen before the last byte.
    pub received_s: f64,
    /// A `poster_url` was answered before the last byte.
    pub poster: bool,
}

impl Client {
    pub async fn moment(&self, id: &str) -> Value {
        let r = self
            .http
            .get(format!("{}/v1/moments/{id}", self.base))
            .bearer_auth(&self.token)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "GET moment {id}");
        r.json().await.unwrap()
    }

    /// The `/metrics` text.
    pub async fn metrics(&self) -> String {
        let r = self
            .http
            .get(format!("{}/metrics", self.base))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "GET /metrics");
        r.text().await.unwrap()
    }

    /// Creates a tus upload of `length` bytes; returns (upload URL, moment id).
    pub async fn create(&self, length: u64) -> (String, String) {
        let r = self
            .http
            .post(format!("{}/files", self.base))
            .bearer_auth(&self.token)
            .header("tus-resumable", "1.0.0")
            .header("upload-length", length.to_string())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 201, "{}", r.text().await.unwrap_or_default());
        let url = r.headers()["location"].to_str().unwrap().to_string();
        let moment = r.headers()["moment-id"].to_str().unwrap().to_string();
        (url, moment)
    }

    /// One tus PATCH of `bytes` at `offset`.
    pub async fn patch(&self, url: &str, offset: u64, bytes: Vec<u8>) {
        let r = self
            .http
            .patch(url)
            .bearer_auth(&self.token)
            .header("tus-resumable", "1.0.0")
            .header("upload-offset", offset.to_string())
            .header("content-type", "application/offset+octet-stream")
            .body(bytes)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 204, "{}", r.text().await.unwrap_or_default());
    }

    /// Uploads `data` as a slow phone would: irregular pieces (48–700 KiB, one PATCH each) at
    /// `bytes_per_s`, stopping before byte `stop_at` when given. Watches the moment between
    /// pieces. Returns the upload URL, the moment id and what was seen before the last byte.
    pub async fn paced(
        &self,
        data: &[u8],
        bytes_per_s: f64,
        stop_at: Option<u64>,
    ) -> (String, String, Seen) {
        let (url, moment) = self.create(data.len() as u64).await;
        let started = Instant::now();
        let mut seen = Seen::default();
        let mut offset = 0usize;
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15 ^ data.len() as u64;
        let end = stop_at.map_or(data.len(), |s| s as usize);
        while offset < end {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let piece = (48 * 1024 + (x % (652 * 1024)) as usize).min(end - offset);
            let due = Duration::from_secs_f64((offset + piece) as f64 / bytes_per_s);
            if let Some(wait) = due.checked_sub(started.elapsed()) {
                tokio::time::sleep(wait).await;
            }
            if offset + piece < data.len() {
                self.patch(&url, offset as u64, data[offset..offset + piece].to_vec())
                    .await;
                offset += piece;
                let m = self.moment(&moment).await;
                seen.streaming = m["streaming"].as_bool().or(seen.streaming);
                if let Some(r) = m["reason"].as_str() {
                    seen.reason = Some(r.to_string());
                }
                seen.encoded_s = seen.encoded_s.max(m["encoded_s"].as_f64().unwrap_or(0.0));
                seen.received_s = seen.received_s.max(m["received_s"].as_f64().unwrap_or(0.0));
                seen.poster |= m["poster_url"].is_string();
                assert_eq!(m["state"], "uploading", "{m}");
            } else {
                self.patch(&url, offset as u64, data[offset..].to_vec())
                    .await;
                offset = data.len();
            }
        }
        (url, moment, seen)
    }

    /// Uploads `data` in one request (the after-upload path: the job starts once it is all in).
    pub async fn whole(&self, data: &[u8]) -> String {
        let (url, moment) = self.create(data.len() as u64).await;
        self.patch(&url, 0, data.to_vec()).await;
        moment
    }

    /// Waits until the moment is ready or failed.
    pub async fn settle(&self, id: &str, within: Duration) -> Value {
        let deadline = Instant::now() + within;
        loop {
            let m = self.moment(id).await;
            if m["state"] == "ready" || m["state"] == "failed" {
                return m;
            }
            assert!(Instant::now() < deadline, "moment {id} never settled: {m}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Stack {
    pub fn store(&self) -> &dyn ObjectStore {
        &*self.store
    }

    /// Stops the in-process service (a process is killed when the stack is dropped).
    pub async fn stop(mut self) {
        if let Some(r) = self.running.take() {
            r.stop().await.unwrap();
        }
    }

    /// Every object key under `prefix`.
    pub async fn keys(&self, prefix: &str) -> Vec<String> {
        self.store()
            .list(prefix)
            .await
            .unwrap()
            .into_iter()
            .map(|o| o.key)
            .collect()
    }

    /// Jobs of the moment that are running.
    pub async fn running_jobs(&self, moment: &str) -> i64 {
        sqlx::query_scalar("SELECT COUNT(*) FROM jobs WHERE dedup_key = $1 AND state = 'running'")
            .bind(format!("transcode:{moment}"))
            .fetch_one(self.db.pool())
            .await
            .unwrap()
    }
}

#[allow(unused_imports)] // not every test binary uses it
pub use common::testing::ffprobe;

/// What the in-process stack's origin cache holds.
pub fn origin_cache(stack: &Stack) -> packager::origin::cache::Stats {
    stack
        .running
        .as_ref()
        .expect("an in-process stack")
        .services
        .origin
        .cache
        .stats()
}

/// pymp4's reading of an init segment and its media segments (see `tools/mp4_summary.py`).
pub fn pymp4(init: &Path, segments: &[PathBuf]) -> Value {
    let python =
        PathBuf::from(std::env::var("HOME").unwrap()).join(".cache/moments/venv/bin/python");
    assert!(
        python.exists(),
        "{} is missing: run deploy/install-test-tools.sh (it installs pymp4)",
        python.display()
    );
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/tools/mp4_summary.py");
    let out = Command::new(python)
        .arg(script)
        .arg(init)
        .args(segments)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "pymp4 refused the segments: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// One published rendition, as tools that are not ours read it.
#[derive(Debug, Clone)]
pub struct Rendition {
    pub name: String,
    pub resolution: (u64, u64),
    pub codecs: String,
    pub durations: Vec<f64>,
    pub frames: usize,
    /// pymp4: the init segment's tracks.
    pub tracks: Value,
    /// pymp4: per media segment, (video samples, video decode time) and audio samples.
    pub segments: Vec<(u64, u64, Option<u64>)>,
}

/// Reads every rendition of a ready moment from the store: the master and media playlists
/// (m3u8-rs), every init and media segment (pymp4), and the joined rendition (ffprobe: every
/// segment starts with a keyframe, every frame decodes). Panics on anything malformed.
pub async fn ladder(stack: &Stack, id: &str, scratch: &Path) -> Vec<Rendition> {
    let store = stack.store();
    let get = |key: String| async move {
        store
            .get_bytes(&Key::new(key).unwrap(), 64 << 20)
            .await
            .unwrap()
            .to_vec()
    };
    let master_text = get(format!("hls/{id}/master.m3u8")).await;
    let master = match m3u8_rs::parse_playlist_res(&master_text) {
        Ok(m3u8_rs::Playlist::MasterPlaylist(m)) => m,
        other => panic!("not a master playlist: {other:?}"),
    };
    let mut out = Vec::new();
    for v in master.variants.iter().filter(|v| !v.is_i_frame) {
        let name = v.uri.trim_end_matches("/index.m3u8").to_string();
        let media_text = get(format!("hls/{id}/{}", v.uri)).await;
        let media = match m3u8_rs::parse_playlist_res(&media_text) {
            Ok(m3u8_rs::Playlist::MediaPlaylist(m)) => m,
            other => panic!("not a media playlist: {other:?}"),
        };
        assert!(media.end_list);
        let dir = scratch.join(format!("{id}-{name}"));
        std::fs::create_dir_all(&dir).unwrap();
        let init = dir.join("init.mp4");
        let init_bytes = get(format!("hls/{id}/{name}/init.mp4")).await;
        std::fs::write(&init, &init_bytes).unwrap();
        let mut joined = init_bytes.clone();
        let mut files = Vec::new();
        let mut starts = Vec::new();
        for s in &media.segments {
            let bytes = get(format!("hls/{id}/{name}/{}", s.uri)).await;
            let f = dir.join(&s.uri);
            std::fs::write(&f, &bytes).unwrap();
            files.push(f);
            starts.push(joined.len());
            joined.extend_from_slice(&bytes);
        }
        let joined_path = dir.join("joined.mp4");
        std::fs::write(&joined_path, &joined).unwrap();
        let frames =
            common::testing::assert_segments_start_with_keyframes(&joined_path, &starts, &name);
        let mp4 = pymp4(&init, &files);
        let video_track = mp4["init"]["tracks"]
            .as_array()
            .unwrap()
            .iter()
            .find(|t| t["handler"] == "vide")
            .unwrap()["id"]
            .clone();
        let segments = mp4["segments"]
            .as_array()
            .unwrap()
            .iter()
            .enumerate()
            .map(|(i, s)| {
                let tracks = s["tracks"].as_array().unwrap();
                let v = tracks.iter().find(|t| t["id"] == video_track).unwrap();
                assert_eq!(
                    v["first_sync"], true,
                    "{name} segment {i}: pymp4 sees no sync sample first"
                );
                let a = tracks.iter().find(|t| t["id"] != video_track);
                (
                    v["samples"].as_u64().unwrap(),
                    v["decode_time"].as_u64().unwrap(),
                    a.map(|a| a["samples"].as_u64().unwrap()),
                )
            })
            .collect();
        let res = v.resolution.unwrap();
        out.push(Rendition {
            name,
            resolution: (res.width, res.height),
            codecs: v.codecs.clone().unwrap_or_default(),
            durations: media
                .segments
                .iter()
                .map(|s| f64::from(s.duration))
                .collect(),
            frames,
            tracks: mp4["init"]["tracks"].clone(),
            segments,
        });
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    out
}

/// Asserts two ladders are the same ladder: rungs, sizes, exact CODECS, segment count,
/// segment durations within one frame, decoded frames, and (pymp4) the same tracks and the
/// same samples in every segment.
pub fn assert_same_ladder(a: &[Rendition], b: &[Rendition], fps: f64) {
    assert_eq!(
        a.iter().map(|r| &r.name).collect::<Vec<_>>(),
        b.iter().map(|r| &r.name).collect::<Vec<_>>()
    );
    for (x, y) in a.iter().zip(b) {
        assert_eq!(x.resolution, y.resolution, "{}", x.name);
        assert_eq!(x.codecs, y.codecs, "{}: CODECS", x.name);
        assert_eq!(
            x.durations.len(),
            y.durations.len(),
            "{}: segment count",
            x.name
        );
        for (i, (p, q)) in x.durations.iter().zip(&y.durations).enumerate() {
            assert!(
                (p - q).abs() <= 1.0 / fps + 1e-6,
                "{} segment {i}: {p} vs {q}",
                x.name
            );
        }
        assert_eq!(x.frames, y.frames, "{}: frames", x.name);
        assert_eq!(x.tracks, y.tracks, "{}: tracks", x.name);
        assert_eq!(x.segments, y.segments, "{}: samples per segment", x.name);
    }
}
