//! An in-process ingest server on loopback (HTTP/1.1 + HTTP/2 and HTTP/3), over SQLite and a
//! local store or a real S3 server, restartable on the same ports and data.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use common::auth::Auth;
use common::db::Db;
use common::queue::Queue;
use common::store::{Local, Store};
use common::testing::S3Server;
use tokio_util::sync::CancellationToken;

pub enum Backend {
    Local,
    S3(Arc<S3Server>),
}

pub struct Server {
    pub http: SocketAddr,
    pub quic: SocketAddr,
    pub fingerprint: String,
    pub db: Db,
    pub store: Store,
    pub queue: Queue,
    pub private_key: String,
    pub dir: PathBuf,
    shutdown: CancellationToken,
    tasks: Vec<tokio::task::JoinHandle<std::io::Result<()>>>,
}

pub fn config() -> ingest::Config {
    ingest::Config {
        max_size: 64 * 1024 * 1024,
        commit_every_bytes: 256 * 1024,
        stale_lock_secs: 2,
        body_idle_secs: 5,
        ..Default::default()
    }
}

impl Server {
    pub async fn start(dir: &Path, backend: &Backend) -> Server {
        Self::start_at(
            dir,
            backend,
            "127.0.0.1:0".parse().unwrap(),
            "127.0.0.1:0".parse().unwrap(),
            config(),
        )
        .await
    }

    /// As [`Server::start`], on PostgreSQL when `pg` is given (else SQLite under `dir`).
    pub async fn start_with(
        dir: &Path,
        backend: &Backend,
        pg: Option<&common::testing::PgTestDb>,
    ) -> Server {
        Self::start_on(dir, backend, pg, true).await
    }

    /// As [`Server::start_with`], without the queue worker that assembles complete S3 uploads
    /// (they stay in their part and tail objects until a server with one runs).
    pub async fn start_unassembled(
        dir: &Path,
        backend: &Backend,
        pg: Option<&common::testing::PgTestDb>,
    ) -> Server {
        Self::start_on(dir, backend, pg, false).await
    }

    async fn start_on(
        dir: &Path,
        backend: &Backend,
        pg: Option<&common::testing::PgTestDb>,
        assembler: bool,
    ) -> Server {
        Self::start_full(
            dir,
            backend,
            "127.0.0.1:0".parse().unwrap(),
            "127.0.0.1:0".parse().unwrap(),
            config(),
            pg.map(|p| p.url.clone()),
            assembler,
        )
        .await
    }

    /// As [`Server::start_with`], with `cfg` for the ingest settings.
    pub async fn start_cfg(
        dir: &Path,
        backend: &Backend,
        pg: Option<&common::testing::PgTestDb>,
        cfg: ingest::Config,
    ) -> Server {
        Self::start_full(
            dir,
            backend,
            "127.0.0.1:0".parse().unwrap(),
            "127.0.0.1:0".parse().unwrap(),
            cfg,
            pg.map(|p| p.url.clone()),
            true,
        )
        .await
    }

    pub async fn start_at(
        dir: &Path,
        backend: &Backend,
        http: SocketAddr,
        quic: SocketAddr,
        cfg: ingest::Config,
    ) -> Server {
        Self::start_full(dir, backend, http, quic, cfg, None, true).await
    }

    async fn start_full(
        dir: &Path,
        backend: &Backend,
        http: SocketAddr,
        quic: SocketAddr,
        cfg: ingest::Config,
        db_url: Option<String>,
        assembler: bool,
    ) -> Server {
        let url = db_url.unwrap_or_else(|| format!("sqlite://{}", dir.join("m.db").display()));
        let db = Db::connect(&url, 4).await.unwrap();
        let store: Store = match backend {
            Backend::Local => Arc::new(Local::open(dir.join("objects")).await.unwrap()),
            Backend::S3(s3) => {
                let s = common::store::S3::connect(common::store::s3::Options {
                    bucket: "ingest".into(),
                    prefix: "t".into(),
                    endpoint: Some(s3.endpoint.clone()),
                    region: "us-east-1".into(),
                    path_style: true,
                    part_size: 5 * 1024 * 1024,
                    credentials: Some((s3.access_key.clone(), s3.secret_key.clone())),
                })
                .await
                .unwrap();
                let _ = s.client().create_bucket().bucket("ingest").send().await;
                Arc::new(s)
            }
        };
        let (private_key, _) = common::auth::ensure_dev_key(dir).unwrap();
        let auth = Arc::new(Auth::from_config(&Default::default(), dir).unwrap());
        let queue = Queue::new(db.clone(), Default::default());
        let metrics = common::metrics::Metrics::new("test");
        let state = ingest::handler::IngestState::new(
            common::service::Shared {
                db: db.clone(),
                store: store.clone(),
                queue: queue.clone(),
                auth,
                metrics: metrics.clone(),
                // the protocol, not the limits (tested in moments/tests/limits.rs)
                limiter: Arc::new(
                    common::limit::Limiter::new(&common::limit::Config::off(), &metrics).unwrap(),
                ),
            },
            cfg,
            5 * 1024 * 1024,
            ingest::handler::IngestMetrics::register(&metrics),
        );
        let router: Router =
            ingest::handler::router(state).layer(axum::middleware::from_fn(common::http::cors));
        let identity = common::server::tls::ensure_self_signed(dir).unwrap();
        // ports may still be held for a moment after a restart
        let mut tries = 0;
        let listener = loop {
            match common::server::bind_http(http).await {
                Ok(l) => break l,
                Err(e) if tries < 50 => {
                    tries += 1;
                    let _ = e;
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) => panic!("{e}"),
            }
        };
        let endpoint = common::server::h3::bind(quic, &identity, Default::default()).unwrap();
        let (http, quic) = (
            listener.local_addr().unwrap(),
            endpoint.local_addr().unwrap(),
        );
        let shutdown = CancellationToken::new();
        let grace = Duration::from_millis(500);
        let mut tasks = vec![
            tokio::spawn(common::server::serve_http(
                listener,
                router.clone(),
                shutdown.clone(),
                grace,
                Default::default(),
            )),
            tokio::spawn(common::server::h3::serve(
                endpoint,
                router,
                shutdown.clone(),
                grace,
                Default::default(),
            )),
        ];
        if assembler {
            let workers = common::queue::run_workers(
                queue.clone(),
                vec![ingest::assemble::handler(db.clone(), store.clone())],
                1,
                "uploads",
                None,
                shutdown.clone(),
            );
            tasks.push(tokio::spawn(async move {
                workers.await;
                Ok(())
            }));
        }
        Server {
            http,
            quic,
            fingerprint: identity.fingerprint(),
            db,
            store,
            queue,
            private_key,
            dir: dir.to_path_buf(),
            shutdown,
            tasks,
        }
    }

    pub fn token(&self, user: &str) -> String {
        common::auth::mint(&self.private_key, user, Duration::from_secs(3600)).unwrap()
    }

    pub async fn stop(self) {
        self.shutdown.cancel();
        for t in self.tasks {
            let _ = t.await;
        }
        self.db.close().await;
    }

    pub fn base(&self) -> String {
        format!("http://{}", self.http)
    }
}

/// The databases a test runs on: SQLite (`None`) and a fresh PostgreSQL database
/// (an unreachable server fails, unless `MOMENTS_TEST_SKIP_PG=1`).
pub async fn databases() -> Vec<Option<common::testing::PgTestDb>> {
    let mut all = vec![None];
    if let Some(pg) = common::testing::fresh_pg().await {
        all.push(Some(pg));
    }
    all
}

/// Deterministic pseudo-random bytes.
pub fn data(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

pub fn sha256(data: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(data))
}

/// The stored source object of the upload at `url`, hashed (on S3, once the queue worker has
/// assembled it from its parts).
pub async fn stored_sha256(s: &Server, url: &str) -> String {
    let id = url.rsplit('/').next().unwrap();
    let key = common::store::Key::new(format!("uploads/{id}")).unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let assembled = ingest::record::parts(&s.db, id).await.unwrap().is_empty();
        match s.store.get_bytes(&key, 1 << 30).await {
            Ok(bytes) if assembled => return sha256(&bytes),
            Ok(_) | Err(common::store::Error::NotFound(_))
                if std::time::Instant::now() < deadline =>
            {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("reading {key}: {e}"),
            Ok(_) => panic!("upload {id} still not assembled after 60 s"),
        }
    }
}
