//! The message bus events are published to, behind [`Bus`] so another broker (RabbitMQ,
//! Kafka) can follow. The first is NATS JetStream: a persisted stream with server-side
//! deduplication on the `Nats-Msg-Id` header (the event id), so a publish retried after a lost
//! ack is stored once, and a publish counts only when the server acknowledged it.
//!
//! A broker that is down — at start or later — delays deliveries, never the service: the client
//! reconnects in the background, publishes time out and are retried with backoff by the relay.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::OnceCell;

/// The delivery target name of the bus.
pub const TARGET: &str = "bus";

/// A broker events are published to.
#[async_trait]
pub trait Bus: Send + Sync + std::fmt::Debug {
    /// Publishes one event (its JSON `body`); Ok once the broker has stored it.
    async fn publish(&self, id: &str, kind: &str, body: &str) -> Result<(), String>;

    /// For logs: which broker, where.
    fn describe(&self) -> String;
}

/// Opens the bus `config.url` names, if any. Connecting never blocks start-up: a broker that
/// is not up yet is connected to in the background.
pub async fn open(config: &super::Config) -> Result<Option<Arc<dyn Bus>>, String> {
    let Some(url) = &config.url else {
        return Ok(None);
    };
    if url.starts_with("nats://") {
        return Ok(Some(Arc::new(Nats::connect(url, config).await?)));
    }
    Err(format!("events.url {url:?}: only nats:// is supported"))
}

/// NATS JetStream.
pub struct Nats {
    url: String,
    js: async_nats::jetstream::Context,
    prefix: String,
    stream: String,
    timeout: Duration,
    dedup_window: Duration,
    ready: OnceCell<()>,
}

impl std::fmt::Debug for Nats {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Nats({}, stream {})", self.url, self.stream)
    }
}

impl Nats {
    /// A client for `url`; reconnects for ever.
    pub async fn connect(url: &str, config: &super::Config) -> Result<Nats, String> {
        let timeout = Duration::from_millis(config.timeout_ms.max(100));
        let client = async_nats::ConnectOptions::new()
            .retry_on_initial_connect()
            .max_reconnects(None)
            .connection_timeout(timeout)
            .request_timeout(Some(timeout))
            .name("moments-events")
            .connect(url)
            .await
            .map_err(|e| format!("events.url {url:?}: {e}"))?;
        let mut js = async_nats::jetstream::new(client);
        js.set_timeout(timeout);
        Ok(Nats {
            url: url.to_string(),
            js,
            prefix: config.subject_prefix.clone(),
            stream: config.stream.clone(),
            timeout,
            dedup_window: Duration::from_millis(config.backoff_max_ms.saturating_mul(2))
                .max(Duration::from_secs(120)),
            ready: OnceCell::new(),
        })
    }

    /// Creates the stream on first use (and again after a failure).
    async fn ensure_stream(&self) -> Result<(), String> {
        self.ready
            .get_or_try_init(|| async {
                let cfg = async_nats::jetstream::stream::Config {
                    name: self.stream.clone(),
                    subjects: vec![format!("{}.>", self.prefix)],
                    // longer than any retry's wait, so a publish retried after a lost ack is
                    // still recognised
                    duplicate_window: self.dedup_window,
                    ..Default::default()
                };
                tokio::time::timeout(self.timeout, self.js.get_or_create_stream(cfg))
                    .await
                    .map_err(|_| "timed out creating the JetStream stream".to_string())?
                    .map(|_| ())
                    .map_err(|e| format!("cannot create JetStream stream {}: {e}", self.stream))
            })
            .await
            .map(|_| ())
    }
}

#[async_trait]
impl Bus for Nats {
    async fn publish(&self, id: &str, kind: &str, body: &str) -> Result<(), String> {
        self.ensure_stream().await?;
        let mut headers = async_nats::HeaderMap::new();
        headers.insert("Nats-Msg-Id", id);
        headers.insert("Content-Type", "application/json");
        let subject = format!("{}.{kind}", self.prefix);
        let send = async {
            let ack = self
                .js
                .publish_with_headers(subject, headers, body.to_string().into())
                .await
                .map_err(|e| format!("publish failed: {e}"))?;
            ack.await.map_err(|e| format!("no ack: {e}")).map(|_| ())
        };
        tokio::time::timeout(self.timeout, send)
            .await
            .map_err(|_| format!("no ack within {} ms", self.timeout.as_millis()))?
    }

    fn describe(&self) -> String {
        format!("NATS JetStream {} (stream {})", self.url, self.stream)
    }
}
