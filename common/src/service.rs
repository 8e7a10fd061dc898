//! What each library crate hands the binary: a [`Service`] (its routes, its job pools and its
//! background tasks), built from the [`Shared`] state that is opened once here. The binary
//! (`moments`) only chooses services by role and runs them; it holds no business logic.

use std::path::Path;
use std::sync::Arc;

use axum::Router;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::auth::Auth;
use crate::db::Db;
use crate::metrics::Metrics;
use crate::queue::{Handler, Queue};
use crate::store::Store;

/// What every service is built from, opened once per process; cheap to clone.
#[derive(Clone)]
pub struct Shared {
    /// Metadata database (and its change channel).
    pub db: Db,
    /// Object store.
    pub store: Store,
    /// Token verifier.
    pub auth: Arc<Auth>,
    /// Metrics registry.
    pub metrics: Arc<Metrics>,
    /// The durable job queue.
    pub queue: Queue,
    /// Per-user rate limits.
    pub limiter: Arc<crate::limit::Limiter>,
}

/// The sections [`Shared::open`] reads.
pub struct SharedConfig<'a> {
    /// Where local state lives (SQLite, filesystem objects, keys).
    pub data_dir: &'a Path,
    /// The database URL, resolved (`sqlite://…` or `postgres://…`).
    pub database_url: &'a str,
    /// `[database]`.
    pub database: &'a crate::db::Config,
    /// `[storage]`.
    pub storage: &'a crate::store::Config,
    /// `[auth]`.
    pub auth: &'a crate::auth::Config,
    /// `[queue]`.
    pub queue: &'a crate::queue::Config,
    /// `[limits]`.
    pub limits: &'a crate::limit::Config,
    /// The build's version, for `moments_build_info`.
    pub version: &'a str,
}

impl Shared {
    /// Opens the database (migrating it), the object store and the auth keys.
    pub async fn open(c: SharedConfig<'_>) -> anyhow::Result<Shared> {
        use anyhow::Context as _;
        std::fs::create_dir_all(c.data_dir)
            .with_context(|| format!("cannot create data directory {}", c.data_dir.display()))?;
        let db = Db::connect_config(c.database_url, c.database).await?;
        let store = crate::store::open(c.storage, c.data_dir).await?;
        let auth = Arc::new(Auth::from_config(c.auth, c.data_dir)?);
        // revoked tokens are refused from the first request on, then kept current
        auth.revocations()
            .refresh(&db)
            .await
            .context("cannot read the token revocations")?;
        auth.revocations().spawn_refresh(
            db.clone(),
            std::time::Duration::from_millis(c.auth.revocation_poll_ms),
        );
        let metrics = Metrics::new(c.version);
        let queue = Queue::new(db.clone(), c.queue.clone());
        let limiter =
            Arc::new(crate::limit::Limiter::new(c.limits, &metrics).map_err(anyhow::Error::msg)?);
        Ok(Shared {
            db,
            store,
            auth,
            metrics,
            queue,
            limiter,
        })
    }
}

/// Implements axum's `FromRef` from a state type with a `shared: Shared` field to each of the
/// shared handles (`Db`, `Store`, `Arc<Auth>`, `Arc<Metrics>`, `Queue`, `Arc<Limiter>`), so every crate's
/// extractors (`User`, `StreamUser`, …) work on its own state without hand-written plumbing.
#[macro_export]
macro_rules! shared_state {
    ($state:ty) => {
        impl ::axum::extract::FromRef<$state> for $crate::db::Db {
            fn from_ref(s: &$state) -> Self {
                s.shared.db.clone()
            }
        }
        impl ::axum::extract::FromRef<$state> for $crate::store::Store {
            fn from_ref(s: &$state) -> Self {
                s.shared.store.clone()
            }
        }
        impl ::axum::extract::FromRef<$state> for ::std::sync::Arc<$crate::auth::Auth> {
            fn from_ref(s: &$state) -> Self {
                s.shared.auth.clone()
            }
        }
        impl ::axum::extract::FromRef<$state> for ::std::sync::Arc<$crate::metrics::Metrics> {
            fn from_ref(s: &$state) -> Self {
                s.shared.metrics.clone()
            }
        }
        impl ::axum::extract::FromRef<$state> for $crate::queue::Queue {
            fn from_ref(s: &$state) -> Self {
                s.shared.queue.clone()
            }
        }
        impl ::axum::extract::FromRef<$state> for ::std::sync::Arc<$crate::limit::Limiter> {
            fn from_ref(s: &$state) -> Self {
                s.shared.limiter.clone()
            }
        }
    };
}

/// Worker loops over some job kinds, with their own concurrency (a long transcode never holds
/// up a summary).
pub struct Pool {
    /// Names the pool in worker ids and logs.
    pub name: &'static str,
    /// The job kinds it runs.
    pub handlers: Vec<Arc<dyn Handler>>,
    /// Concurrent jobs.
    pub workers: usize,
}

/// A background task: started with the process's shutdown token, awaited at shutdown.
pub type Task = Box<dyn FnOnce(CancellationToken) -> JoinHandle<()> + Send>;

/// What a crate contributes to a process in one role.
#[derive(Default)]
pub struct Service {
    /// Its routes (empty when it serves none).
    pub router: Router,
    /// Its job pools (run by the `worker` role).
    pub pools: Vec<Pool>,
    /// Its background tasks.
    pub tasks: Vec<Task>,
}

impl Service {
    /// A service of routes only.
    pub fn routes(router: Router) -> Service {
        Service {
            router,
            ..Service::default()
        }
    }

    /// A service of one job pool.
    pub fn pool(name: &'static str, handlers: Vec<Arc<dyn Handler>>, workers: usize) -> Service {
        Service {
            pools: vec![Pool {
                name,
                handlers,
                workers,
            }],
            ..Service::default()
        }
    }

    /// Adds a background task.
    pub fn with_task(mut self, task: Task) -> Service {
        self.tasks.push(task);
        self
    }

    /// Both services in one.
    pub fn merge(mut self, other: Service) -> Service {
        self.router = self.router.merge(other.router);
        self.pools.extend(other.pools);
        self.tasks.extend(other.tasks);
        self
    }
}
