//! One router served over HTTP/1.1, HTTP/2 and HTTP/3: the same handlers answer on every
//! transport, request bodies stream, auth rejects bad tokens with 401 JSON, and shutdown lets
//! in-flight requests finish.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::FromRef;
use axum::routing::{get, post};
use bytes::Bytes;
use common::auth::{Auth, User};
use common::h3client::Client;
use common::server::tls::Trust;
use futures::StreamExt;
use tokio_util::sync::CancellationToken;

#[derive(Clone)]
struct AppState {
    auth: Arc<Auth>,
    limiter: Arc<common::limit::Limiter>,
}

impl FromRef<AppState> for Arc<common::limit::Limiter> {
    fn from_ref(s: &AppState) -> Self {
        s.limiter.clone()
    }
}

impl FromRef<AppState> for Arc<Auth> {
    fn from_ref(s: &AppState) -> Self {
        s.auth.clone()
    }
}

async fn whoami(User(user): User) -> String {
    format!("hello {user}")
}

async fn slow() -> &'static str {
    tokio::time::sleep(Duration::from_millis(700)).await;
    "finished"
}

/// Counts the body without buffering it.
async fn count(body: Body) -> String {
    let mut stream = body.into_data_stream();
    let mut n = 0usize;
    while let Some(chunk) = stream.next().await {
        match chunk {
            Ok(c) => n += c.len(),
            Err(e) => return format!("error {e}"),
        }
    }
    n.to_string()
}

struct Harness {
    http: std::net::SocketAddr,
    quic: std::net::SocketAddr,
    fingerprint: String,
    token: String,
    shutdown: CancellationToken,
    tasks: Vec<tokio::task::JoinHandle<std::io::Result<()>>>,
    _dir: tempfile::TempDir,
}

async fn start() -> Harness {
    start_with(Default::default()).await
}

async fn start_with(limits: common::server::ConnLimits) -> Harness {
    let dir = tempfile::tempdir().unwrap();
    let (private, _) = common::auth::ensure_dev_key(dir.path()).unwrap();
    let auth = Arc::new(Auth::from_config(&Default::default(), dir.path()).unwrap());
    let token = common::auth::mint(&private, "alice", Duration::from_secs(600)).unwrap();
    let router = Router::new()
        .route("/whoami", get(whoami))
        .route("/slow", get(slow))
        .route("/count", post(count))
        .with_state(AppState {
            auth,
            limiter: Arc::new(
                common::limit::Limiter::new(
                    &common::limit::Config::off(),
                    &common::metrics::Metrics::new("test"),
                )
                .unwrap(),
            ),
        });
    let identity = common::server::tls::ensure_self_signed(dir.path()).unwrap();
    let listener = common::server::bind_http("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let endpoint = common::server::h3::bind(
        "127.0.0.1:0".parse().unwrap(),
        &identity,
        Default::default(),
    )
    .unwrap();
    let (http, quic) = (
        listener.local_addr().unwrap(),
        endpoint.local_addr().unwrap(),
    );
    let shutdown = CancellationToken::new();
    let grace = Duration::from_secs(5);
    let tasks = vec![
        tokio::spawn(common::server::serve_http(
            listener,
            router.clone(),
            shutdown.clone(),
            grace,
            limits.clone(),
        )),
        tokio::spawn(common::server::h3::serve(
            endpoint,
            router,
            shutdown.clone(),
            grace,
            limits.clone(),
        )),
    ];
    Harness {
        http,
        quic,
        fingerprint: identity.fingerprint(),
        token,
        shutdown,
        tasks,
        _dir: dir,
    }
}

fn get_req(path: &str, auth: Option<&str>) -> http::Request<()> {
    let mut b = http::Request::get(path);
    if let Some(a) = auth {
        b = b.header("authorization", a);
    }
    b.body(()).unwrap()
}

#[tokio::test]
async fn same_handlers_on_http1_http2_and_http3() {
    let h = start().await;
    let bearer = format!("Bearer {}", h.token);

    // HTTP/1.1 and HTTP/2 (prior knowledge)
    for (client, expected) in [
        (
            reqwest::Client::builder().http1_only().build().unwrap(),
            reqwest::Version::HTTP_11,
        ),
        (
            reqwest::Client::builder()
                .http2_prior_knowledge()
                .build()
                .unwrap(),
            reqwest::Version::HTTP_2,
        ),
    ] {
        let resp = client
            .get(format!("http://{}/whoami", h.http))
            .header("authorization", &bearer)
            .send()
            .await
            .unwrap();
        let version = resp.version();
        assert_eq!(version, expected);
        assert_eq!(resp.status(), 200);
        assert_eq!(resp.text().await.unwrap(), "hello alice", "{version:?}");
    }

    // HTTP/3, certificate pinned by fingerprint
    let mut h3 = Client::connect(h.quic, "localhost", &Trust::Pinned(h.fingerprint.clone()))
        .await
        .unwrap();
    let resp = h3
        .send(get_req("/whoami", Some(&bearer)), Bytes::new(), 1 << 20)
        .await
        .unwrap();
    assert_eq!(resp.head.status(), 200);
    assert_eq!(&resp.body[..], b"hello alice");

    // a 3 MiB body streams through the HTTP/3 adapter intact
    let body = Bytes::from(vec![7u8; 3 * 1024 * 1024 + 5]);
    let req = http::Request::post("/count").body(()).unwrap();
    let resp = h3.send(req, body, 1 << 20).await.unwrap();
    assert_eq!(
        String::from_utf8_lossy(&resp.body),
        (3 * 1024 * 1024 + 5).to_string()
    );
}

#[tokio::test]
async fn wrong_pinned_certificate_is_refused() {
    let h = start().await;
    let wrong = "00".repeat(32);
    assert!(
        Client::connect(h.quic, "localhost", &Trust::Pinned(wrong))
            .await
            .is_err()
    );
    assert!(
        Client::connect(h.quic, "localhost", &Trust::Pinned("xyz".into()))
            .await
            .is_err()
    );
}

#[tokio::test]
async fn bad_tokens_get_401_json_on_every_transport() {
    let h = start().await;
    let client = reqwest::Client::new();
    let long = format!("Bearer {}", "a".repeat(20_000));
    let cases: Vec<Option<String>> = vec![
        None,
        Some("Bearer".into()),
        Some("Basic YWxpY2U6cHc=".into()),
        Some("Bearer not.a.token".into()),
        Some(long.clone()),
    ];
    for case in &cases {
        let mut req = client.get(format!("http://{}/whoami", h.http));
        if let Some(v) = case {
            req = req.header("authorization", v);
        }
        let resp = req.send().await.unwrap();
        let status = resp.status();
        let body: serde_json::Value = resp.json().await.unwrap();
        assert_eq!(status, 401, "{case:?}");
        assert_eq!(body["code"], "unauthorized");
        assert!(body["error"].as_str().unwrap().len() > 5);
    }
    let mut h3 = Client::connect(h.quic, "localhost", &Trust::Pinned(h.fingerprint.clone()))
        .await
        .unwrap();
    for case in [None, Some("Bearer not.a.token")] {
        let resp = h3
            .send(get_req("/whoami", case), Bytes::new(), 1 << 20)
            .await
            .unwrap();
        assert_eq!(resp.head.status(), 401);
        let body: serde_json::Value = serde_json::from_slice(&resp.body).unwrap();
        assert_eq!(body["code"], "unauthorized");
    }
}

#[tokio::test]
async fn shutdown_lets_in_flight_requests_finish() {
    let h = start().await;
    let url = format!("http://{}/slow", h.http);
    let http_req = tokio::spawn(async move { reqwest::get(url).await?.text().await });
    let mut h3 = Client::connect(h.quic, "localhost", &Trust::Pinned(h.fingerprint.clone()))
        .await
        .unwrap();
    let h3_req =
        tokio::spawn(async move { h3.send(get_req("/slow", None), Bytes::new(), 1024).await });
    tokio::time::sleep(Duration::from_millis(200)).await;
    h.shutdown.cancel();
    assert_eq!(http_req.await.unwrap().unwrap(), "finished");
    let resp = h3_req.await.unwrap().unwrap();
    assert_eq!(&resp.body[..], b"finished");
    for t in h.tasks {
        tokio::time::timeout(Duration::from_secs(10), t)
            .await
            .expect("server stops after in-flight requests")
            .unwrap()
            .unwrap();
    }
    // and nothing is accepted any more
    assert!(
        reqwest::get(format!("http://{}/slow", h.http))
            .await
            .is_err()
    );
}

#[tokio::test]
async fn port_in_use_is_named() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap();
    let err = common::server::bind_http(addr)
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains(&addr.to_string()) && err.contains("already in use"),
        "{err}"
    );
    let dir = tempfile::tempdir().unwrap();
    let identity = common::server::tls::ensure_self_signed(dir.path()).unwrap();
    let udp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let uaddr = udp.local_addr().unwrap();
    let err = common::server::h3::bind(uaddr, &identity, Default::default())
        .unwrap_err()
        .to_string();
    assert!(
        err.contains(&uaddr.to_string()) && err.contains("MOMENTS_QUIC_ADDR"),
        "{err}"
    );
}

#[tokio::test]
async fn self_signed_certificate_is_reused_and_key_private() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let a = common::server::tls::ensure_self_signed(dir.path()).unwrap();
    let b = common::server::tls::ensure_self_signed(dir.path()).unwrap();
    assert_eq!(a.fingerprint(), b.fingerprint());
    assert_eq!(a.fingerprint().len(), 64);
    let (_, key) = common::server::tls::dev_paths(dir.path());
    assert_eq!(
        std::fs::metadata(key).unwrap().permissions().mode() & 0o777,
        0o600
    );
}

/// Sends one keep-alive GET /whoami on `tcp` and reads its whole answer.
async fn raw_whoami(tcp: &mut tokio::net::TcpStream, token: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let req = format!("GET /whoami HTTP/1.1\r\nhost: t\r\nauthorization: Bearer {token}\r\n\r\n");
    tcp.write_all(req.as_bytes()).await.unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while !got.ends_with(b"hello alice") {
        let n = tokio::time::timeout(Duration::from_secs(5), tcp.read(&mut buf))
            .await
            .expect("answer in time")
            .unwrap();
        assert!(n > 0, "closed early: {}", String::from_utf8_lossy(&got));
        got.extend_from_slice(&buf[..n]);
    }
    String::from_utf8_lossy(&got).into_owned()
}

/// Waits until the server closes `tcp` (EOF or reset) and returns how long that took.
async fn closed_within(tcp: &mut tokio::net::TcpStream, limit: Duration) -> Duration {
    use tokio::io::AsyncReadExt;
    let t0 = std::time::Instant::now();
    let mut buf = [0u8; 256];
    match tokio::time::timeout(limit, tcp.read(&mut buf)).await {
        Err(_) => panic!("still open after {limit:?}"),
        Ok(Ok(0)) | Ok(Err(_)) => t0.elapsed(),
        Ok(Ok(n)) => panic!("unexpected bytes: {:?}", String::from_utf8_lossy(&buf[..n])),
    }
}

#[tokio::test]
async fn connections_are_bounded_in_count_and_idle_time() {
    let metrics = common::metrics::Metrics::new("test");
    let limits = common::server::ConnLimits {
        max: 2,
        idle: Duration::from_millis(800),
        metrics: common::server::ConnMetrics::registered(&metrics),
    };
    let h = start_with(limits).await;
    let connect = || tokio::net::TcpStream::connect(h.http);

    // two keep-alive connections are served; a third is closed at accept without an answer
    let mut a = connect().await.unwrap();
    let mut b = connect().await.unwrap();
    assert!(
        raw_whoami(&mut a, &h.token)
            .await
            .starts_with("HTTP/1.1 200")
    );
    assert!(
        raw_whoami(&mut b, &h.token)
            .await
            .starts_with("HTTP/1.1 200")
    );
    let mut c = connect().await.unwrap();
    closed_within(&mut c, Duration::from_secs(3)).await;

    // the idle keep-alives are closed after `idle`, not before, and their slots come back
    let waited = closed_within(&mut a, Duration::from_secs(5)).await;
    closed_within(&mut b, Duration::from_secs(5)).await;
    assert!(
        waited >= Duration::from_millis(300),
        "closed after {waited:?}"
    );
    let mut d = connect().await.unwrap();
    assert!(
        raw_whoami(&mut d, &h.token)
            .await
            .starts_with("HTTP/1.1 200")
    );

    // a half-open peer that sent half a request and went silent is closed too
    use tokio::io::AsyncWriteExt;
    let mut e = connect().await.unwrap();
    e.write_all(b"GET /whoami HTTP/1.1\r\nhost:").await.unwrap();
    closed_within(&mut e, Duration::from_secs(5)).await;

    // HTTP/3: a connection with no request open for `idle` is closed by the server
    let mut h3 = Client::connect(h.quic, "localhost", &Trust::Pinned(h.fingerprint.clone()))
        .await
        .unwrap();
    let bearer = format!("Bearer {}", h.token);
    let resp = h3
        .send(get_req("/whoami", Some(&bearer)), Bytes::new(), 1 << 20)
        .await
        .unwrap();
    assert_eq!(resp.head.status(), 200);
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let again = h3
        .send(get_req("/whoami", Some(&bearer)), Bytes::new(), 1 << 20)
        .await;
    assert!(again.is_err(), "the idle HTTP/3 connection still answered");

    let text = metrics.encode();
    assert!(
        text.contains(r#"moments_connections_refused_total{transport="tcp"} 1"#),
        "{text}"
    );
    let idle_tcp = text
        .lines()
        .find(|l| l.starts_with(r#"moments_connections_idle_closed_total{transport="tcp"}"#))
        .unwrap_or_else(|| panic!("{text}"));
    assert!(idle_tcp.ends_with(" 4"), "a, b, d and e: {idle_tcp}");
    assert!(
        text.contains(r#"moments_connections_idle_closed_total{transport="quic"} 1"#),
        "{text}"
    );
}
