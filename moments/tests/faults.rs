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
