//! `moments serve` as a newcomer runs it: the real binary in an empty directory.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::h3client::Client;
use common::server::tls::Trust;
use sha2::{Digest, Sha256};

const BIN: &str = env!("CARGO_BIN_EXE_moments");

struct Server {
    child: Child,
    http: String,
    quic: String,
    fingerprint: String,
    dir: tempfile::TempDir,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn ports() -> (String, String) {
    let http = format!("127.0.0.1:{}", common::testing::free_port());
    let udp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let quic = udp.local_addr().unwrap().to_string();
    drop(udp);
    (http, quic)
}

fn command(dir: &std::path::Path, http: &str, quic: &str) -> Command {
    let mut cmd = Command::new(BIN);
    cmd.current_dir(dir)
        .env_remove("RUST_LOG")
        .env("MOMENTS_HTTP_ADDR", http)
        .env("MOMENTS_QUIC_ADDR", quic);
    // the embedded defaults, whatever the test environment says
    for (k, _) in std::env::vars() {
        if k.starts_with("MOMENTS_") && !k.starts_with("MOMENTS_TEST_") {
            cmd.env_remove(k);
        }
    }
    cmd.env("MOMENTS_HTTP_ADDR", http)
        .env("MOMENTS_QUIC_ADDR", quic);
    cmd
}

fn start() -> Server {
    let dir = tempfile::tempdir().unwrap();
    let (http, quic) = ports();
    let mut child = command(dir.path(), &http, &quic)
        .arg("serve")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let mut lines = BufReader::new(stdout).lines();
    let mut fingerprint = None;
    for line in lines.by_ref() {
        let line = line.unwrap();
        if let Some(fp) = line.trim().strip_prefix("QUIC certificate SHA-256: ") {
            fingerprint = Some(fp.to_string());
            break;
        }
    }
    std::thread::spawn(move || for _ in lines {});
    let fingerprint = fingerprint.expect("serve prints the QUIC certificate fingerprint");
    Server {
        child,
        http,
        quic,
        fingerprint,
        dir,
    }
}

#[tokio::test]
async fn serve_in_an_empty_directory_answers_health_ready_metrics_and_quic() {
    let s = start();
    let base = format!("http://{}", s.http);

    let health: serde_json::Value = reqwest::get(format!("{base}/healthz"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(health["status"], "ok");

    let resp = reqwest::get(format!("{base}/readyz")).await.unwrap();
    assert_eq!(resp.status(), 200);
    let ready: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(ready["database"], "ok");
    assert_eq!(ready["storage"], "ok");

    // the embedded defaults were created under ./data
    for p in [
        "data/moments.db",
        "data/objects",
        "data/keys/ed25519.pem",
        "data/tls/cert.pem",
    ] {
        assert!(s.dir.path().join(p).exists(), "{p} missing");
    }

    // the printed fingerprint is the certificate's
    let pem = std::fs::read(s.dir.path().join("data/tls/cert.pem")).unwrap();
    let der = rustls_pem_first_cert(&pem);
    assert_eq!(hex::encode(Sha256::digest(&der)), s.fingerprint);

    // HTTP/3 answers the same routes, trusting the printed fingerprint
    let mut h3 = Client::connect(
        s.quic.parse().unwrap(),
        "localhost",
        &Trust::Pinned(s.fingerprint.clone()),
    )
    .await
    .unwrap();
    let resp = h3
        .send(
            http::Request::get("/readyz").body(()).unwrap(),
            Bytes::new(),
            1 << 16,
        )
        .await
        .unwrap();
    assert_eq!(resp.head.status(), 200);

    let metrics = reqwest::get(format!("{base}/metrics")).await.unwrap();
    assert!(
        metrics.headers()["content-type"]
            .to_str()
            .unwrap()
            .contains("openmetrics")
    );
    let text = metrics.text().await.unwrap();
    assert!(text.contains("moments_build_info{version=\""), "{text}");
    assert!(
        text.contains(
            r#"moments_http_requests_total{route="/readyz",method="GET",status="200"} 2"#
        ),
        "both transports are counted: {text}"
    );
    assert!(
        text.contains("moments_http_request_duration_seconds_bucket{"),
        "{text}"
    );
    assert!(text.trim_end().ends_with("# EOF"));
}

fn rustls_pem_first_cert(pem: &[u8]) -> Vec<u8> {
    use base64::Engine;
    let text = String::from_utf8_lossy(pem);
    let body: String = text
        .lines()
        .skip_while(|l| !l.starts_with("-----BEGIN CERTIFICATE"))
        .skip(1)
        .take_while(|l| !l.starts_with("-----END"))
        .collect();
    base64::engine::general_purpose::STANDARD
        .decode(body)
        .unwrap()
}

#[tokio::test]
async fn sigterm_stops_gracefully_with_exit_zero() {
    let mut s = start();
    assert!(
        reqwest::get(format!("http://{}/healthz", s.http))
            .await
            .unwrap()
            .status()
            .is_success()
    );
    let pid = s.child.id() as i32;
    // SAFETY-free: use the kill command rather than libc.
    Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        if let Some(status) = s.child.try_wait().unwrap() {
            assert!(status.success(), "exit status {status:?}");
            break;
        }
        assert!(Instant::now() < deadline, "serve did not stop on SIGTERM");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn port_in_use_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let http = taken.local_addr().unwrap().to_string();
    let (_, quic) = ports();
    let out = command(dir.path(), &http, &quic)
        .arg("serve")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&http) && err.contains("already in use"),
        "{err}"
    );
}

#[test]
fn unknown_config_key_and_bad_env_stop_start_up() {
    let dir = tempfile::tempdir().unwrap();
    let (http, quic) = ports();
    std::fs::write(dir.path().join("moments.toml"), "[http]\nport = 80\n").unwrap();
    let out = command(dir.path(), &http, &quic)
        .arg("serve")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("port"), "{err}");
    std::fs::remove_file(dir.path().join("moments.toml")).unwrap();

    let out = command(dir.path(), &http, &quic)
        .env("MOMENTS_DATABASE_URL", "mysql://nope")
        .arg("serve")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("unsupported database URL"));

    let out = command(dir.path(), "not-an-address", &quic)
        .arg("serve")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("MOMENTS_HTTP_ADDR"), "{err}");

    let out = command(dir.path(), &http, &quic)
        .env("MOMENTS_HTTP_ADR", "x")
        .arg("serve")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("MOMENTS_HTTP_ADR"));

    // a webhook secret of the wrong length, and a bus URL of another scheme, by name
    std::fs::write(
        dir.path().join("moments.toml"),
        "[[events.webhooks]]\nname = \"crm\"\nurl = \"https://crm.example/h\"\nsecrets = [\"whsec_c2hvcnQ=\"]\n",
    )
    .unwrap();
    let out = command(dir.path(), &http, &quic)
        .arg("serve")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("events.webhooks[0] (\"crm\"): secret 1: decodes to 5 bytes"),
        "{err}"
    );
    std::fs::remove_file(dir.path().join("moments.toml")).unwrap();
    let out = command(dir.path(), &http, &quic)
        .env("MOMENTS_EVENTS_URL", "amqp://127.0.0.1:5672")
        .arg("serve")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("MOMENTS_EVENTS_URL"), "{err}");
}

#[test]
fn token_command_mints_a_token_the_server_key_verifies() {
    let dir = tempfile::tempdir().unwrap();
    let (http, quic) = ports();
    let out = command(dir.path(), &http, &quic)
        .args(["token", "--user", "alice", "--ttl", "15m"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let token = String::from_utf8(out.stdout).unwrap().trim().to_string();
    let auth =
        common::auth::Auth::from_config(&Default::default(), &dir.path().join("data")).unwrap();
    let claims = auth.verify(&token).unwrap();
    assert_eq!(claims.sub, "alice");
    assert!(claims.exp - claims.iat <= 15 * 60);

    let out = command(dir.path(), &http, &quic)
        .args(["token", "--user", "alice", "--ttl", "forever"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("invalid duration"));
}

#[test]
fn every_subcommand_has_help() {
    for args in [
        vec!["--help"],
        vec!["serve", "--help"],
        vec!["token", "--help"],
    ] {
        let out = Command::new(BIN).args(&args).output().unwrap();
        assert!(out.status.success(), "{args:?}");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.contains("Usage"), "{args:?}: {text}");
    }
    let out = Command::new(BIN).arg("--help").output().unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).contains("MOMENTS_DATABASE_URL"));
}

#[tokio::test]
async fn readyz_reports_a_broken_store_with_503() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = moments::Config {
        data_dir: dir.path().join("data"),
        ..Default::default()
    };
    config.http.addr = "127.0.0.1:0".parse().unwrap();
    config.quic.addr = "127.0.0.1:0".parse().unwrap();
    let running = moments::app::start(config, moments::app::all_roles())
        .await
        .unwrap();
    let url = format!("http://{}/readyz", running.http_addr);
    assert_eq!(reqwest::get(&url).await.unwrap().status(), 200);

    // the object directory disappears and a file takes its place
    let objects = dir.path().join("data/objects");
    std::fs::remove_dir_all(&objects).unwrap();
    std::fs::write(&objects, b"not a directory").unwrap();
    let resp = reqwest::get(&url).await.unwrap();
    assert_eq!(resp.status(), 503);
    let body: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(body["database"], "ok");
    assert_ne!(body["storage"], "ok");
    running.stop().await.unwrap();
}

/// The scale-out topology on one machine: PostgreSQL for metadata, a real S3 server for objects.
#[tokio::test]
async fn serve_against_postgres_and_s3() {
    let Some(pg) = common::testing::fresh_pg().await else {
        return;
    };
    let s3 = common::testing::S3Server::start();
    s3.store("moments-it", "", 8 * 1024 * 1024).await; // creates the bucket
    let dir = tempfile::tempdir().unwrap();
    let (http, quic) = ports();
    let mut child = command(dir.path(), &http, &quic)
        .env("MOMENTS_DATABASE_URL", &pg.url)
        .env("MOMENTS_STORAGE", "s3://moments-it/prod")
        .env("MOMENTS_S3_ENDPOINT", &s3.endpoint)
        .env("AWS_ACCESS_KEY_ID", &s3.access_key)
        .env("AWS_SECRET_ACCESS_KEY", &s3.secret_key)
        .env("AWS_REGION", "us-east-1")
        .arg("serve")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let url = format!("http://{http}/readyz");
    let deadline = Instant::now() + Duration::from_secs(20);
    let body: serde_json::Value = loop {
        if let Ok(r) = reqwest::get(&url).await {
            break r.json().await.unwrap();
        }
        assert!(Instant::now() < deadline, "server did not come up");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(body["database"], "ok", "{body}");
    assert_eq!(body["storage"], "ok", "{body}");
    // the migrations ran on PostgreSQL
    let db = common::db::Db::connect(&pg.url, 1).await.unwrap();
    assert!(common::moment::get(&db, "none").await.unwrap().is_none());
    db.close().await;
}
