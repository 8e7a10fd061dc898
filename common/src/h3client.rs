//! A small HTTP/3 client over quinn + h3: connect once, send many requests over the same QUIC
//! connection. Used by `moments upload` and by tests; trust is a pinned certificate or a CA
//! file (see [`crate::server::tls::Trust`]) — never "accept anything".

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::{Buf, Bytes, BytesMut};

use crate::server::tls::{Trust, client_config};

/// Client errors.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// TLS configuration problem (bad fingerprint, unreadable CA file).
    #[error(transparent)]
    Tls(#[from] crate::server::Error),
    /// The QUIC connection could not be set up or broke.
    #[error("QUIC connection to {addr} failed: {reason}")]
    Connect {
        /// Server address.
        addr: SocketAddr,
        /// Why.
        reason: String,
    },
    /// An HTTP/3 stream error.
    #[error("HTTP/3 request failed: {0}")]
    Request(String),
    /// The response body exceeded the caller's limit.
    #[error("response body is larger than {0} bytes")]
    TooLarge(usize),
}

/// An open HTTP/3 connection.
pub struct Client {
    send: h3::client::SendRequest<h3_quinn::OpenStreams, Bytes>,
    quic: quinn::Connection,
    endpoint: quinn::Endpoint,
    driver: tokio::task::JoinHandle<()>,
    /// The `host:port` put in request URIs.
    pub authority: String,
}

impl Drop for Client {
    fn drop(&mut self) {
        self.driver.abort();
        self.endpoint.close(quinn::VarInt::from_u32(0), b"done");
    }
}

/// A response with its whole body.
#[derive(Debug)]
pub struct Response {
    /// Status and headers.
    pub head: http::Response<()>,
    /// Body bytes.
    pub body: Bytes,
}

impl Client {
    /// Connects to `addr`, presenting `server_name` for SNI.
    pub async fn connect(
        addr: SocketAddr,
        server_name: &str,
        trust: &Trust,
    ) -> Result<Client, Error> {
        Self::connect_with(addr, server_name, trust, Default::default()).await
    }

    /// As [`Client::connect`] with a chosen congestion controller (the client is the sender of
    /// an upload, so its controller is the one that matters).
    pub async fn connect_with(
        addr: SocketAddr,
        server_name: &str,
        trust: &Trust,
        congestion: crate::server::h3::Congestion,
    ) -> Result<Client, Error> {
        let tls = client_config(trust)?;
        let crypto =
            quinn::crypto::rustls::QuicClientConfig::try_from(tls).map_err(|e| Error::Connect {
                addr,
                reason: e.to_string(),
            })?;
        let mut cfg = quinn::ClientConfig::new(Arc::new(crypto));
        cfg.transport_config(Arc::new(crate::server::h3::transport_config(congestion)));
        let bind: SocketAddr = if addr.is_ipv6() {
            "[::]:0".parse().unwrap_or(SocketAddr::from(([0u16; 8], 0)))
        } else {
            SocketAddr::from(([0, 0, 0, 0], 0))
        };
        let connect_err = |reason: String| Error::Connect { addr, reason };
        let mut endpoint = crate::server::h3::udp_socket(bind)
            .and_then(|s| crate::server::h3::endpoint(s, None))
            .map_err(|e| connect_err(e.to_string()))?;
        endpoint.set_default_client_config(cfg);
        let conn = endpoint
            .connect(addr, server_name)
            .map_err(|e| connect_err(e.to_string()))?
            .await
            .map_err(|e| connect_err(e.to_string()))?;
        let quic = conn.clone();
        let (mut driver, send) = h3::client::new(h3_quinn::Connection::new(conn))
            .await
            .map_err(|e| connect_err(e.to_string()))?;
        let driver = tokio::spawn(async move {
            let _ = futures::future::poll_fn(|cx| driver.poll_close(cx)).await;
        });
        Ok(Client {
            send,
            quic,
            endpoint,
            driver,
            authority: addr.to_string(),
        })
    }

    /// Sends one request with an in-memory body and reads the whole response (up to
    /// `max_body` bytes).
    pub async fn send(
        &mut self,
        mut req: http::Request<()>,
        body: Bytes,
        max_body: usize,
    ) -> Result<Response, Error> {
        if req.uri().authority().is_none() {
            let uri = format!("https://{}{}", self.authority, req.uri());
            *req.uri_mut() = uri
                .parse()
                .map_err(|e: http::uri::InvalidUri| Error::Request(e.to_string()))?;
        }
        let rerr = |e: h3::error::StreamError| Error::Request(e.to_string());
        let mut stream = self.send.send_request(req).await.map_err(rerr)?;
        if !body.is_empty() {
            stream.send_data(body).await.map_err(rerr)?;
        }
        stream.finish().await.map_err(rerr)?;
        let head = stream.recv_response().await.map_err(rerr)?;
        let mut out = BytesMut::new();
        while let Some(mut chunk) = stream.recv_data().await.map_err(rerr)? {
            if out.len() + chunk.remaining() > max_body {
                return Err(Error::TooLarge(max_body));
            }
            out.extend_from_slice(&chunk.copy_to_bytes(chunk.remaining()));
        }
        Ok(Response {
            head,
            body: out.freeze(),
        })
    }

    /// Sends a request and returns as soon as the response head arrives; the body is read
    /// chunk by chunk (Server-Sent Events, large downloads).
    pub async fn open(&mut self, mut req: http::Request<()>) -> Result<Streaming, Error> {
        if req.uri().authority().is_none() {
            let uri = format!("https://{}{}", self.authority, req.uri());
            *req.uri_mut() = uri
                .parse()
                .map_err(|e: http::uri::InvalidUri| Error::Request(e.to_string()))?;
        }
        let rerr = |e: h3::error::StreamError| Error::Request(e.to_string());
        let mut stream = self.send.send_request(req).await.map_err(rerr)?;
        stream.finish().await.map_err(rerr)?;
        let head = stream.recv_response().await.map_err(rerr)?;
        Ok(Streaming { head, stream })
    }

    /// QUIC connection statistics (losses, congestion events, path MTU, RTT).
    pub fn stats(&self) -> quinn::ConnectionStats {
        self.quic.stats()
    }

    /// The request sender, for callers that stream bodies themselves.
    pub fn sender(&mut self) -> &mut h3::client::SendRequest<h3_quinn::OpenStreams, Bytes> {
        &mut self.send
    }
}

/// A response whose body is read as it arrives.
pub struct Streaming {
    /// Status and headers.
    pub head: http::Response<()>,
    stream: h3::client::RequestStream<h3_quinn::BidiStream<Bytes>, Bytes>,
}

impl Streaming {
    /// The next chunk of the body; `None` at its end.
    pub async fn chunk(&mut self) -> Result<Option<Bytes>, Error> {
        match self.stream.recv_data().await {
            Ok(Some(mut b)) => Ok(Some(b.copy_to_bytes(b.remaining()))),
            Ok(None) => Ok(None),
            Err(e) => Err(Error::Request(e.to_string())),
        }
    }
}
