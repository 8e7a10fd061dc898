//! HTTP/3: a quinn endpoint whose requests are handed to the same axum `Router` that serves
//! HTTP/1.1 and HTTP/2. Request bodies stream in from the QUIC stream as they arrive (an upload
//! is never buffered whole), response bodies stream out frame by frame.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use bytes::{Buf, Bytes};
use futures::FutureExt;
use http_body_util::BodyExt;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::ServiceExt;

use super::Error;
use super::tls::{Identity, server_config};

/// Congestion controllers quinn offers.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Congestion {
    /// Model-based (bandwidth and RTT): keeps its rate through random loss. The default:
    /// on an emulated 60 ms / 2 % loss link it moved 20 MiB 11–30× faster than `cubic`
    /// (deploy/bench/upload.sh).
    #[default]
    Bbr,
    /// Loss-based, the Linux TCP default.
    Cubic,
    /// Loss-based, RFC 9002's reference controller.
    Newreno,
}

/// Transport settings tuned for uploads from phones: generous flow-control windows so one
/// stream can fill a high bandwidth-delay path, keep-alives so an idle upload is not dropped
/// by NAT boxes, an idle timeout that frees a dead client's state, and the chosen congestion
/// controller.
pub fn transport_config(congestion: Congestion) -> quinn::TransportConfig {
    let mut t = quinn::TransportConfig::default();
    match congestion {
        Congestion::Bbr => {
            t.congestion_controller_factory(Arc::new(quinn::congestion::BbrConfig::default()));
        }
        Congestion::Cubic => {
            t.congestion_controller_factory(Arc::new(quinn::congestion::CubicConfig::default()));
        }
        Congestion::Newreno => {
            t.congestion_controller_factory(Arc::new(quinn::congestion::NewRenoConfig::default()));
        }
    }
    t.max_idle_timeout(Some(
        quinn::IdleTimeout::try_from(Duration::from_secs(30))
            .unwrap_or(quinn::VarInt::from_u32(30_000).into()),
    ));
    t.keep_alive_interval(Some(Duration::from_secs(10)));
    t.stream_receive_window(quinn::VarInt::from_u32(8 * 1024 * 1024));
    t.receive_window(quinn::VarInt::from_u32(16 * 1024 * 1024));
    t.send_window(16 * 1024 * 1024);
    t.max_concurrent_bidi_streams(quinn::VarInt::from_u32(64));
    t
}

/// UDP socket buffer size asked for (the kernel caps it at `net.core.rmem_max`/`wmem_max`):
/// the default (~200 KiB) drops packets at a few hundred Mbit/s, which a congestion controller
/// then reads as network loss.
pub const UDP_BUFFER_BYTES: usize = 4 << 20;

/// A UDP socket bound to `addr` with large send and receive buffers.
pub fn udp_socket(addr: SocketAddr) -> std::io::Result<std::net::UdpSocket> {
    use socket2::{Domain, Protocol, Socket, Type};
    let domain = if addr.is_ipv6() {
        Domain::IPV6
    } else {
        Domain::IPV4
    };
    let socket = Socket::new(domain, Type::DGRAM, Some(Protocol::UDP))?;
    if addr.is_ipv6() {
        let _ = socket.set_only_v6(false);
    }
    let _ = socket.set_recv_buffer_size(UDP_BUFFER_BYTES);
    let _ = socket.set_send_buffer_size(UDP_BUFFER_BYTES);
    socket.bind(&addr.into())?;
    Ok(socket.into())
}

/// An endpoint on `socket` (server when `server` is given).
pub fn endpoint(
    socket: std::net::UdpSocket,
    server: Option<quinn::ServerConfig>,
) -> std::io::Result<quinn::Endpoint> {
    endpoint_with(socket, server, quinn::EndpointConfig::default())
}

fn endpoint_with(
    socket: std::net::UdpSocket,
    server: Option<quinn::ServerConfig>,
    config: quinn::EndpointConfig,
) -> std::io::Result<quinn::Endpoint> {
    quinn::Endpoint::new(config, server, socket, Arc::new(quinn::TokioRuntime))
}

/// The server's stateless-reset key, derived from its TLS private key so that it survives a
/// restart. A client whose connection died with the old process then gets a reset it can
/// verify at its next packet and reconnects at once; with a random key per process it would
/// wait out the 30 s idle timeout. Nodes sharing a certificate share the key, which is what
/// QUIC behind a load balancer needs.
struct ResetKey(Vec<u8>);

impl ResetKey {
    fn from_identity(identity: &Identity) -> ResetKey {
        use sha2::{Digest, Sha256};
        let mut h = Sha256::new();
        h.update(b"moments quic stateless reset v1\0");
        h.update(identity.key.secret_der());
        ResetKey(h.finalize().to_vec())
    }

    fn mac(&self, data: &[u8]) -> hmac::Hmac<sha2::Sha256> {
        use hmac::{KeyInit, Mac};
        let mut mac = <hmac::Hmac<sha2::Sha256> as KeyInit>::new_from_slice(&self.0)
            .unwrap_or_else(|_| unreachable!("HMAC takes a key of any length"));
        mac.update(data);
        mac
    }
}

impl quinn::crypto::HmacKey for ResetKey {
    fn sign(&self, data: &[u8], signature_out: &mut [u8]) {
        use hmac::Mac;
        let tag = self.mac(data).finalize().into_bytes();
        let n = signature_out.len().min(tag.len());
        signature_out[..n].copy_from_slice(&tag[..n]);
    }

    fn signature_len(&self) -> usize {
        32
    }

    fn verify(&self, data: &[u8], signature: &[u8]) -> Result<(), quinn::crypto::CryptoError> {
        use hmac::Mac;
        self.mac(data)
            .verify_slice(signature)
            .map_err(|_| quinn::crypto::CryptoError)
    }
}

/// Binds the QUIC endpoint (UDP), with a clear message when the port is taken.
pub fn bind(
    addr: SocketAddr,
    identity: &Identity,
    congestion: Congestion,
) -> Result<quinn::Endpoint, Error> {
    let tls = server_config(identity)?;
    let crypto = quinn::crypto::rustls::QuicServerConfig::try_from(tls)
        .map_err(|e| Error::Tls(format!("TLS config unusable for QUIC: {e}")))?;
    let mut cfg = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    cfg.transport_config(Arc::new(transport_config(congestion)));
    let reset = quinn::EndpointConfig::new(Arc::new(ResetKey::from_identity(identity)));
    udp_socket(addr)
        .and_then(|s| endpoint_with(s, Some(cfg), reset))
        .map_err(|source| {
            if source.kind() == std::io::ErrorKind::AddrInUse {
                Error::AddrInUse {
                    proto: "UDP",
                    addr,
                    var: "MOMENTS_QUIC_ADDR",
                }
            } else {
                Error::Bind {
                    proto: "UDP",
                    addr,
                    source,
                }
            }
        })
}

/// Serves `router` over HTTP/3 on `endpoint` until `shutdown`, then sends GOAWAY, waits up to
/// `grace` for in-flight requests and closes the endpoint.
pub async fn serve(
    endpoint: quinn::Endpoint,
    router: Router,
    shutdown: CancellationToken,
    grace: Duration,
    limits: super::ConnLimits,
) -> std::io::Result<()> {
    let tracker = TaskTracker::new();
    let gate = super::conn::Gate::new(&limits, "quic");
    loop {
        let incoming = tokio::select! {
            i = endpoint.accept() => i,
            _ = shutdown.cancelled() => break,
        };
        let Some(incoming) = incoming else { break };
        let Some(slot) = gate.enter() else {
            incoming.refuse();
            continue;
        };
        let router = router.clone();
        let shutdown = shutdown.clone();
        let limits = limits.clone();
        tracker.spawn(async move {
            let _slot = slot;
            if let Err(e) = connection(incoming, router, shutdown, &limits).await {
                tracing::debug!(error = %e, "HTTP/3 connection ended with an error");
            }
        });
    }
    endpoint.set_server_config(None);
    tracker.close();
    if tokio::time::timeout(grace, tracker.wait()).await.is_err() {
        tracing::warn!("HTTP/3: in-flight requests still open after {grace:?}; closing them");
    }
    endpoint.close(quinn::VarInt::from_u32(0), b"shutdown");
    let _ = tokio::time::timeout(Duration::from_secs(2), endpoint.wait_idle()).await;
    Ok(())
}

async fn connection(
    incoming: quinn::Incoming,
    router: Router,
    shutdown: CancellationToken,
    limits: &super::ConnLimits,
) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let conn = incoming.await?;
    let remote = conn.remote_address();
    let mut h3conn: h3::server::Connection<h3_quinn::Connection, Bytes> = h3::server::builder()
        .build(h3_quinn::Connection::new(conn))
        .await?;
    let requests = TaskTracker::new();
    // No request open for `limits.idle`: the connection is an idle keep-alive; close it.
    let idle = tokio::time::sleep(limits.idle);
    tokio::pin!(idle);
    loop {
        tokio::select! {
            () = &mut idle => {
                if requests.is_empty() {
                    limits.metrics.idle_closed("quic");
                    let _ = h3conn.shutdown(0).await;
                    break;
                }
                idle.as_mut().reset(tokio::time::Instant::now() + limits.idle);
            }
            accepted = h3conn.accept() => match accepted {
                Ok(Some(resolver)) => {
                    idle.as_mut().reset(tokio::time::Instant::now() + limits.idle);
                    let router = router.clone();
                    requests.spawn(async move {
                        match resolver.resolve_request().await {
                            Ok((req, stream)) => {
                                if let Err(e) = request(req, stream, router).await {
                                    tracing::debug!(%remote, error = %e, "HTTP/3 request failed");
                                }
                            }
                            Err(e) => tracing::debug!(%remote, error = %e, "bad HTTP/3 request"),
                        }
                    });
                }
                Ok(None) => break,
                Err(e) => {
                    if !e.is_h3_no_error() {
                        tracing::debug!(%remote, error = %e, "HTTP/3 connection error");
                    }
                    break;
                }
            },
            _ = shutdown.cancelled() => {
                // GOAWAY: no new requests; the ones already accepted run to the end.
                let _ = h3conn.shutdown(0).await;
                break;
            }
        }
    }
    requests.close();
    requests.wait().await;
    Ok(())
}

type Stream = h3::server::RequestStream<h3_quinn::BidiStream<Bytes>, Bytes>;

/// Lets a handler send informational (1xx) responses before its final one. HTTP/3 requests
/// carry it as a request extension; HTTP/1.1 and HTTP/2 requests do not, because hyper's
/// server has no way to send them (hyperium/hyper#4114 is still open).
#[derive(Clone, Debug)]
pub struct Interim(tokio::sync::mpsc::UnboundedSender<http::Response<()>>);

impl Interim {
    /// Queues an informational response (ignored unless its status is 1xx, or once the
    /// final response has gone).
    pub fn send(&self, resp: http::Response<()>) {
        if resp.status().is_informational() {
            let _ = self.0.send(resp);
        }
    }
}

/// Request body chunks are gathered up to this size when the data is already there.
const COALESCE: usize = 256 * 1024;

async fn request(
    req: http::Request<()>,
    stream: Stream,
    router: Router,
) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let (mut send, recv) = stream.split();
    let body = futures::stream::try_unfold((recv, false), |(mut recv, ended)| async move {
        if ended {
            return Ok(None);
        }
        let abort = |e: h3::error::StreamError| {
            std::io::Error::new(std::io::ErrorKind::ConnectionAborted, e.to_string())
        };
        let Some(mut first) = recv.recv_data().await.map_err(abort)? else {
            return Ok(None);
        };
        // QUIC hands over one packet's payload at a time; gather what has already arrived
        // (without waiting) so the handler sees large chunks, not ~1.4 KB ones.
        let mut buf = bytes::BytesMut::with_capacity(COALESCE);
        buf.extend_from_slice(&first.copy_to_bytes(first.remaining()));
        let mut ended = false;
        while buf.len() < COALESCE {
            match recv.recv_data().now_or_never() {
                Some(Ok(Some(mut more))) => {
                    buf.extend_from_slice(&more.copy_to_bytes(more.remaining()))
                }
                Some(Ok(None)) => {
                    ended = true;
                    break;
                }
                Some(Err(e)) => return Err(abort(e)),
                None => break,
            }
        }
        Ok(Some((buf.freeze(), (recv, ended))))
    });
    let (mut parts, ()) = req.into_parts();
    parts.version = http::Version::HTTP_3;
    let (interim, mut interims) = tokio::sync::mpsc::unbounded_channel();
    parts.extensions.insert(Interim(interim));
    let req = http::Request::from_parts(parts, Body::from_stream(body));

    let handler = router.oneshot(req);
    tokio::pin!(handler);
    let resp = loop {
        tokio::select! {
            resp = &mut handler => break resp?,
            Some(info) = interims.recv() => send.send_response(info).await?,
        }
    };
    let (mut parts, mut body) = resp.into_parts();
    // Connection-specific headers are forbidden in HTTP/3 (RFC 9114 §4.2).
    for h in [
        http::header::CONNECTION,
        http::header::TRANSFER_ENCODING,
        http::header::UPGRADE,
        http::HeaderName::from_static("keep-alive"),
        http::HeaderName::from_static("proxy-connection"),
    ] {
        parts.headers.remove(h);
    }
    send.send_response(http::Response::from_parts(parts, ()))
        .await?;
    while let Some(frame) = body.frame().await {
        let frame = frame?;
        match frame.into_data() {
            Ok(data) => {
                if !data.is_empty() {
                    send.send_data(data).await?;
                }
            }
            Err(frame) => {
                if let Ok(trailers) = frame.into_trailers() {
                    send.send_trailers(trailers).await?;
                }
            }
        }
    }
    send.finish().await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use quinn::crypto::HmacKey;

    #[test]
    fn the_reset_key_survives_a_restart_and_differs_between_certificates() {
        let dir = tempfile::tempdir().expect("tempdir");
        let first = crate::server::tls::ensure_self_signed(dir.path()).expect("identity");
        let again = crate::server::tls::ensure_self_signed(dir.path()).expect("identity");
        let other_dir = tempfile::tempdir().expect("tempdir");
        let other = crate::server::tls::ensure_self_signed(other_dir.path()).expect("identity");
        let (a, b, c) = (
            ResetKey::from_identity(&first),
            ResetKey::from_identity(&again),
            ResetKey::from_identity(&other),
        );
        let mut token = [0u8; 32];
        a.sign(b"connection id", &mut token);
        assert!(
            b.verify(b"connection id", &token).is_ok(),
            "the restarted process accepts it"
        );
        assert!(c.verify(b"connection id", &token).is_err());
        assert!(b.verify(b"another id", &token).is_err());
    }
}
