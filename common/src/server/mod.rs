//! Serving one axum `Router` over every transport: HTTP/1.1 and HTTP/2 (hyper) on TCP, and
//! HTTP/3 (quinn + h3) on UDP. Handlers are written once and never know which transport
//! carried the request. Both listeners shut down gracefully: they stop accepting, let
//! in-flight requests finish (up to a deadline), then return.

pub mod conn;
pub mod h3;
pub mod tls;

pub use conn::{ConnLimits, ConnMetrics};

use std::future::{Future, IntoFuture};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use axum::Router;
use serde::Deserialize;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// `[http]` section.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct HttpConfig {
    /// TCP address for HTTP/1.1 and HTTP/2.
    pub addr: SocketAddr,
    /// How long shutdown waits for in-flight requests (seconds).
    pub shutdown_grace_secs: u64,
    /// The largest request header section accepted (bytes); larger ones get `431`.
    pub max_header_bytes: usize,
    /// Open TCP connections at most; past it a new one is closed at accept.
    pub max_connections: usize,
    /// A TCP connection with no byte read or written for this long is closed (seconds): an
    /// idle keep-alive, a half-open peer, a reader that stopped reading.
    pub idle_timeout_secs: u64,
}

impl HttpConfig {
    /// The connection bounds of this section, counted in `metrics`.
    pub fn conn_limits(&self, metrics: &ConnMetrics) -> ConnLimits {
        ConnLimits {
            max: self.max_connections,
            idle: Duration::from_secs(self.idle_timeout_secs.max(1)),
            metrics: metrics.clone(),
        }
    }
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            addr: SocketAddr::from(([127, 0, 0, 1], 8080)),
            shutdown_grace_secs: 10,
            max_header_bytes: 32 * 1024,
            max_connections: 4096,
            idle_timeout_secs: 120,
        }
    }
}

/// `[quic]` section.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct QuicConfig {
    /// UDP address for HTTP/3.
    pub addr: SocketAddr,
    /// PEM certificate chain; unset: a self-signed certificate made under `$DATA/tls`.
    pub cert: Option<PathBuf>,
    /// PEM private key for `cert`.
    pub key: Option<PathBuf>,
    /// Congestion controller of QUIC senders (server and `moments upload`): `bbr`, `cubic`
    /// or `newreno`.
    pub congestion: h3::Congestion,
    /// Open QUIC connections at most; past it a new one is refused.
    pub max_connections: usize,
    /// A QUIC connection with no request open for this long is closed (seconds). A peer that
    /// stops answering is dropped by QUIC's own idle timeout (30 s) whatever this says.
    pub idle_timeout_secs: u64,
}

impl QuicConfig {
    /// The connection bounds of this section, counted in `metrics`.
    pub fn conn_limits(&self, metrics: &ConnMetrics) -> ConnLimits {
        ConnLimits {
            max: self.max_connections,
            idle: Duration::from_secs(self.idle_timeout_secs.max(1)),
            metrics: metrics.clone(),
        }
    }
}

impl Default for QuicConfig {
    fn default() -> Self {
        QuicConfig {
            addr: SocketAddr::from(([127, 0, 0, 1], 4433)),
            cert: None,
            key: None,
            congestion: h3::Congestion::default(),
            max_connections: 4096,
            idle_timeout_secs: 120,
        }
    }
}

/// Serving errors.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The address is taken by another process.
    #[error(
        "cannot listen on {proto} {addr}: the address is already in use (is another `moments` running? choose another with {var})"
    )]
    AddrInUse {
        /// `TCP` or `UDP`.
        proto: &'static str,
        /// The address.
        addr: SocketAddr,
        /// The variable that moves it.
        var: &'static str,
    },
    /// Any other bind failure.
    #[error("cannot listen on {proto} {addr}: {source}")]
    Bind {
        /// `TCP` or `UDP`.
        proto: &'static str,
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// Certificate or key trouble.
    #[error("TLS: {0}")]
    Tls(String),
}

/// Binds the HTTP listener, with a clear message when the port is taken.
pub async fn bind_http(addr: SocketAddr) -> Result<TcpListener, Error> {
    TcpListener::bind(addr).await.map_err(|source| {
        if source.kind() == std::io::ErrorKind::AddrInUse {
            Error::AddrInUse {
                proto: "TCP",
                addr,
                var: "MOMENTS_HTTP_ADDR",
            }
        } else {
            Error::Bind {
                proto: "TCP",
                addr,
                source,
            }
        }
    })
}

/// Serves `router` over HTTP/1.1 and HTTP/2 (cleartext, prior knowledge) until `shutdown`, then
/// waits up to `grace` for in-flight requests. At most `limits.max` connections are open at
/// once, and one silent for `limits.idle` is closed.
pub async fn serve_http(
    listener: TcpListener,
    router: Router,
    shutdown: CancellationToken,
    grace: Duration,
    limits: ConnLimits,
) -> std::io::Result<()> {
    let signal = shutdown.clone();
    let listener = conn::BoundedListener::new(listener, limits);
    let server = axum::serve(listener, router.into_make_service())
        .with_graceful_shutdown(async move { signal.cancelled().await });
    with_deadline(server.into_future(), shutdown, grace, "HTTP").await
}

/// Runs `fut` to completion, but gives up `grace` after `shutdown` fires (long-lived streams
/// such as Server-Sent Events must not hold the process forever).
pub(crate) async fn with_deadline<F>(
    fut: F,
    shutdown: CancellationToken,
    grace: Duration,
    what: &str,
) -> std::io::Result<()>
where
    F: Future<Output = std::io::Result<()>>,
{
    tokio::pin!(fut);
    tokio::select! {
        r = &mut fut => return r,
        _ = shutdown.cancelled() => {}
    }
    match tokio::time::timeout(grace, fut).await {
        Ok(r) => r,
        Err(_) => {
            tracing::warn!("{what}: in-flight requests still open after {grace:?}; closing them");
            Ok(())
        }
    }
}

/// Resolves when the process gets SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = ctrl_c => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = ctrl_c.await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}
