//! Test helpers (feature `testing`): fresh PostgreSQL databases and a real S3-compatible server
//! (`s3s-fs`) on loopback. Nothing here is a mock: tests talk to the real services.
//!
//! PostgreSQL: `MOMENTS_TEST_PG_URL` (default `postgres://postgres@127.0.0.1:5432/test`) names a
//! server where we may create databases. When none is reachable a test that uses it fails —
//! unless `MOMENTS_TEST_SKIP_PG=1` says to skip its PostgreSQL half (with a printed notice).
//! CI never sets an opt-out, so it can never pass without really running every half.
//!
//! S3: `s3s-fs` from `PATH` or `~/.cargo/bin` (installed by `deploy/install-test-tools.sh`).
//!
//! Redis: `MOMENTS_TEST_REDIS_URL` (default `redis://127.0.0.1:6379`); tests of the shared rate
//! limits fail when it is not reachable, unless `MOMENTS_TEST_SKIP_REDIS=1` (skip with a notice).
//!
//! Neural voice models: `MOMENTS_TEST_MODELS_DIR` (default `~/.cache/moments/models`, where
//! `deploy/test.sh` installs them with `deploy/install-models.sh`). Tests of the neural engines
//! fail when they are not there, unless `MOMENTS_TEST_SKIP_MODELS=1` (skip with a notice).
//!
//! Fuzz targets: [`fuzz::replay`] runs a cargo-fuzz target's check in the ordinary test suite.

#![allow(clippy::expect_used)] // test support: failing loudly is the point

pub mod fuzz;

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use sqlx::Connection;

use crate::db::Db;
use crate::store::s3::{Options, S3};

/// The PostgreSQL server tests use.
pub fn pg_admin_url() -> String {
    std::env::var("MOMENTS_TEST_PG_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_string())
}

/// A database created for one test and dropped afterwards.
pub struct PgTestDb {
    /// URL of the fresh database.
    pub url: String,
    name: String,
    admin: String,
}

impl Drop for PgTestDb {
    fn drop(&mut self) {
        let (admin, name) = (self.admin.clone(), self.name.clone());
        // Drop runs outside any runtime guarantee; use a private one on a helper thread.
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build();
            if let Ok(rt) = rt {
                rt.block_on(async {
                    if let Ok(mut c) = sqlx::PgConnection::connect(&admin).await {
                        let _ = sqlx::query(sqlx::AssertSqlSafe(format!(
                            "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
                        )))
                        .execute(&mut c)
                        .await;
                    }
                });
            }
        })
        .join();
    }
}

/// Whether the explicit opt-out variable `var` is set to `1`.
fn opted_out(var: &str) -> bool {
    std::env::var(var).is_ok_and(|v| v == "1")
}

/// A reachable Redis for tests (with a key prefix of its own, so runs never share buckets).
/// When none answers this panics, or returns `None` (after printing why) when
/// `MOMENTS_TEST_SKIP_REDIS=1`.
pub fn redis() -> Option<(String, String)> {
    let url = std::env::var("MOMENTS_TEST_REDIS_URL")
        .unwrap_or_else(|_| "redis://127.0.0.1:6379".to_string());
    let addr = url
        .trim_start_matches("redis://")
        .split('/')
        .next()
        .unwrap_or("127.0.0.1:6379")
        .to_string();
    let answered = std::net::TcpStream::connect_timeout(
        &std::net::ToSocketAddrs::to_socket_addrs(&addr)
            .ok()
            .and_then(|mut a| a.next())
            .unwrap_or_else(|| panic!("MOMENTS_TEST_REDIS_URL {url}: cannot resolve {addr}")),
        Duration::from_secs(2),
    )
    .and_then(|mut s| {
        use std::io::{Read, Write};
        s.set_read_timeout(Some(Duration::from_secs(2)))?;
        s.write_all(b"PING\r\n")?;
        let mut buf = [0u8; 7];
        s.read_exact(&mut buf)?;
        Ok(buf == *b"+PONG\r\n")
    });
    match answered {
        Ok(true) => Some((url, format!("moments-test:{}:", crate::ids::new_id()))),
        other => {
            let why = format!("Redis at {url} does not answer PING: {other:?}");
            if opted_out("MOMENTS_TEST_SKIP_REDIS") {
                eprintln!("NOTICE: skipping a Redis test: {why}");
                None
            } else {
                panic!(
                    "{why} (start it, point MOMENTS_TEST_REDIS_URL at one, or set MOMENTS_TEST_SKIP_REDIS=1 to skip)"
                );
            }
        }
    }
}

/// Creates a fresh PostgreSQL database. When no server is reachable this panics, or returns
/// `None` (after printing why) when `MOMENTS_TEST_SKIP_PG=1`.
pub async fn fresh_pg() -> Option<PgTestDb> {
    let admin = pg_admin_url();
    let required = !opted_out("MOMENTS_TEST_SKIP_PG");
    let mut conn = match sqlx::PgConnection::connect(&admin).await {
        Ok(c) => c,
        Err(e) => {
            if required {
                panic!(
                    "PostgreSQL at {admin} is not reachable: {e} (start it, point MOMENTS_TEST_PG_URL at one, or set MOMENTS_TEST_SKIP_PG=1 to skip PostgreSQL halves)"
                );
            }
            eprintln!(
                "NOTICE: skipping the PostgreSQL half of this test: {admin} not reachable ({e})"
            );
            return None;
        }
    };
    let name = format!("moments_t_{}", crate::ids::new_id());
    if let Err(e) = sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
        .execute(&mut conn)
        .await
    {
        panic!("cannot create test database on {admin}: {e}");
    }
    let base = match admin.rfind('/') {
        Some(i) if i > "postgres://".len() => &admin[..i],
        _ => admin.as_str(),
    };
    Some(PgTestDb {
        url: format!("{base}/{name}"),
        name,
        admin,
    })
}

/// A fresh SQLite database in a temporary directory.
pub async fn fresh_sqlite() -> (tempfile::TempDir, Db) {
    let dir = tempfile::tempdir().expect("tempdir");
    let url = format!("sqlite://{}", dir.path().join("test.db").display());
    let db = Db::connect(&url, 4).await.expect("open sqlite");
    (dir, db)
}

/// Runs `f` against a fresh SQLite database and, when reachable, a fresh PostgreSQL one.
pub async fn on_both<F, Fut>(f: F)
where
    F: Fn(Db) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let (_dir, db) = fresh_sqlite().await;
    f(db.clone()).await;
    db.close().await;
    if let Some(pg) = fresh_pg().await {
        let db = Db::connect(&pg.url, 8).await.expect("open postgres");
        f(db.clone()).await;
        db.close().await;
    }
}

/// The neural voice models directory (see the module docs). Panics when they are not
/// installed, or returns `None` with a printed notice when `MOMENTS_TEST_SKIP_MODELS=1`.
pub fn voice_models() -> Option<PathBuf> {
    let dir = std::env::var_os("MOMENTS_TEST_MODELS_DIR")
        .map(PathBuf::from)
        .or_else(|| {
            std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/moments/models"))
        })?;
    if dir.join(".installed-v1").is_file() {
        return Some(dir);
    }
    let required = !opted_out("MOMENTS_TEST_SKIP_MODELS");
    assert!(
        !required,
        "neural voice models are not installed in {}: run deploy/install-models.sh {} (or set MOMENTS_TEST_SKIP_MODELS=1 to skip their tests)",
        dir.display(),
        dir.display()
    );
    eprintln!(
        "NOTICE: neural voice models not installed in {} — skipping (deploy/install-models.sh installs them)",
        dir.display()
    );
    None
}

/// Runs the ffmpeg CLI (`-hide_banner -v error -y` first); panics with its stderr on failure.
pub fn ffmpeg(args: &[&str]) {
    let out = Command::new("ffmpeg")
        .args(["-hide_banner", "-v", "error", "-y"])
        .args(args)
        .output()
        .expect("ffmpeg CLI");
    assert!(
        out.status.success(),
        "ffmpeg {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Runs ffprobe (`-v error -print_format json`, then `extra`) on `target`; its JSON.
pub fn ffprobe(target: &str, extra: &[&str]) -> serde_json::Value {
    let out = Command::new("ffprobe")
        .args(["-v", "error", "-print_format", "json"])
        .args(extra)
        .arg(target)
        .output()
        .expect("ffprobe");
    assert!(
        out.status.success(),
        "ffprobe {target}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("ffprobe JSON")
}

/// Decodes the video of `joined` (an init segment followed by media segments, which start at
/// the byte offsets `starts`) with ffprobe, asserts that the first frame of every segment is a
/// keyframe, and returns how many frames there are.
pub fn assert_segments_start_with_keyframes(joined: &Path, starts: &[usize], what: &str) -> usize {
    let frames = ffprobe(
        &joined.to_string_lossy(),
        &[
            "-select_streams",
            "v:0",
            "-show_entries",
            "frame=key_frame,pts_time,pkt_pos",
            "-show_frames",
        ],
    );
    let frames = frames["frames"].as_array().cloned().unwrap_or_default();
    for (i, &start) in starts.iter().enumerate() {
        let first = frames
            .iter()
            .filter_map(|f| Some((f["pkt_pos"].as_str()?.parse::<usize>().ok()?, f)))
            .filter(|(pos, _)| *pos >= start && starts.get(i + 1).is_none_or(|n| pos < n))
            .min_by_key(|(pos, _)| *pos)
            .map(|(_, f)| f)
            .unwrap_or_else(|| panic!("{what} segment {i} has no frames"));
        assert_eq!(
            first["key_frame"], 1,
            "{what} segment {i} does not start with a keyframe"
        );
    }
    frames.len()
}

/// A test clip: testsrc2 video (and a sine tone) of `secs` seconds.
pub fn clip(dir: &Path, name: &str, w: u32, h: u32, secs: f64, fps: u32, audio: bool) -> PathBuf {
    let path = dir.join(name);
    let size = format!("testsrc2=size={w}x{h}:rate={fps}:duration={secs}");
    let mut args: Vec<String> = vec!["-f".into(), "lavfi".into(), "-i".into(), size];
    if audio {
        args.extend(
            [
                "-f",
                "lavfi",
                "-i",
                &format!("sine=frequency=440:sample_rate=44100:duration={secs}"),
            ]
            .map(String::from),
        );
    }
    args.extend(
        [
            "-c:v",
            "libx264",
            "-preset",
            "ultrafast",
            "-pix_fmt",
            "yuv420p",
        ]
        .map(String::from),
    );
    if audio {
        args.extend(["-c:a", "aac", "-b:a", "96k"].map(String::from));
    }
    args.push(path.to_string_lossy().into_owned());
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    ffmpeg(&refs);
    path
}

/// A free TCP port on loopback (bound and released; good enough for tests).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

/// Where `s3s-fs` is, if installed.
pub fn s3s_fs_binary() -> Option<PathBuf> {
    let mut candidates: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|p| {
            std::env::split_paths(&p)
                .map(|d| d.join("s3s-fs"))
                .collect()
        })
        .unwrap_or_default();
    if let Some(home) = std::env::var_os("HOME") {
        candidates.push(PathBuf::from(home).join(".cargo/bin/s3s-fs"));
    }
    candidates.into_iter().find(|p| p.is_file())
}

/// Starts `s3s-fs` on `port` and waits until it accepts connections (None: it exited, e.g.
/// the port was taken).
fn spawn_s3s(bin: &Path, port: u16, access: &str, secret: &str, dir: &Path) -> Option<Child> {
    let mut child = Command::new(bin)
        .args(["--host", "127.0.0.1", "--port", &port.to_string()])
        .args(["--access-key", access, "--secret-key", secret])
        .arg(dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn s3s-fs");
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return None;
        }
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return Some(child);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
    None
}

/// A real S3-compatible server (`s3s-fs`) on a free loopback port, serving a temporary
/// directory; killed when dropped.
pub struct S3Server {
    /// `http://127.0.0.1:PORT`.
    pub endpoint: String,
    /// Access key.
    pub access_key: String,
    /// Secret key.
    pub secret_key: String,
    port: u16,
    child: std::sync::Mutex<Option<Child>>,
    dir: tempfile::TempDir,
}

impl Drop for S3Server {
    fn drop(&mut self) {
        self.kill();
    }
}

impl S3Server {
    /// Starts the server and waits until it accepts connections.
    pub fn start() -> S3Server {
        let bin = s3s_fs_binary().unwrap_or_else(|| {
            panic!("s3s-fs is not installed: run deploy/install-test-tools.sh (cargo install s3s-fs@0.14.1 --features binary --locked)")
        });
        let dir = tempfile::tempdir().expect("tempdir");
        let (access_key, secret_key) = (
            "moments-test".to_string(),
            "moments-test-secret".to_string(),
        );
        for _attempt in 0..5 {
            let port = free_port();
            if let Some(child) = spawn_s3s(&bin, port, &access_key, &secret_key, dir.path()) {
                return S3Server {
                    endpoint: format!("http://127.0.0.1:{port}"),
                    access_key,
                    secret_key,
                    port,
                    child: std::sync::Mutex::new(Some(child)),
                    dir,
                };
            }
        }
        panic!("s3s-fs did not start");
    }

    /// Kills the server abruptly (SIGKILL); its data directory stays.
    pub fn kill(&self) {
        let mut child = self.child.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(mut c) = child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts the server again on the same port and data after [`S3Server::kill`].
    pub fn restart(&self) {
        self.kill();
        let bin = s3s_fs_binary().expect("s3s-fs is installed");
        for _attempt in 0..50 {
            if let Some(c) = spawn_s3s(
                &bin,
                self.port,
                &self.access_key,
                &self.secret_key,
                self.dir.path(),
            ) {
                *self.child.lock().unwrap_or_else(|e| e.into_inner()) = Some(c);
                return;
            }
            std::thread::sleep(Duration::from_millis(100)); // the port may linger
        }
        panic!("s3s-fs did not restart on port {}", self.port);
    }

    /// A store on a new bucket of this server (created here).
    pub async fn store(&self, bucket: &str, prefix: &str, part_size: u64) -> S3 {
        let s3 = S3::connect(Options {
            bucket: bucket.to_string(),
            prefix: prefix.to_string(),
            endpoint: Some(self.endpoint.clone()),
            region: "us-east-1".to_string(),
            path_style: true,
            part_size,
            credentials: Some((self.access_key.clone(), self.secret_key.clone())),
        })
        .await
        .expect("S3 client");
        s3.client()
            .create_bucket()
            .bucket(bucket)
            .send()
            .await
            .expect("create bucket");
        s3
    }
}
