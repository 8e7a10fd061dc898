//! The tus protocol over real HTTP, on SQLite and on PostgreSQL: every bad input gets its
//! status and reason, nothing acknowledged is lost, and a completed upload queues its moment.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly

mod support;

use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use common::testing::PgTestDb;
use reqwest::{Client, Method, StatusCode};
use sha2::Digest;
use support::{Backend, Server};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

struct Tus {
    http: Client,
    base: String,
    token: String,
}

impl Tus {
    fn new(s: &Server, user: &str) -> Tus {
        Tus {
            http: Client::new(),
            base: s.base(),
            token: s.token(user),
        }
    }

    fn req(&self, m: Method, path: &str) -> reqwest::RequestBuilder {
        self.http
            .request(m, format!("{}{path}", self.base))
            .bearer_auth(&self.token)
            .header("tus-resumable", "1.0.0")
    }

    async fn create(&self, len: u64) -> String {
        let r = self
            .req(Method::POST, "/files")
            .header("upload-length", len.to_string())
            .header(
                "upload-metadata",
                format!(
                    "filename {},filetype {}",
                    B64.encode("a.mp4"),
                    B64.encode("video/mp4")
                ),
            )
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::CREATED, "{:?}", r.text().await);
        let loc = r.headers()["location"].to_str().unwrap().to_string();
        loc.trim_start_matches(&self.base).to_string()
    }

    async fn patch(&self, path: &str, offset: u64, body: Vec<u8>) -> reqwest::Response {
        self.req(Method::PATCH, path)
            .header("upload-offset", offset.to_string())
            .header("content-type", "application/offset+octet-stream")
            .body(body)
            .send()
            .await
            .unwrap()
    }

    async fn offset(&self, path: &str) -> u64 {
        let r = self.req(Method::HEAD, path).send().await.unwrap();
        assert_eq!(r.status(), 200);
        r.headers()["upload-offset"]
            .to_str()
            .unwrap()
            .parse()
            .unwrap()
    }
}

async fn reason(r: reqwest::Response) -> (StatusCode, String) {
    let s = r.status();
    let v: serde_json::Value = r.json().await.unwrap_or_default();
    (s, v["error"].as_str().unwrap_or("").to_string())
}

#[tokio::test]
async fn options_advertise_the_protocol() {
    for pg in support::databases().await {
        options_advertise_the_protocol_on(pg.as_ref()).await;
    }
}

async fn options_advertise_the_protocol_on(pg: Option<&PgTestDb>) {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start_with(dir.path(), &Backend::Local, pg).await;
    let r = Client::new()
        .request(Method::OPTIONS, format!("{}/files", s.base()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    let h = r.headers();
    assert_eq!(h["tus-resumable"], "1.0.0");
    assert_eq!(h["tus-version"], "1.0.0");
    assert!(
        h["tus-extension"]
            .to_str()
            .unwrap()
            .contains("creation-with-upload")
    );
    assert!(h["tus-extension"].to_str().unwrap().contains("expiration"));
    assert_eq!(h["tus-checksum-algorithm"], "sha1,sha256");
    // the configured limit (the test server's 64 MiB), as the README says
    assert_eq!(h["tus-max-size"], (64 * 1024 * 1024).to_string());
    // a browser's CORS preflight (tus-js-client) may send the tus headers
    let r = Client::new()
        .request(Method::OPTIONS, format!("{}/files", s.base()))
        .header("origin", "https://app.example")
        .header("access-control-request-method", "PATCH")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    let h = r.headers();
    assert_eq!(h["access-control-allow-origin"], "*");
    for want in ["Upload-Offset", "Tus-Resumable", "Upload-Checksum"] {
        assert!(
            h["access-control-allow-headers"]
                .to_str()
                .unwrap()
                .contains(want),
            "{want}"
        );
    }
    assert!(
        h["access-control-allow-methods"]
            .to_str()
            .unwrap()
            .contains("PATCH")
    );
    s.stop().await;
}

#[tokio::test]
async fn a_complete_upload_queues_its_moment() {
    for pg in support::databases().await {
        a_complete_upload_queues_its_moment_on(pg.as_ref()).await;
    }
}

async fn a_complete_upload_queues_its_moment_on(pg: Option<&PgTestDb>) {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start_with(dir.path(), &Backend::Local, pg).await;
    let t = Tus::new(&s, "alice");
    let data = support::data(1_500_000, 7);
    // creation-with-upload carries the first bytes
    let r = t
        .req(Method::POST, "/files")
        .header("upload-length", data.len().to_string())
        .header("content-type", "application/offset+octet-stream")
        .body(data[..500_000].to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    assert_eq!(r.headers()["upload-offset"], "500000");
    assert!(r.headers().contains_key("upload-expires"));
    let moment = r.headers()["moment-id"].to_str().unwrap().to_string();
    let path = r.headers()["location"]
        .to_str()
        .unwrap()
        .trim_start_matches(&t.base)
        .to_string();
    assert!(path.starts_with("/files/"));
    let m = common::moment::get(&s.db, &moment).await.unwrap().unwrap();
    assert_eq!(m.state, common::moment::State::Uploading);

    let digest = B64.encode(sha2::Sha256::digest(&data[500_000..]));
    let r = t
        .req(Method::PATCH, &path)
        .header("upload-offset", "500000")
        .header("content-type", "application/offset+octet-stream")
        .header("upload-checksum", format!("sha256 {digest}"))
        .body(data[500_000..].to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    assert_eq!(r.headers()["upload-offset"], data.len().to_string());
    assert_eq!(r.headers()["moment-id"].to_str().unwrap(), moment);
    // HEAD after completion carries the moment too
    let h = t.req(Method::HEAD, &path).send().await.unwrap();
    assert_eq!(h.headers()["moment-id"].to_str().unwrap(), moment);
    assert_eq!(h.headers()["upload-length"], data.len().to_string());
    assert_eq!(h.headers()["cache-control"], "no-store");

    let m = common::moment::get(&s.db, &moment).await.unwrap().unwrap();
    assert_eq!(m.state, common::moment::State::Queued);
    assert_eq!(
        support::stored_sha256(&s, &path).await,
        support::sha256(&data)
    );
    let stats = s.queue.stats().await.unwrap();
    assert_eq!(stats.queued.get("transcode"), Some(&1));
    s.stop().await;
}

#[tokio::test]
async fn every_bad_request_gets_its_status_and_nothing_is_written() {
    for pg in support::databases().await {
        every_bad_request_gets_its_status_and_nothing_is_written_on(pg.as_ref()).await;
    }
}

async fn every_bad_request_gets_its_status_and_nothing_is_written_on(pg: Option<&PgTestDb>) {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start_with(dir.path(), &Backend::Local, pg).await;
    let t = Tus::new(&s, "alice");
    let path = t.create(1000).await;
    let raw = |m: Method, p: &str| {
        Client::new()
            .request(m, format!("{}{p}", t.base))
            .bearer_auth(&t.token)
    };

    // wrong or missing Tus-Resumable → 412 with Tus-Version
    let r = raw(Method::POST, "/files")
        .header("tus-resumable", "0.2.2")
        .header("upload-length", "10")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 412);
    assert_eq!(r.headers()["tus-version"], "1.0.0");
    let r = raw(Method::HEAD, &path).send().await.unwrap();
    assert_eq!(r.status(), 412);
    // Upload-Length missing, negative, not a number → 400
    for bad in [None, Some("-1"), Some("ten"), Some("1.5")] {
        let mut b = t.req(Method::POST, "/files");
        if let Some(v) = bad {
            b = b.header("upload-length", v);
        }
        let (st, msg) = reason(b.send().await.unwrap()).await;
        assert_eq!(st, 400, "{bad:?}");
        assert!(msg.contains("Upload-Length"), "{msg}");
    }
    // over the limit → 413
    let (st, msg) = reason(
        t.req(Method::POST, "/files")
            .header("upload-length", (64u64 << 20) + 1)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(st, 413);
    assert!(msg.contains("limit"), "{msg}");
    // malformed metadata: bad base64, duplicate keys → 400; not a video → 415
    for (meta, status) in [
        ("filename !!!", 400),
        ("a YQ==,a Yg==", 400),
        ("filetype aW1hZ2UvanBlZw==", 415),
    ] {
        let r = t
            .req(Method::POST, "/files")
            .header("upload-length", "10")
            .header("upload-metadata", meta)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), status, "{meta}");
    }
    // Upload-Offset missing or malformed → 400
    let r = t
        .req(Method::PATCH, &path)
        .header("content-type", "application/offset+octet-stream")
        .body(vec![1])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let r = t
        .req(Method::PATCH, &path)
        .header("upload-offset", "-3")
        .header("content-type", "application/offset+octet-stream")
        .body(vec![1])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    // wrong Content-Type → 415
    let r = t
        .req(Method::PATCH, &path)
        .header("upload-offset", "0")
        .header("content-type", "application/octet-stream")
        .body(vec![1])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 415);
    // offset mismatch → 409
    let (st, msg) = reason(t.patch(&path, 5, vec![1, 2]).await).await;
    assert_eq!(st, 409);
    assert!(msg.contains("does not match"), "{msg}");
    // unsupported checksum algorithm → 400
    let r = t
        .req(Method::PATCH, &path)
        .header("upload-offset", "0")
        .header("content-type", "application/offset+octet-stream")
        .header("upload-checksum", format!("md5 {}", B64.encode([0u8; 16])))
        .body(vec![1])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    // checksum mismatch → 460 and the chunk is dropped
    let r = t
        .req(Method::PATCH, &path)
        .header("upload-offset", "0")
        .header("content-type", "application/offset+octet-stream")
        .header("upload-checksum", format!("sha1 {}", B64.encode([0u8; 20])))
        .body(vec![9u8; 100])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 460);
    assert_eq!(t.offset(&path).await, 0);
    // past Upload-Length → 413 with nothing written
    let (st, msg) = reason(t.patch(&path, 0, vec![1u8; 1001]).await).await;
    assert_eq!(st, 413, "{msg}");
    assert_eq!(t.offset(&path).await, 0);
    // a good chunk still works after all that
    assert_eq!(t.patch(&path, 0, vec![1u8; 100]).await.status(), 204);
    assert_eq!(t.offset(&path).await, 100);
    // unknown id → 404
    let r = t
        .req(Method::HEAD, "/files/00000000000000000000000000")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    let r = t
        .req(Method::HEAD, "/files/not-an-id")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    // another user's upload → 404 for HEAD, PATCH and DELETE
    let bob = Tus::new(&s, "bob");
    assert_eq!(
        bob.req(Method::HEAD, &path).send().await.unwrap().status(),
        404
    );
    assert_eq!(bob.patch(&path, 100, vec![1]).await.status(), 404);
    assert_eq!(
        bob.req(Method::DELETE, &path)
            .send()
            .await
            .unwrap()
            .status(),
        404
    );
    assert_eq!(t.offset(&path).await, 100);
    // no token → 401
    let r = Client::new()
        .head(format!("{}{path}", t.base))
        .header("tus-resumable", "1.0.0")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let r = Client::new()
        .post(format!("{}/files", t.base))
        .header("tus-resumable", "1.0.0")
        .header("upload-length", "1")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    // termination: gone afterwards, bytes freed
    assert_eq!(
        t.req(Method::DELETE, &path).send().await.unwrap().status(),
        204
    );
    assert_eq!(
        t.req(Method::HEAD, &path).send().await.unwrap().status(),
        404
    );
    let id = path.rsplit('/').next().unwrap();
    assert!(!dir.path().join(format!("objects/uploads/{id}")).exists());
    s.stop().await;
}

#[tokio::test]
async fn expired_uploads_answer_410_and_are_swept() {
    for pg in support::databases().await {
        expired_uploads_answer_410_and_are_swept_on(pg.as_ref()).await;
    }
}

async fn expired_uploads_answer_410_and_are_swept_on(pg: Option<&PgTestDb>) {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = support::config();
    cfg.expires_secs = 1;
    cfg.cleanup_interval_secs = 1;
    let s = Server::start_cfg(dir.path(), &Backend::Local, pg, cfg.clone()).await;
    let t = Tus::new(&s, "alice");
    let path = t.create(100).await;
    assert_eq!(t.patch(&path, 0, vec![1u8; 10]).await.status(), 204);
    tokio::time::sleep(Duration::from_millis(1300)).await;
    assert_eq!(
        t.req(Method::HEAD, &path).send().await.unwrap().status(),
        410
    );
    assert_eq!(t.patch(&path, 10, vec![1u8; 10]).await.status(), 410);
    // the sweeper removes bytes and rows
    let state = ingest::handler::IngestState::new(
        common::service::Shared {
            db: s.db.clone(),
            store: s.store.clone(),
            queue: s.queue.clone(),
            auth: std::sync::Arc::new(
                common::auth::Auth::from_config(&Default::default(), dir.path()).unwrap(),
            ),
            metrics: common::metrics::Metrics::new("test"),
            limiter: std::sync::Arc::new(
                common::limit::Limiter::new(
                    &common::limit::Config::off(),
                    &common::metrics::Metrics::new("test"),
                )
                .unwrap(),
            ),
        },
        cfg,
        5 << 20,
        Default::default(),
    );
    let stop = tokio_util::sync::CancellationToken::new();
    let sweeper = tokio::spawn(ingest::handler::sweep_expired(state, stop.clone()));
    tokio::time::sleep(Duration::from_millis(1500)).await;
    stop.cancel();
    sweeper.await.unwrap();
    let id = path.rsplit('/').next().unwrap();
    assert!(ingest::record::get(&s.db, id).await.unwrap().is_none());
    assert!(!dir.path().join(format!("objects/uploads/{id}")).exists());
    assert_eq!(
        t.req(Method::HEAD, &path).send().await.unwrap().status(),
        404
    );
    s.stop().await;
}

#[tokio::test]
async fn per_user_upload_limit() {
    for pg in support::databases().await {
        per_user_upload_limit_on(pg.as_ref()).await;
    }
}

async fn per_user_upload_limit_on(pg: Option<&PgTestDb>) {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start_with(dir.path(), &Backend::Local, pg).await;
    let t = Tus::new(&s, "alice");
    for _ in 0..5 {
        t.create(10).await;
    }
    let (st, msg) = reason(
        t.req(Method::POST, "/files")
            .header("upload-length", "10")
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(st, 429);
    assert!(msg.contains("unfinished uploads"), "{msg}");
    // other users are not affected
    Tus::new(&s, "bob").create(10).await;
    s.stop().await;
}

/// Sends a PATCH head promising `promised` bytes, writes `sent` of them and drops the connection.
async fn cut_patch(s: &Server, path: &str, token: &str, offset: u64, promised: usize, sent: &[u8]) {
    let mut sock = tokio::net::TcpStream::connect(s.http).await.unwrap();
    let head = format!(
        "PATCH {path} HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {token}\r\nTus-Resumable: 1.0.0\r\n\
         Upload-Offset: {offset}\r\nContent-Type: application/offset+octet-stream\r\nContent-Length: {promised}\r\n\r\n",
        s.http
    );
    sock.write_all(head.as_bytes()).await.unwrap();
    sock.write_all(sent).await.unwrap();
    sock.flush().await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    drop(sock);
}

#[tokio::test]
async fn a_patch_cut_mid_body_keeps_durable_bytes_and_head_tells_the_truth() {
    for backend in [
        Backend::Local,
        Backend::S3(std::sync::Arc::new(common::testing::S3Server::start())),
    ] {
        for pg in support::databases().await {
            let dir = tempfile::tempdir().unwrap();
            let s = Server::start_with(dir.path(), &backend, pg.as_ref()).await;
            let t = Tus::new(&s, "alice");
            let data = support::data(12 << 20, 3);
            let path = t.create(data.len() as u64).await;
            // 7 MiB of a promised 12 MiB, then the connection dies
            cut_patch(&s, &path, &t.token, 0, data.len(), &data[..7 << 20]).await;
            tokio::time::sleep(Duration::from_millis(500)).await;
            let offset = t.offset(&path).await;
            assert!(offset > 0 && offset <= 7 << 20, "offset {offset}");
            // a resume from the reported offset completes the upload intact
            let r = t
                .patch(&path, offset, data[offset as usize..].to_vec())
                .await;
            assert_eq!(r.status(), 204, "{:?}", r.text().await);
            assert_eq!(
                support::stored_sha256(&s, &path).await,
                support::sha256(&data)
            );
            s.stop().await;
        }
    }
}

#[tokio::test]
async fn a_second_concurrent_patch_is_refused_and_a_dead_lock_holder_does_not_block_for_long() {
    for pg in support::databases().await {
        a_second_concurrent_patch_is_refused_and_a_dead_lock_holder_does_not_block_for_long_on(
            pg.as_ref(),
        )
        .await;
    }
}

async fn a_second_concurrent_patch_is_refused_and_a_dead_lock_holder_does_not_block_for_long_on(
    pg: Option<&PgTestDb>,
) {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start_with(dir.path(), &Backend::Local, pg).await;
    let t = Tus::new(&s, "alice");
    let path = t.create(1 << 20).await;
    // a PATCH that sends a little and then stalls (connection kept open)
    let mut stalled = tokio::net::TcpStream::connect(s.http).await.unwrap();
    let head = format!(
        "PATCH {path} HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {}\r\nTus-Resumable: 1.0.0\r\n\
         Upload-Offset: 0\r\nContent-Type: application/offset+octet-stream\r\nContent-Length: {}\r\n\r\n",
        s.http,
        t.token,
        1 << 20
    );
    stalled.write_all(head.as_bytes()).await.unwrap();
    stalled.write_all(&[5u8; 1000]).await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (st, msg) = reason(t.patch(&path, 0, vec![1u8; 10]).await).await;
    assert_eq!(st, 423, "{msg}");
    assert!(msg.contains("another request"), "{msg}");
    // the stalled writer goes stale (2 s here); a resume then takes over from the true offset
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let offset = t.offset(&path).await;
    let r = t.patch(&path, offset, vec![2u8; 100]).await;
    assert_eq!(r.status(), 204, "{:?}", r.text().await);
    assert_eq!(t.offset(&path).await, offset + 100);
    let mut buf = [0u8; 256];
    let _ = tokio::time::timeout(Duration::from_secs(2), stalled.read(&mut buf)).await;
    s.stop().await;
}

#[tokio::test]
async fn s3_killed_mid_upload_loses_no_acknowledged_byte() {
    for pg in support::databases().await {
        let s3 = std::sync::Arc::new(common::testing::S3Server::start());
        let backend = Backend::S3(s3.clone());
        let dir = tempfile::tempdir().unwrap();
        let s = Server::start_with(dir.path(), &backend, pg.as_ref()).await;
        let t = Tus::new(&s, "alice");
        let data = support::data(40 << 20, 11);
        let path = t.create(data.len() as u64).await;
        // The body arrives in 256 KiB pieces through a channel, so the test decides when S3 dies.
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<Vec<u8>, std::io::Error>>(4);
        let body = reqwest::Body::wrap_stream(futures::stream::unfold(rx, |mut rx| async move {
            rx.recv().await.map(|piece| (piece, rx))
        }));
        let patch = {
            let req = t
                .req(Method::PATCH, &path)
                .header("upload-offset", "0")
                .header("content-type", "application/offset+octet-stream")
                .header("content-length", data.len().to_string())
                .body(body);
            tokio::spawn(async move { req.send().await })
        };
        let piece = 256 << 10;
        let mut sent = 0;
        let mut acked = 0;
        while acked < 12 << 20 {
            assert!(
                sent < 30 << 20,
                "no progress acknowledged after {sent} bytes"
            );
            tx.send(Ok(data[sent..sent + piece].to_vec()))
                .await
                .unwrap();
            sent += piece;
            tokio::time::sleep(Duration::from_millis(10)).await;
            acked = t.offset(&path).await;
        }
        // S3 dies; the client keeps sending more than a part, slowly enough that mid-request
        // checkpoints run while that part is on its way (and cannot be stored), then stops.
        s3.kill();
        for _ in 0..24 {
            if tx
                .send(Ok(data[sent..sent + piece].to_vec()))
                .await
                .is_err()
            {
                break;
            }
            sent += piece;
            tokio::time::sleep(Duration::from_millis(40)).await;
        }
        drop(tx);
        let answer = tokio::time::timeout(Duration::from_secs(60), patch)
            .await
            .expect("the PATCH ends")
            .unwrap();
        if let Ok(r) = answer {
            assert_ne!(
                r.status(),
                204,
                "a PATCH whose bytes could not be stored succeeded"
            );
        }
        // Upload state lives in the database: HEAD answers during the outage, and never below
        // what was acknowledged.
        let during = t.offset(&path).await;
        assert!(
            during >= acked,
            "offset {during} fell below acknowledged {acked}"
        );
        s3.restart();
        // Resume as a client does: HEAD, then PATCH from there. The cut request may still be
        // finishing on the server (its last parts retried once S3 is back), so the offset can
        // still grow: a 409 or 423 means HEAD again.
        let mut tries = 0;
        loop {
            let after = t.offset(&path).await;
            assert!(
                after >= acked && after <= sent as u64,
                "offset {after}, acked {acked}, sent {sent}"
            );
            let r = t.patch(&path, after, data[after as usize..].to_vec()).await;
            match r.status().as_u16() {
                204 => break,
                409 | 423 if tries < 20 => {
                    tries += 1;
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
                st => panic!("resume answered {st}: {:?}", r.text().await),
            }
        }
        // Every byte below the reported offset was really stored: the resumed upload is intact.
        assert_eq!(
            support::stored_sha256(&s, &path).await,
            support::sha256(&data)
        );
        s.stop().await;
    }
}

/// On S3 the last PATCH is answered before the object is assembled: until the queued assembly
/// has run the upload is read from its part and tail objects, and an assembly that meets a
/// dead S3 server retries until it finishes, then removes the pieces.
#[tokio::test]
async fn s3_complete_upload_reads_from_its_pieces_until_the_queued_assembly_finishes() {
    use common::store::{Growing as _, Key};
    for pg in support::databases().await {
        let s3 = std::sync::Arc::new(common::testing::S3Server::start());
        let backend = Backend::S3(s3.clone());
        let dir = tempfile::tempdir().unwrap();
        let s = Server::start_unassembled(dir.path(), &backend, pg.as_ref()).await;
        let t = Tus::new(&s, "alice");
        // two 5 MiB parts and a 2 MiB tail
        let data = support::data(12 << 20, 21);
        let path = t.create(data.len() as u64).await;
        let r = t.patch(&path, 0, data.clone()).await;
        assert_eq!(r.status(), 204, "{:?}", r.text().await);
        let id = path.rsplit('/').next().unwrap().to_string();
        let key = Key::new(format!("uploads/{id}")).unwrap();

        // complete, transcode queued, the object not yet there: the pieces are the upload
        let up = ingest::record::get(&s.db, &id).await.unwrap().unwrap();
        assert!(up.complete);
        assert!(matches!(
            s.store.head(&key).await,
            Err(common::store::Error::NotFound(_))
        ));
        let extent = ingest::record::Sources::new(s.db.clone(), s.store.clone())
            .extent(&key)
            .await
            .unwrap()
            .unwrap();
        assert!(extent.complete && extent.durable == data.len() as u64);
        assert_eq!(extent.pieces.len(), 3, "{:?}", extent.pieces);
        let mut read = Vec::new();
        for p in &extent.pieces {
            let b = s.store.get_bytes(&p.key, 1 << 30).await.unwrap();
            read.extend_from_slice(&b[..p.size as usize]);
        }
        assert_eq!(support::sha256(&read), support::sha256(&data));
        let job = s.queue.find(&format!("assemble:{id}")).await.unwrap();
        assert_eq!(job.map(|j| j.state).as_deref(), Some("queued"));
        s.stop().await;

        // a worker starts while S3 is down: its attempts fail and are retried
        s3.kill();
        let s = Server::start_with(dir.path(), &backend, pg.as_ref()).await;
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        loop {
            let j = s
                .queue
                .find(&format!("assemble:{id}"))
                .await
                .unwrap()
                .unwrap();
            if j.attempts >= 1 && j.last_error.is_some() {
                assert_eq!(j.state, "queued", "a failed attempt is retried: {j:?}");
                break;
            }
            assert!(std::time::Instant::now() < deadline, "no attempt: {j:?}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        s3.restart();
        assert_eq!(
            support::stored_sha256(&s, &path).await,
            support::sha256(&data)
        );
        // the pieces go once the assembly is recorded; readers are sent to the object
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while !s
            .store
            .list(&ingest::record::pieces_prefix(&id))
            .await
            .unwrap()
            .is_empty()
        {
            assert!(std::time::Instant::now() < deadline, "pieces left behind");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let extent = ingest::record::Sources::new(s.db.clone(), s.store.clone())
            .extent(&key)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(extent.pieces.len(), 1);
        assert_eq!(extent.pieces[0].key, key);
        let job = s.queue.find(&format!("assemble:{id}")).await.unwrap();
        assert_eq!(job.map(|j| j.state).as_deref(), Some("done"));
        s.stop().await;
    }
}
