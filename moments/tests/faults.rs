//! Faults injected into a running service, against the real servers it uses.
//!
//! PostgreSQL: the shared server may not be restarted by a test, so the service reaches it
//! through a TCP proxy the test controls. The proxy going down is PostgreSQL going away (every
//! connection cut, new ones refused); `pg_terminate_backend` kills the service's connections
//! on the server side. The service must say it is not ready while the database is gone,
//! answer requests with a JSON 503 rather than hang or crash, and carry on by itself once it
//! is back: an upload made after the outage is transcoded to `ready`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use tokio::io::copy_bidirectional;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;

/// A TCP proxy to PostgreSQL that can be taken down (cutting every connection) and back up.
struct Proxy {
    port: u16,
    up: Arc<AtomicBool>,
    cut: Arc<Notify>,
}

impl Proxy {
    async fn start(upstream: String) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let up = Arc::new(AtomicBool::new(true));
        let cut = Arc::new(Notify::new());
        let (up2, cut2) = (up.clone(), cut.clone());
        tokio::spawn(async move {
            loop {
                let Ok((mut client, _)) = listener.accept().await else {
                    return;
                };
                if !up2.load(Ordering::SeqCst) {
                    drop(client); // refused: the server is gone
                    continue;
                }
                let upstream = upstream.clone();
                let cut = cut2.clone();
                tokio::spawn(async move {
                    let Ok(mut server) = TcpStream::connect(&upstream).await else {
                        return;
                    };
                    tokio::select! {
                        _ = copy_bidirectional(&mut client, &mut server) => {}
                        _ = cut.notified() => {}
                    }
                });
            }
        });
        Proxy { port, up, cut }
    }

    fn down(&self) {
        self.up.store(false, Ordering::SeqCst);
        self.cut.notify_waiters();
    }

    fn up(&self) {
        self.up.store(true, Ordering::SeqCst);
    }
}

async fn readyz(base: &str) -> (u16, serde_json::Value) {
    let r = reqwest::Client::new()
        .get(format!("{base}/readyz"))
        .timeout(Duration::from_secs(10))
        .send()
        .await
        .expect("/readyz answers, database or not");
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or_default())
}

/// Polls `/readyz` until it answers `want` (up to `within`); the last body.
async fn readyz_becomes(base: &str, want: u16, within: Duration) -> serde_json::Value {
    let deadline = Instant::now() + within;
    loop {
        let (status, body) = readyz(base).await;
        if status == want {
            return body;
        }
        assert!(
            Instant::now() < deadline,
            "/readyz still {status} after {within:?}: {body}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Kills every connection to `database` but our own, on the server side.
async fn terminate_backends(admin_url: &str, database: &str) -> i64 {
    let pool = sqlx::PgPool::connect(admin_url).await.unwrap();
    let killed: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM (SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
         WHERE datname = $1 AND pid <> pg_backend_pid()) t",
    )
    .bind(database)
    .fetch_one(&pool)
    .await
    .unwrap();
    pool.close().await;
    killed
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_going_away_is_reported_by_readyz_and_the_service_carries_on() {
    // None only with the explicit opt-out MOMENTS_TEST_SKIP_PG=1 (it says so)
    let Some(pg) = common::testing::fresh_pg().await else {
        return;
    };
    let (authority, database) = {
        let rest = pg.url.split_once("://").unwrap().1;
        let (auth, db) = rest.split_once('/').unwrap();
        (
            auth.rsplit_once('@').map_or(auth, |(_, h)| h).to_string(),
            db.to_string(),
        )
    };
    let proxy = Proxy::start(authority.clone()).await;
    let via_proxy = pg
        .url
        .replacen(&authority, &format!("127.0.0.1:{}", proxy.port), 1);

    let dir = tempfile::tempdir().unwrap();
    let stack = support::start(dir.path(), |c| {
        c.database.url = Some(via_proxy.clone());
    })
    .await;
    let clip = support::faststart_clip(dir.path(), "a.mp4", 320, 240, 2, 400);
    let data = std::fs::read(&clip).unwrap();
    let before = stack.whole(&data).await;
    assert_eq!(
        stack.settle(&before, Duration::from_secs(90)).await["state"],
        "ready"
    );
    assert_eq!(readyz(&stack.base).await.0, 200);

    // the server kills the service's connections: it reconnects by itself
    let killed = terminate_backends(&common::testing::pg_admin_url(), &database).await;
    assert!(killed >= 1, "the service held no connection to kill");
    readyz_becomes(&stack.base, 200, Duration::from_secs(10)).await;
    assert_eq!(stack.moment(&before).await["state"], "ready");

    // PostgreSQL goes away: not ready, and requests get a JSON error instead of hanging
    proxy.down();
    let t0 = Instant::now();
    let body = readyz_becomes(&stack.base, 503, Duration::from_secs(15)).await;
    assert_ne!(body["database"], "ok", "{body}");
    assert_eq!(body["status"], "not ready");
    let r = stack
        .http
        .get(format!("{}/v1/moments/{before}", stack.base))
        .bearer_auth(&stack.token)
        .timeout(Duration::from_secs(30))
        .send()
        .await
        .expect("an answer while the database is down");
    let status = r.status().as_u16();
    let err: serde_json::Value = r.json().await.unwrap_or_default();
    assert!((500..600).contains(&status), "{status} {err}");
    assert!(
        err["error"].is_string() && err["code"].is_string(),
        "{status} {err}"
    );
    eprintln!(
        "database down: /readyz 503 after {:?}; GET moment {status} {err}",
        t0.elapsed()
    );
    tokio::time::sleep(Duration::from_secs(3)).await;

    // back: ready again, and new work goes through
    proxy.up();
    let t1 = Instant::now();
    readyz_becomes(&stack.base, 200, Duration::from_secs(30)).await;
    eprintln!("database back: /readyz 200 after {:?}", t1.elapsed());
    let after = stack.whole(&data).await;
    assert_eq!(
        stack.settle(&after, Duration::from_secs(90)).await["state"],
        "ready"
    );
    assert_eq!(stack.moment(&before).await["state"], "ready");
    stack.stop().await;
}

/// A number from the environment, or `default` (the suite's short version).
fn knob(var: &str, default: usize) -> usize {
    std::env::var(var)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// A TCP proxy in front of the HTTP listener that cuts some connections part-way: half of
/// them lose the link after a random number of bytes sent towards the server (mid-PATCH when
/// a body is on its way, between requests otherwise).
/// Returns its port and how many connections it cut.
async fn cutting_proxy(upstream: String, seed: u64) -> (u16, Arc<std::sync::atomic::AtomicUsize>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let cuts = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counted = cuts.clone();
    tokio::spawn(async move {
        let mut x = seed | 1;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        loop {
            let Ok((client, _)) = listener.accept().await else {
                return;
            };
            let cut_after = (next() % 2 == 0).then(|| 1 + next() % (400 * 1024));
            let (upstream, cuts) = (upstream.clone(), counted.clone());
            tokio::spawn(async move {
                let Ok(server) = TcpStream::connect(&upstream).await else {
                    return;
                };
                let (mut cr, mut cw) = client.into_split();
                let (mut sr, mut sw) = server.into_split();
                let up = async {
                    let mut sent = 0u64;
                    let mut buf = vec![0u8; 16 * 1024];
                    loop {
                        let n = match cr.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => n,
                        };
                        let n = match cut_after {
                            Some(limit) if sent + n as u64 >= limit => {
                                let keep = (limit - sent) as usize;
                                let _ = sw.write_all(&buf[..keep]).await;
                                cuts.fetch_add(1, Ordering::SeqCst);
                                return; // the link is gone: both halves drop
                            }
                            _ => n,
                        };
                        if sw.write_all(&buf[..n]).await.is_err() {
                            return;
                        }
                        sent += n as u64;
                    }
                };
                let down = tokio::io::copy(&mut sr, &mut cw);
                tokio::select! {
                    _ = up => {}
                    _ = down => {}
                }
            });
        }
    });
    (port, cuts)
}

/// A `moments serve --roles api,ingest` process on fixed ports, killed with SIGKILL and started
/// again on the same ports and data.
struct Server {
    dir: std::path::PathBuf,
    http: String,
    quic: String,
    child: Option<std::process::Child>,
}

impl Server {
    async fn start(dir: &std::path::Path) -> Server {
        // one user makes every upload: past the per-user creation limit (30 at once) in the
        // long run, which is not what this measures
        std::fs::write(
            dir.join("moments.toml"),
            "[limits]\nuploads = { rate = \"off\" }\n",
        )
        .unwrap();
        let mut s = Server {
            dir: dir.to_path_buf(),
            http: format!("127.0.0.1:{}", common::testing::free_port()),
            quic: std::net::UdpSocket::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
                .to_string(),
            child: None,
        };
        s.spawn().await;
        s
    }

    async fn spawn(&mut self) {
        let child = support::moments_command(&self.dir)
            .env("MOMENTS_HTTP_ADDR", &self.http)
            .env("MOMENTS_QUIC_ADDR", &self.quic)
            .args(["serve", "--roles", "api,ingest"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        self.child = Some(child);
        support::wait_ready(&format!("http://{}", self.http)).await;
    }

    /// SIGKILL, then the same ports and data again.
    async fn kill_and_restart(&mut self) {
        if let Some(mut c) = self.child.take() {
            c.kill().unwrap();
            c.wait().unwrap();
        }
        self.spawn().await;
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(c) = &mut self.child {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Uploads over HTTP/1.1 (through a proxy that cuts connections mid-PATCH and between chunks)
/// and over HTTP/3 while the server is killed with SIGKILL and restarted, with the real
/// `moments upload` client resuming each from the offset the server reports: every stored
/// source's SHA-256 equals its file's. The suite runs 16 uploads and 2 kills;
/// `MOMENTS_TEST_FAULT_UPLOADS=100 MOMENTS_TEST_FAULT_KILLS=5` is the full version.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uploads_cut_mid_patch_and_across_server_kills_store_every_byte_as_sent() {
    use sha2::{Digest, Sha256};
    let uploads = knob("MOMENTS_TEST_FAULT_UPLOADS", 16);
    let kills = knob("MOMENTS_TEST_FAULT_KILLS", 2);
    let dir = tempfile::tempdir().unwrap();
    let mut server = Server::start(dir.path()).await;
    let data = dir.path().join("data");
    let (private, _) = common::auth::ensure_dev_key(&data).unwrap();
    let token = common::auth::mint(&private, "alice", Duration::from_secs(3600)).unwrap();
    let (cert, key) = common::server::tls::dev_paths(&data);
    let fingerprint = common::server::tls::load(&cert, &key)
        .unwrap()
        .fingerprint();
    let (proxy, cuts) = cutting_proxy(server.http.clone(), 0x5eed).await;

    // the files: 0.3 to 2.3 MB of pseudo-random bytes each
    let files: Vec<(std::path::PathBuf, String)> = (0..uploads)
        .map(|i| {
            let mut x = 0x9e37_79b9_7f4a_7c15u64 ^ (i as u64 + 1);
            let len = 300_000 + (i * 131_071) % 2_000_000;
            let bytes: Vec<u8> = (0..len)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    x as u8
                })
                .collect();
            let path = dir.path().join(format!("f{i}.bin"));
            std::fs::write(&path, &bytes).unwrap();
            (path, hex::encode(Sha256::digest(&bytes)))
        })
        .collect();

    let started = Instant::now();
    let uploading = {
        let files = files.clone();
        let (quic, token, dir) = (server.quic.clone(), token.clone(), dir.path().to_path_buf());
        tokio::spawn(async move {
            let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
            let mut lanes = Vec::new();
            for _ in 0..4 {
                let (files, next, quic, token, dir, fingerprint) = (
                    files.clone(),
                    next.clone(),
                    quic.clone(),
                    token.clone(),
                    dir.clone(),
                    fingerprint.clone(),
                );
                lanes.push(tokio::spawn(async move {
                    let mut done = Vec::new();
                    loop {
                        let i = next.fetch_add(1, Ordering::SeqCst);
                        let Some((path, _)) = files.get(i) else {
                            return done;
                        };
                        let h3 = i % 2 == 1;
                        let opts = ingest::client::Options {
                            server: if h3 {
                                format!("https://{quic}")
                            } else {
                                format!("http://127.0.0.1:{proxy}")
                            },
                            protocol: if h3 {
                                ingest::client::Protocol::Http3
                            } else {
                                ingest::client::Protocol::Http1
                            },
                            token: token.clone(),
                            trust: h3
                                .then(|| common::server::tls::Trust::Pinned(fingerprint.clone())),
                            chunking: ingest::client::Chunking::Fixed(96 * 1024),
                            rate: None,
                            state_file: dir.join(format!("state-{i}.json")),
                            max_retries: 40,
                            progress: false,
                            congestion: Default::default(),
                        };
                        let up = ingest::client::upload(path, &opts)
                            .await
                            .unwrap_or_else(|e| panic!("upload {i} (h3: {h3}): {e}"));
                        done.push((i, up));
                    }
                }));
            }
            let mut all = Vec::new();
            for lane in lanes {
                all.extend(lane.await.unwrap());
            }
            all
        })
    };
    // the kills, spread over the uploads
    for k in 0..kills {
        tokio::time::sleep(Duration::from_millis(700 + 300 * k as u64)).await;
        if uploading.is_finished() {
            panic!("the uploads finished before kill {k} of {kills}: make them longer");
        }
        server.kill_and_restart().await;
    }
    let done = uploading.await.unwrap();
    let took = started.elapsed();
    assert_eq!(done.len(), uploads);

    // every stored source equals its file, byte for byte
    let db = common::db::Db::connect(
        &format!("sqlite://{}", data.join("moments.db").display()),
        2,
    )
    .await
    .unwrap();
    let store = common::store::Local::open(data.join("objects"))
        .await
        .unwrap();
    for (i, up) in &done {
        let m = common::moment::get(&db, &up.moment).await.unwrap().unwrap();
        let source = m
            .source_key
            .clone()
            .expect("a complete upload has a source");
        let bytes = common::store::ObjectStore::get_bytes(
            &store,
            &common::store::Key::new(source).unwrap(),
            1 << 30,
        )
        .await
        .unwrap();
        assert_eq!(
            hex::encode(Sha256::digest(&bytes)),
            files[*i].1,
            "upload {i} ({} bytes stored)",
            bytes.len()
        );
    }
    let cuts = cuts.load(Ordering::SeqCst);
    assert!(cuts > 0, "the proxy cut no connection");
    eprintln!(
        "{uploads} uploads (half over HTTP/1.1 through a proxy that cut {cuts} connections, half \
         over HTTP/3), {kills} SIGKILLs of the server: every source intact, {took:?}"
    );
    db.close().await;
}
