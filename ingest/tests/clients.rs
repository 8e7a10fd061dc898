//! Real clients against the real server, on a local store and on a real S3 server: tuspy (the
//! tus project's Python client) over HTTP/1.1 through a connection that is cut mid-PATCH,
//! aioquic (an independent HTTP/3 stack), and our own client over HTTP/3 — interrupted and
//! re-run, and across a server restart. In every case the stored object's SHA-256 equals the
//! source's.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly

mod support;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use common::server::tls::Trust;
use ingest::client::{Options, Protocol};
use support::{Backend, Server};

fn python() -> PathBuf {
    let venv = PathBuf::from(std::env::var("HOME").unwrap()).join(".cache/moments/venv/bin/python");
    assert!(
        venv.exists(),
        "run deploy/install-test-tools.sh (Python test clients)"
    );
    venv
}

fn interop(script: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/interop")
        .join(script)
}

fn backends() -> Vec<Backend> {
    vec![
        Backend::Local,
        Backend::S3(Arc::new(common::testing::S3Server::start())),
    ]
}

/// A TCP proxy that forwards to `target` and cuts the first connection that carries more than
/// `cut_after` client bytes.
async fn cutting_proxy(
    target: std::net::SocketAddr,
    cut_after: u64,
) -> (std::net::SocketAddr, Arc<AtomicBool>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let cut = Arc::new(AtomicBool::new(false));
    let cut2 = cut.clone();
    tokio::spawn(async move {
        while let Ok((mut client, _)) = listener.accept().await {
            let cut = cut2.clone();
            tokio::spawn(async move {
                let Ok(mut server) = tokio::net::TcpStream::connect(target).await else {
                    return;
                };
                let (mut cr, mut cw) = client.split();
                let (mut sr, mut sw) = server.split();
                let sent = AtomicU64::new(0);
                let up = async {
                    let mut buf = vec![0u8; 64 * 1024];
                    loop {
                        let n = match tokio::io::AsyncReadExt::read(&mut cr, &mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => n,
                        };
                        let total = sent.fetch_add(n as u64, Ordering::SeqCst) + n as u64;
                        if total > cut_after && !cut.swap(true, Ordering::SeqCst) {
                            return; // drop both directions mid-request
                        }
                        if tokio::io::AsyncWriteExt::write_all(&mut sw, &buf[..n])
                            .await
                            .is_err()
                        {
                            return;
                        }
                    }
                };
                let down = tokio::io::copy(&mut sr, &mut cw);
                tokio::select! {
                    _ = up => {}
                    _ = down => {}
                }
            });
        }
    });
    (addr, cut)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tuspy_over_http1_resumes_after_the_connection_is_cut_mid_patch() {
    for backend in backends() {
        let dir = tempfile::tempdir().unwrap();
        let s = Server::start(dir.path(), &backend).await;
        let data = support::data(9 << 20, 11);
        let file = dir.path().join("moment.mp4");
        std::fs::write(&file, &data).unwrap();
        let (proxy, cut) = cutting_proxy(s.http, 2 << 20).await; // mid-PATCH (chunks are 4 MiB)
        let token = s.token("alice");
        let out = tokio::process::Command::new(python())
            .arg(interop("tuspy_upload.py"))
            .arg(format!("http://{proxy}/files"))
            .arg(&token)
            .arg(&file)
            .arg((4 << 20).to_string())
            .output()
            .await
            .unwrap();
        assert!(
            out.status.success(),
            "tuspy: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            cut.load(Ordering::SeqCst),
            "the proxy never cut the connection"
        );
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert!(v["resumes"].as_u64().unwrap() >= 1, "{v}");
        let url = v["url"].as_str().unwrap();
        assert_eq!(
            support::stored_sha256(&s, url).await,
            support::sha256(&data)
        );
        let id = url.rsplit('/').next().unwrap();
        let up = ingest::record::get(&s.db, id).await.unwrap().unwrap();
        assert!(up.complete);
        s.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aioquic_interoperates_over_http3() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(dir.path(), &Backend::Local).await;
    let data = support::data(3 << 20, 5);
    let file = dir.path().join("moment.mp4");
    std::fs::write(&file, &data).unwrap();
    let out = tokio::process::Command::new(python())
        .arg(interop("aioquic_tus.py"))
        .arg("127.0.0.1")
        .arg(s.quic.port().to_string())
        .arg(&s.fingerprint)
        .arg(s.token("alice"))
        .arg(&file)
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "aioquic: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["offset"].as_u64().unwrap(), data.len() as u64);
    assert!(v["moment"].as_str().unwrap().len() == 26);
    assert_eq!(
        support::stored_sha256(&s, v["location"].as_str().unwrap()).await,
        support::sha256(&data)
    );
    // a wrong pin is refused by the script, not silently accepted
    let out = tokio::process::Command::new(python())
        .arg(interop("aioquic_tus.py"))
        .arg("127.0.0.1")
        .arg(s.quic.port().to_string())
        .arg("00".repeat(32))
        .arg(s.token("alice"))
        .arg(&file)
        .output()
        .await
        .unwrap();
    assert!(!out.status.success());
    s.stop().await;
}

fn options(s: &Server, dir: &Path, chunk: usize) -> Options {
    Options {
        server: format!("https://localhost:{}", s.quic.port()),
        protocol: Protocol::Http3,
        token: s.token("alice"),
        trust: Some(Trust::Pinned(s.fingerprint.clone())),
        chunking: ingest::client::Chunking::Fixed(chunk),
        rate: None,
        state_file: dir.join("client-state.json"),
        max_retries: 30,
        progress: false,
        congestion: Default::default(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn our_client_over_http3_resumes_when_re_run_after_being_killed() {
    for backend in backends() {
        let dir = tempfile::tempdir().unwrap();
        let s = Server::start(dir.path(), &backend).await;
        let data = support::data(14 << 20, 21);
        let file = dir.path().join("moment.mp4");
        std::fs::write(&file, &data).unwrap();
        let opts = options(&s, dir.path(), 1 << 20);
        // run until a few MiB are in, then kill the client mid-transfer
        let (f2, o2) = (file.clone(), opts.clone());
        let run = tokio::spawn(async move { ingest::client::upload(&f2, &o2).await });
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        loop {
            let done: Option<i64> = sqlx::query_scalar("SELECT MAX(received) FROM uploads")
                .fetch_one(s.db.pool())
                .await
                .unwrap();
            if done.unwrap_or(0) >= 3 << 20 {
                break;
            }
            assert!(std::time::Instant::now() < deadline, "no progress");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        run.abort();
        let _ = run.await;
        // re-running the same command resumes from the server's offset
        let done = ingest::client::upload(&file, &opts).await.unwrap();
        assert!(
            done.resumed_from >= 3 << 20,
            "resumed from {}",
            done.resumed_from
        );
        assert_eq!(done.moment.len(), 26);
        assert_eq!(
            support::stored_sha256(&s, &done.url).await,
            support::sha256(&data)
        );
        // the state file forgets a finished upload
        let state = std::fs::read_to_string(dir.path().join("client-state.json")).unwrap();
        assert!(!state.contains(&done.url), "{state}");
        s.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upload_survives_a_server_restart_between_chunks() {
    for backend in backends() {
        let dir = tempfile::tempdir().unwrap();
        let s = Server::start(dir.path(), &backend).await;
        let (http, quic) = (s.http, s.quic);
        let data = support::data(12 << 20, 33);
        let file = dir.path().join("moment.mp4");
        std::fs::write(&file, &data).unwrap();
        let opts = options(&s, dir.path(), 1 << 20);
        let (f2, o2) = (file.clone(), opts.clone());
        let run = tokio::spawn(async move { ingest::client::upload(&f2, &o2).await });
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        loop {
            let done: Option<i64> = sqlx::query_scalar("SELECT MAX(received) FROM uploads")
                .fetch_one(s.db.pool())
                .await
                .unwrap();
            if done.unwrap_or(0) >= 2 << 20 {
                break;
            }
            assert!(std::time::Instant::now() < deadline, "no progress");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        s.stop().await;
        tokio::time::sleep(Duration::from_millis(700)).await;
        let s = Server::start_at(dir.path(), &backend, http, quic, support::config()).await;
        let done = tokio::time::timeout(Duration::from_secs(120), run)
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!(
            support::stored_sha256(&s, &done.url).await,
            support::sha256(&data)
        );
        let id = done.url.rsplit('/').next().unwrap();
        assert!(
            ingest::record::get(&s.db, id)
                .await
                .unwrap()
                .unwrap()
                .complete
        );
        s.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn our_client_over_http1_and_a_refused_file() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(dir.path(), &Backend::Local).await;
    let data = support::data(2 << 20, 9);
    let file = dir.path().join("moment.mov");
    std::fs::write(&file, &data).unwrap();
    let mut opts = options(&s, dir.path(), 512 << 10);
    opts.server = s.base();
    opts.protocol = Protocol::Http1;
    opts.trust = None;
    let done = ingest::client::upload(&file, &opts).await.unwrap();
    assert_eq!(
        support::stored_sha256(&s, &done.url).await,
        support::sha256(&data)
    );
    // a file over the server's limit is refused with the server's reason, not retried forever
    let big = dir.path().join("huge.mp4");
    let f = std::fs::File::create(&big).unwrap();
    f.set_len(65 << 20).unwrap();
    let err = ingest::client::upload(&big, &opts)
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("413") && err.contains("limit"), "{err}");
    s.stop().await;
}
