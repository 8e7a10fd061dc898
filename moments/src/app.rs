//! Wiring: builds each service from the config and serves them together. No business logic
//! lives here — only construction order, listeners and shutdown.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use axum::Router;
use common::auth::Auth;
use common::db::Db;
use common::metrics::Metrics;
use common::store::Store;
use tokio_util::sync::CancellationToken;

use crate::config::Config;

/// The shared services every room is built from.
#[derive(Clone)]
pub struct Services {
    /// The loaded configuration.
    pub config: Arc<Config>,
    /// Metadata database.
    pub db: Db,
    /// Object store.
    pub store: Store,
    /// Token verifier.
    pub auth: Arc<Auth>,
    /// Metrics registry.
    pub metrics: Arc<Metrics>,
}

impl Services {
    /// Opens the database (migrating it), the store and the auth keys.
    pub async fn open(config: Config) -> anyhow::Result<Services> {
        std::fs::create_dir_all(&config.data_dir).with_context(|| {
            format!("cannot create data directory {}", config.data_dir.display())
        })?;
        let url = config.database_url();
        let db = Db::connect(&url, config.database.max_connections).await?;
        let store = common::store::open(&config.storage, &config.data_dir).await?;
        let auth = Arc::new(Auth::from_config(&config.auth, &config.data_dir)?);
        let metrics = Metrics::new(env!("CARGO_PKG_VERSION"));
        Ok(Services {
            config: Arc::new(config),
            db,
            store,
            auth,
            metrics,
        })
    }

    /// Every route of the service, with request metrics on all of them.
    pub fn router(&self) -> Router {
        let ops = common::ops::router(common::ops::OpsState {
            db: self.db.clone(),
            store: self.store.clone(),
            metrics: self.metrics.clone(),
        });
        Router::new()
            .merge(ops)
            .layer(axum::middleware::from_fn_with_state(
                self.metrics.clone(),
                common::metrics::track,
            ))
    }
}

/// A started server: its real addresses and a handle to stop it.
pub struct Running {
    /// HTTP/1.1 + HTTP/2 address.
    pub http_addr: SocketAddr,
    /// HTTP/3 address.
    pub quic_addr: SocketAddr,
    /// SHA-256 of the QUIC certificate.
    pub cert_sha256: String,
    /// The services (tests reach the database and store through them).
    pub services: Services,
    shutdown: CancellationToken,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl Running {
    /// Asks the server to stop and waits until it has.
    pub async fn stop(self) -> anyhow::Result<()> {
        self.shutdown.cancel();
        self.task.await?
    }

    /// The token that stops the server when cancelled.
    pub fn shutdown_token(&self) -> CancellationToken {
        self.shutdown.clone()
    }

    /// Waits until the server stops (after the token is cancelled).
    pub async fn wait(self) -> anyhow::Result<()> {
        self.task.await?
    }
}

/// Opens everything, binds both listeners and starts serving in the background.
pub async fn start(config: Config) -> anyhow::Result<Running> {
    let identity = match (&config.quic.cert, &config.quic.key) {
        (Some(cert), Some(key)) => common::server::tls::load(cert, key)?,
        (None, None) => common::server::tls::ensure_self_signed(&config.data_dir)?,
        _ => anyhow::bail!("config keys `quic.cert` and `quic.key` must be set together"),
    };
    let grace = Duration::from_secs(config.http.shutdown_grace_secs);
    let listener = common::server::bind_http(config.http.addr).await?;
    let endpoint = common::server::h3::bind(config.quic.addr, &identity)?;
    let http_addr = listener.local_addr()?;
    let quic_addr = endpoint.local_addr()?;

    let services = Services::open(config).await?;
    let router = services.router();
    let shutdown = CancellationToken::new();

    tracing::info!(
        %http_addr,
        %quic_addr,
        database = %common::db::redact(&services.config.database_url()),
        storage = %services.store.describe(),
        auth = %services.auth.source,
        "moments is serving"
    );

    let http = tokio::spawn(common::server::serve_http(
        listener,
        router.clone(),
        shutdown.clone(),
        grace,
    ));
    let h3 = tokio::spawn(common::server::h3::serve(
        endpoint,
        router,
        shutdown.clone(),
        grace,
    ));
    let db = services.db.clone();
    let task = tokio::spawn(async move {
        let (a, b) = tokio::join!(http, h3);
        a??;
        b??;
        db.close().await;
        tracing::info!("moments stopped");
        Ok(())
    });
    Ok(Running {
        http_addr,
        quic_addr,
        cert_sha256: identity.fingerprint(),
        services,
        shutdown,
        task,
    })
}
