//! Bounds on connections, for every transport: how many may be open at once and how long one
//! may stay silent. Without them a client can hold sockets forever — idle keep-alives,
//! half-open peers that vanished without a FIN, readers that never drain their window — until
//! the process runs out of file descriptors.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::{Instant, Sleep};

/// Label of the connection counters.
#[derive(Clone, Debug, Hash, PartialEq, Eq, prometheus_client::encoding::EncodeLabelSet)]
pub struct TransportLabel {
    /// `tcp` (HTTP/1.1 and HTTP/2) or `quic` (HTTP/3).
    pub transport: &'static str,
}

/// The counters behind `moments_connections_refused_total` and
/// `moments_connections_idle_closed_total`.
#[derive(Clone, Debug, Default)]
pub struct ConnMetrics {
    refused: Family<TransportLabel, Counter>,
    idle_closed: Family<TransportLabel, Counter>,
}

impl ConnMetrics {
    /// Counters registered in `metrics`.
    pub fn registered(metrics: &crate::metrics::Metrics) -> ConnMetrics {
        let m = ConnMetrics::default();
        metrics.register(
            "connections_refused",
            "Connections closed at accept because `max_connections` were open",
            m.refused.clone(),
        );
        metrics.register(
            "connections_idle_closed",
            "Connections closed after `idle_timeout_secs` without a byte either way",
            m.idle_closed.clone(),
        );
        m
    }

    pub(crate) fn refused(&self, transport: &'static str) {
        self.refused
            .get_or_create(&TransportLabel { transport })
            .inc();
    }

    pub(crate) fn idle_closed(&self, transport: &'static str) {
        self.idle_closed
            .get_or_create(&TransportLabel { transport })
            .inc();
    }
}

/// How many connections a listener keeps open at once and how long one may be silent.
#[derive(Clone, Debug)]
pub struct ConnLimits {
    /// Open connections at most; past it new ones are closed at once.
    pub max: usize,
    /// A connection with no byte read or written for this long is closed.
    pub idle: Duration,
    /// Where refusals and idle closes are counted.
    pub metrics: ConnMetrics,
}

impl ConnLimits {
    /// Limits with counters that are not registered anywhere (tests, tools).
    pub fn new(max: usize, idle: Duration) -> ConnLimits {
        ConnLimits {
            max,
            idle,
            metrics: ConnMetrics::default(),
        }
    }
}

impl Default for ConnLimits {
    fn default() -> Self {
        ConnLimits::new(4096, Duration::from_secs(120))
    }
}

/// A counting semaphore that logs (at most every 10 s) when it turns a connection away.
#[derive(Clone)]
pub(crate) struct Gate {
    slots: Arc<Semaphore>,
    max: usize,
    metrics: ConnMetrics,
    transport: &'static str,
    last_warn: Arc<std::sync::Mutex<Option<Instant>>>,
}

impl Gate {
    pub(crate) fn new(limits: &ConnLimits, transport: &'static str) -> Gate {
        Gate {
            slots: Arc::new(Semaphore::new(limits.max.max(1))),
            max: limits.max.max(1),
            metrics: limits.metrics.clone(),
            transport,
            last_warn: Arc::default(),
        }
    }

    /// A slot, or `None` (counted and logged) when all are taken.
    pub(crate) fn enter(&self) -> Option<OwnedSemaphorePermit> {
        let permit = self.slots.clone().try_acquire_owned().ok();
        if permit.is_none() {
            self.metrics.refused(self.transport);
            let mut last = self.last_warn.lock().unwrap_or_else(|p| p.into_inner());
            if last.is_none_or(|t| t.elapsed() >= Duration::from_secs(10)) {
                *last = Some(Instant::now());
                tracing::warn!(
                    transport = self.transport,
                    max = self.max,
                    "connection refused: max_connections are open"
                );
            }
        }
        permit
    }
}

/// A TCP listener that holds at most `max` connections, each closed after `idle` of silence.
pub struct BoundedListener {
    inner: TcpListener,
    gate: Gate,
    limits: ConnLimits,
}

impl BoundedListener {
    /// Wraps `inner`.
    pub fn new(inner: TcpListener, limits: ConnLimits) -> BoundedListener {
        BoundedListener {
            gate: Gate::new(&limits, "tcp"),
            inner,
            limits,
        }
    }
}

impl axum::serve::Listener for BoundedListener {
    type Io = IdleIo<TcpStream>;
    type Addr = std::net::SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            let (tcp, addr) = axum::serve::Listener::accept(&mut self.inner).await;
            let Some(permit) = self.gate.enter() else {
                drop(tcp);
                continue;
            };
            // Small responses (a playlist, an init segment, a 304) go out at once instead of
            // waiting on Nagle's algorithm for the ACK of the previous write.
            if let Err(e) = tcp.set_nodelay(true) {
                tracing::debug!(error = %e, "TCP_NODELAY could not be set");
            }
            let io = IdleIo::new(tcp, self.limits.idle, self.limits.metrics.clone(), permit);
            return (io, addr);
        }
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        self.inner.local_addr()
    }
}

/// A stream that fails with `TimedOut` once nothing was read or written for `idle`, and that
/// holds its listener slot until it is dropped.
pub struct IdleIo<T> {
    io: T,
    idle: Duration,
    deadline: Pin<Box<Sleep>>,
    metrics: ConnMetrics,
    _slot: OwnedSemaphorePermit,
}

impl<T> IdleIo<T> {
    fn new(io: T, idle: Duration, metrics: ConnMetrics, slot: OwnedSemaphorePermit) -> Self {
        IdleIo {
            io,
            idle,
            deadline: Box::pin(tokio::time::sleep(idle)),
            metrics,
            _slot: slot,
        }
    }

    fn active(&mut self) {
        self.deadline.as_mut().reset(Instant::now() + self.idle);
    }

    /// Called when the inner stream is pending: `TimedOut` once the deadline passed.
    fn expired(&mut self, cx: &mut Context<'_>) -> bool {
        if self.deadline.as_mut().poll(cx).is_ready() {
            self.metrics.idle_closed("tcp");
            // Fire once: a later poll sees a fresh deadline, not a second count.
            self.active();
            return true;
        }
        false
    }
}

fn timed_out() -> io::Error {
    io::Error::new(
        io::ErrorKind::TimedOut,
        "connection idle past idle_timeout_secs",
    )
}

impl<T: AsyncRead + Unpin> AsyncRead for IdleIo<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        match Pin::new(&mut this.io).poll_read(cx, buf) {
            Poll::Ready(r) => {
                if buf.filled().len() > before {
                    this.active();
                }
                Poll::Ready(r)
            }
            Poll::Pending if this.expired(cx) => Poll::Ready(Err(timed_out())),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl<T: AsyncWrite + Unpin> IdleIo<T> {
    /// One write attempt through `write`: a write of at least one byte is activity, and a
    /// write that stays pending past the deadline is `TimedOut` — a peer that stopped reading
    /// (or vanished) for `idle` is as gone as a silent one.
    fn poll_written(
        &mut self,
        cx: &mut Context<'_>,
        write: impl FnOnce(Pin<&mut T>, &mut Context<'_>) -> Poll<io::Result<usize>>,
    ) -> Poll<io::Result<usize>> {
        match write(Pin::new(&mut self.io), cx) {
            Poll::Ready(r) => {
                if matches!(r, Ok(n) if n > 0) {
                    self.active();
                }
                Poll::Ready(r)
            }
            Poll::Pending if self.expired(cx) => Poll::Ready(Err(timed_out())),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for IdleIo<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.get_mut()
            .poll_written(cx, |io, cx| io.poll_write(cx, buf))
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.get_mut()
            .poll_written(cx, |io, cx| io.poll_write_vectored(cx, bufs))
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}
