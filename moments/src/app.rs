//! Wiring: builds each service from the config and serves them together. No business logic
//! lives here — only construction order, roles, listeners and shutdown.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use common::queue::{Queue, QueueMetrics};
use common::service::{Service, Shared, SharedConfig};
use tokio_util::sync::CancellationToken;

use crate::config::Config;

/// What one process does. `moments serve` runs every role; scale-out splits them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Role {
    /// The HTTP API: moment status and its SSE, tickets, the HLS origin, the events admin
    /// routes, the web page.
    Api,
    /// Resumable uploads (tus and the draft), also over QUIC.
    Ingest,
    /// Voice Q&A (the WebSocket), `/v1/asr`, `/v1/tts`, the profile; loads the engines.
    Voice,
    /// Queue workers: transcodes (FFmpeg), upload assembly, summaries, the events relay.
    Worker,
}

const ROLES: &str = "roles: api, ingest, voice, worker";

impl FromStr for Role {
    type Err = String;
    fn from_str(s: &str) -> Result<Role, String> {
        match s.trim() {
            "api" => Ok(Role::Api),
            "ingest" => Ok(Role::Ingest),
            "voice" => Ok(Role::Voice),
            "worker" => Ok(Role::Worker),
            other => Err(format!("unknown role {other:?} ({ROLES})")),
        }
    }
}

/// Parses `api,ingest`.
pub fn parse_roles(s: &str) -> Result<BTreeSet<Role>, String> {
    let roles = s
        .split(',')
        .filter(|r| !r.trim().is_empty())
        .map(Role::from_str)
        .collect::<Result<BTreeSet<_>, _>>()?;
    if roles.is_empty() {
        return Err(format!("no roles given ({ROLES})"));
    }
    Ok(roles)
}

/// Every role.
pub fn all_roles() -> BTreeSet<Role> {
    [Role::Api, Role::Ingest, Role::Voice, Role::Worker]
        .into_iter()
        .collect()
}

/// What this process opened, once, for the services its roles run. Dereferences to the
/// [`Shared`] state (database, store, auth, metrics, queue).
#[derive(Clone)]
pub struct Services {
    /// The loaded configuration.
    pub config: Arc<Config>,
    /// Database, store, auth, metrics, queue.
    pub shared: Shared,
    /// Voice Q&A, when a role needs it (`voice` with its engines loaded; `worker` alone
    /// without, for the summary jobs).
    pub voice: Option<Arc<asr_tts::voice::Voice>>,
    /// The HLS origin (its cache is shared by HTTP/1.1, HTTP/2 and HTTP/3).
    pub origin: packager::origin::OriginState,
    /// The development signing key, when the page may hand out tokens (no public key
    /// configured and `web.dev_tokens`).
    pub dev_key: Option<Arc<String>>,
}

impl std::ops::Deref for Services {
    type Target = Shared;
    fn deref(&self) -> &Shared {
        &self.shared
    }
}

impl Services {
    /// Opens the shared state (migrating the database) and what `roles` need beyond it.
    pub async fn open(config: Config, roles: &BTreeSet<Role>) -> anyhow::Result<Services> {
        config
            .events
            .validate()
            .map_err(|e| anyhow::anyhow!("config: {e}"))?;
        let url = config.database_url();
        let shared = Shared::open(SharedConfig {
            data_dir: &config.data_dir,
            database_url: &url,
            database: &config.database,
            storage: &config.storage,
            auth: &config.auth,
            queue: &config.queue,
            limits: &config.limits,
            version: env!("CARGO_PKG_VERSION"),
        })
        .await?;
        let voice = if roles.contains(&Role::Voice) || roles.contains(&Role::Worker) {
            let mut voice_config = config.voice.clone();
            if voice_config.models_dir.is_none() {
                voice_config.models_dir = Some(config.data_dir.join("models"));
            }
            Some(asr_tts::open(&shared, voice_config, roles.contains(&Role::Voice)).await?)
        } else {
            None
        };
        let dev_key = if config.auth.public_key.is_none() && config.web.dev_tokens {
            Some(Arc::new(common::auth::ensure_dev_key(&config.data_dir)?.0))
        } else {
            None
        };
        let signing = if config.packager.signed_playback {
            let key = match &config.packager.playback_secret {
                Some(secret) => secret.as_bytes().to_vec(),
                None => common::auth::ensure_playback_key(&config.data_dir)?,
            };
            let signer = packager::signed::Signer::new(&key)
                .map_err(|e| anyhow::anyhow!("config: packager.playback_secret: {e}"))?;
            Some(packager::origin::Signing {
                signer,
                segments: config.packager.signed_segments,
                revocations: shared.auth.revocations().clone(),
            })
        } else {
            None
        };
        let origin = packager::origin::OriginState::new(
            shared.store.clone(),
            shared.db.clone(),
            &config.packager,
            signing,
        );
        Ok(Services {
            dev_key,
            origin,
            config: Arc::new(config),
            shared,
            voice,
        })
    }

    /// The services `roles` run, from each crate. `http_addr` is the TCP listener (named in
    /// URLs answered over HTTP/3).
    pub async fn build(
        &self,
        roles: &BTreeSet<Role>,
        http_addr: Option<SocketAddr>,
    ) -> anyhow::Result<Service> {
        let (c, sh) = (&self.config, &self.shared);
        let mut all = common::ops::service(sh).merge(Service::routes(crate::openapi::router()));
        if roles.contains(&Role::Ingest) {
            all = all.merge(ingest::service(sh, &c.ingest, c.storage.s3_part_size));
        }
        if roles.contains(&Role::Api) || roles.contains(&Role::Voice) {
            all = all.merge(common::auth::tickets(sh));
        }
        if roles.contains(&Role::Api) {
            let (status, _) = packager::service(sh, &c.packager, http_addr, self.origin.clone());
            all = all
                .merge(status)
                .merge(common::events::service(sh, &c.events))
                .merge(common::auth::revoke::service(sh))
                .merge(Service::routes(crate::web::router(crate::web::WebState {
                    node_modules: c.web.node_modules.clone(),
                    dev_key: self.dev_key.clone(),
                })));
        }
        if roles.contains(&Role::Voice)
            && let Some(v) = &self.voice
        {
            all = all.merge(asr_tts::service(sh, v.clone()));
        }
        if roles.contains(&Role::Worker) {
            let sources = Arc::new(ingest::record::Sources::new(
                sh.db.clone(),
                sh.store.clone(),
            ));
            all = all
                .merge(transcode::jobs(sh, &c.transcode, &c.packager, sources))
                .merge(ingest::jobs(sh))
                .merge(common::events::jobs(sh, &c.events).await?);
            if let Some(v) = &self.voice {
                all = all.merge(asr_tts::jobs(v.clone()));
            }
        }
        Ok(all)
    }

    /// A router with the shared layers: error answers as JSON, the header size limit, CORS
    /// and request metrics.
    pub fn layered(&self, router: Router) -> Router {
        router
            .layer(axum::middleware::from_fn(common::api::json_errors))
            .layer(axum::middleware::from_fn_with_state(
                self.config.http.max_header_bytes,
                common::http::header_limit,
            ))
            .layer(axum::middleware::from_fn_with_state(
                self.shared.metrics.clone(),
                common::metrics::track,
            ))
            .layer(axum::middleware::from_fn(common::http::cors))
    }
}

/// Runs `pools` until `shutdown` (each pool with its own concurrency: a long transcode never
/// holds up a summary, nor the assembly of an upload's S3 parts).
fn run_pools(
    queue: &Queue,
    metrics: &Arc<common::metrics::Metrics>,
    pools: Vec<common::service::Pool>,
    shutdown: &CancellationToken,
) -> Option<tokio::task::JoinHandle<()>> {
    if pools.is_empty() {
        return None;
    }
    let qm = QueueMetrics::register(metrics);
    let mut set = tokio::task::JoinSet::new();
    for p in pools {
        set.spawn(common::queue::run_workers(
            queue.clone(),
            p.handlers,
            p.workers,
            p.name,
            Some(qm.clone()),
            shutdown.clone(),
        ));
    }
    Some(tokio::spawn(async move {
        while set.join_next().await.is_some() {}
    }))
}

/// A started server: its real addresses and a handle to stop it.
pub struct Running {
    /// HTTP/1.1 + HTTP/2 address.
    pub http_addr: SocketAddr,
    /// HTTP/3 address, when this process listens for QUIC.
    pub quic_addr: Option<SocketAddr>,
    /// SHA-256 of the QUIC certificate.
    pub cert_sha256: Option<String>,
    /// The services (tests reach the database and store through them).
    pub services: Services,
    /// The roles this process runs.
    pub roles: BTreeSet<Role>,
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

/// Opens everything, binds the listeners the roles need and starts serving in the background.
pub async fn start(config: Config, roles: BTreeSet<Role>) -> anyhow::Result<Running> {
    // QUIC carries uploads (and the API beside them); a worker or voice-only node needs none
    let quic = roles.contains(&Role::Api) || roles.contains(&Role::Ingest);
    let identity = if quic {
        Some(match (&config.quic.cert, &config.quic.key) {
            (Some(cert), Some(key)) => common::server::tls::load(cert, key)?,
            (None, None) => common::server::tls::ensure_self_signed(&config.data_dir)?,
            _ => anyhow::bail!("config keys `quic.cert` and `quic.key` must be set together"),
        })
    } else {
        None
    };
    let grace = Duration::from_secs(config.http.shutdown_grace_secs);
    let listener = common::server::bind_http(config.http.addr).await?;
    let endpoint = match &identity {
        Some(id) => Some(common::server::h3::bind(
            config.quic.addr,
            id,
            config.quic.congestion,
        )?),
        None => None,
    };
    let http_addr = listener.local_addr()?;
    let quic_addr = match &endpoint {
        Some(e) => Some(e.local_addr()?),
        None => None,
    };

    let services = Services::open(config, &roles).await?;
    let service = services.build(&roles, Some(http_addr)).await?;
    let router = services.layered(service.router);
    let shutdown = CancellationToken::new();
    let tasks: Vec<_> = service
        .tasks
        .into_iter()
        .map(|t| t(shutdown.clone()))
        .collect();

    tracing::info!(
        %http_addr,
        quic_addr = ?quic_addr,
        roles = ?roles,
        database = %common::db::redact(&services.config.database_url()),
        storage = %services.store.describe(),
        auth = %services.auth.source,
        rate_limits = %services.limiter.describe(),
        "moments is serving"
    );

    let workers = run_pools(&services.queue, &services.metrics, service.pools, &shutdown);
    let conns = common::server::ConnMetrics::registered(&services.metrics);
    let http = tokio::spawn(common::server::serve_http(
        listener,
        router.clone(),
        shutdown.clone(),
        grace,
        services.config.http.conn_limits(&conns),
    ));
    let h3 = endpoint.map(|ep| {
        tokio::spawn(common::server::h3::serve(
            ep,
            router,
            shutdown.clone(),
            grace,
            services.config.quic.conn_limits(&conns),
        ))
    });
    let db = services.db.clone();
    let task = tokio::spawn(async move {
        http.await??;
        if let Some(h3) = h3 {
            h3.await??;
        }
        if let Some(w) = workers {
            w.await?;
        }
        for t in tasks {
            t.await?;
        }
        db.close().await;
        tracing::info!("moments stopped");
        Ok(())
    });
    Ok(Running {
        http_addr,
        quic_addr,
        cert_sha256: identity.map(|i| i.fingerprint()),
        services,
        roles,
        shutdown,
        task,
    })
}
