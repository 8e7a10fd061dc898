//! Wiring: builds each service from the config and serves them together. No business logic
//! lives here — only construction order, roles, listeners and shutdown.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use axum::Router;
use common::auth::Auth;
use common::db::Db;
use common::metrics::Metrics;
use common::queue::{Queue, QueueMetrics};
use common::store::Store;
use tokio_util::sync::CancellationToken;

use crate::config::Config;

/// What one process does. `moments serve` runs every role; scale-out splits them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Role {
    /// The HTTP API: moment status, tickets, the HLS origin, voice Q&A.
    Api,
    /// Resumable uploads (tus), also over QUIC.
    Ingest,
    /// Queue workers (transcoding, summaries).
    Worker,
}

impl FromStr for Role {
    type Err = String;
    fn from_str(s: &str) -> Result<Role, String> {
        match s.trim() {
            "api" => Ok(Role::Api),
            "ingest" => Ok(Role::Ingest),
            "worker" => Ok(Role::Worker),
            other => Err(format!(
                "unknown role {other:?} (roles: api, ingest, worker)"
            )),
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
        return Err("no roles given (roles: api, ingest, worker)".into());
    }
    Ok(roles)
}

/// Every role.
pub fn all_roles() -> BTreeSet<Role> {
    [Role::Api, Role::Ingest, Role::Worker]
        .into_iter()
        .collect()
}

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
    /// The durable job queue.
    pub queue: Queue,
    /// Voice Q&A (engines loaded once).
    pub voice: Arc<asr_tts::voice::Voice>,
    /// The HLS origin (its cache is shared by HTTP/1.1, HTTP/2 and HTTP/3).
    pub origin: packager::origin::OriginState,
    /// The development signing key, when the page may hand out tokens (no public key
    /// configured and `web.dev_tokens`).
    pub dev_key: Option<Arc<String>>,
}

impl Services {
    /// Opens the database (migrating it), the store and the auth keys.
    pub async fn open(config: Config) -> anyhow::Result<Services> {
        std::fs::create_dir_all(&config.data_dir).with_context(|| {
            format!("cannot create data directory {}", config.data_dir.display())
        })?;
        config
            .events
            .validate()
            .map_err(|e| anyhow::anyhow!("config: {e}"))?;
        let url = config.database_url();
        let db = Db::connect(&url, config.database.max_connections).await?;
        let store = common::store::open(&config.storage, &config.data_dir).await?;
        let auth = Arc::new(Auth::from_config(&config.auth, &config.data_dir)?);
        let metrics = Metrics::new(env!("CARGO_PKG_VERSION"));
        let queue = Queue::new(db.clone(), config.queue.clone());
        let mut voice_config = config.voice.clone();
        if voice_config.models_dir.is_none() {
            voice_config.models_dir = Some(config.data_dir.join("models"));
        }
        let engines_config = voice_config.clone();
        // model loading reads hundreds of MB and runs a probe: off the async runtime
        let (tts, asr) =
            tokio::task::spawn_blocking(move || asr_tts::engines(&engines_config)).await??;
        let voice = Arc::new(asr_tts::voice::Voice::new(
            voice_config,
            db.clone(),
            store.clone(),
            queue.clone(),
            tts,
            asr,
            Some(asr_tts::voice::VoiceMetrics::register(&metrics)),
        ));
        let dev_key = if config.auth.public_key.is_none() && config.web.dev_tokens {
            Some(Arc::new(common::auth::ensure_dev_key(&config.data_dir)?.0))
        } else {
            None
        };
        let origin =
            packager::origin::OriginState::new(store.clone(), db.clone(), &config.packager);
        Ok(Services {
            dev_key,
            origin,
            config: Arc::new(config),
            db,
            store,
            auth,
            metrics,
            queue,
            voice,
        })
    }

    /// The tus handler's state (shared by the routes and the expiry sweeper).
    pub fn ingest_state(&self) -> ingest::handler::IngestState {
        ingest::handler::IngestState::new(
            self.db.clone(),
            self.store.clone(),
            self.queue.clone(),
            self.auth.clone(),
            self.config.ingest.clone(),
            self.config.storage.s3_part_size,
            ingest::handler::IngestMetrics::register(&self.metrics),
        )
    }

    /// The routes of `roles`, always with the ops routes, with request metrics on all.
    pub fn router(
        &self,
        roles: &BTreeSet<Role>,
        ingest: Option<ingest::handler::IngestState>,
        http_addr: Option<SocketAddr>,
    ) -> Router {
        let mut router = Router::new().merge(common::ops::router(common::ops::OpsState {
            db: self.db.clone(),
            store: self.store.clone(),
            metrics: self.metrics.clone(),
        }));
        if let Some(state) = ingest {
            router = router.merge(ingest::handler::router(state));
        }
        if roles.contains(&Role::Api) {
            router = router
                .merge(common::auth::tickets_router(common::auth::TicketState {
                    db: self.db.clone(),
                    auth: self.auth.clone(),
                }))
                .merge(transcode::api::router(transcode::api::ApiState {
                    db: self.db.clone(),
                    auth: self.auth.clone(),
                    public_base_url: self.config.packager.public_base_url.clone(),
                    http_origin: http_addr.map(|a| {
                        let ip = if a.ip().is_unspecified() {
                            std::net::IpAddr::from([127, 0, 0, 1])
                        } else {
                            a.ip()
                        };
                        SocketAddr::new(ip, a.port()).to_string()
                    }),
                }))
                .merge(packager::origin::router(self.origin.clone()))
                .merge(asr_tts::api::router(asr_tts::api::VoiceState {
                    voice: self.voice.clone(),
                    auth: self.auth.clone(),
                }))
                .merge(common::events::admin::router(
                    common::events::admin::AdminState {
                        db: self.db.clone(),
                        auth: self.auth.clone(),
                        admins: Arc::new(self.config.events.admins.clone()),
                    },
                ))
                .merge(crate::web::router(crate::web::WebState {
                    node_modules: self.config.web.node_modules.clone(),
                    dev_key: self.dev_key.clone(),
                }));
        }
        router.layer(axum::middleware::from_fn_with_state(
            self.metrics.clone(),
            common::metrics::track,
        ))
    }

    /// Runs the queue workers until `shutdown`.
    pub async fn spawn_workers(
        &self,
        shutdown: CancellationToken,
    ) -> anyhow::Result<tokio::task::JoinHandle<()>> {
        let qm = QueueMetrics::register(&self.metrics);
        let tm = transcode::job::TranscodeMetrics::register(&self.metrics);
        let transcoder = transcode::job::Transcoder::new(
            self.db.clone(),
            self.store.clone(),
            Arc::new(ingest::record::Sources::new(
                self.db.clone(),
                self.store.clone(),
            )),
            self.config.transcode.clone(),
            self.config.packager.clone(),
            Some(tm),
        );
        // Separate pools: a long transcode never holds up a session's summary, nor the
        // assembly of an upload's S3 parts (which the transcode does not wait for).
        let transcoding = common::queue::run_workers(
            self.queue.clone(),
            vec![transcode::job::handler(transcoder)],
            self.config.transcode.workers,
            "transcode",
            Some(qm.clone()),
            shutdown.clone(),
        );
        let summaries = common::queue::run_workers(
            self.queue.clone(),
            vec![Arc::new(asr_tts::summary::Summarizer::new(
                self.voice.clone(),
            ))],
            1,
            "summary",
            Some(qm.clone()),
            shutdown.clone(),
        );
        let assembling = common::queue::run_workers(
            self.queue.clone(),
            vec![ingest::assemble::handler(
                self.db.clone(),
                self.store.clone(),
            )],
            1,
            "uploads",
            Some(qm.clone()),
            shutdown.clone(),
        );
        // The events relay: one job for the whole deployment, held by one worker at a time.
        let events = &self.config.events;
        let bus = common::events::bus::open(events)
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        if let Some(b) = &bus {
            tracing::info!(bus = %b.describe(), "events are published to the bus");
        }
        let relay = common::events::relay::Relay::new(
            self.db.clone(),
            events.clone(),
            bus,
            Some(common::events::relay::EventMetrics::register(&self.metrics)),
        )
        .map_err(|e| anyhow::anyhow!("events: {e}"))?;
        common::events::relay::ensure(&self.queue).await?;
        let relaying = common::queue::run_workers(
            self.queue.clone(),
            vec![Arc::new(relay)],
            1,
            "events",
            Some(qm),
            shutdown,
        );
        Ok(tokio::spawn(async move {
            tokio::join!(transcoding, summaries, assembling, relaying);
        }))
    }
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

    let services = Services::open(config).await?;
    let ingest_state = roles
        .contains(&Role::Ingest)
        .then(|| services.ingest_state());
    let router = services.router(&roles, ingest_state.clone(), Some(http_addr));
    let shutdown = CancellationToken::new();
    let sweeper =
        ingest_state.map(|s| tokio::spawn(ingest::handler::sweep_expired(s, shutdown.clone())));

    tracing::info!(
        %http_addr,
        quic_addr = ?quic_addr,
        roles = ?roles,
        database = %common::db::redact(&services.config.database_url()),
        storage = %services.store.describe(),
        auth = %services.auth.source,
        "moments is serving"
    );

    let workers = if roles.contains(&Role::Worker) {
        Some(services.spawn_workers(shutdown.clone()).await?)
    } else {
        None
    };
    let http = tokio::spawn(common::server::serve_http(
        listener,
        router.clone(),
        shutdown.clone(),
        grace,
    ));
    let h3 = endpoint.map(|ep| {
        tokio::spawn(common::server::h3::serve(
            ep,
            router,
            shutdown.clone(),
            grace,
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
        if let Some(s) = sweeper {
            s.await?;
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
