//! The IETF resumable-upload draft front end, driven by a small client written here from the
//! draft's text (draft-ietf-httpbis-resumable-upload, interop 8, and interop 3 as iOS 17 sends
//! it), not from the server's code: creation, offset retrieval, append, cancellation, an
//! interrupted upload resumed with HEAD + PATCH, the 104 interim response on HTTP/3, digests,
//! and every bad input with its status and reason.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly

mod support;

use std::time::Duration;

use base64::Engine;
use reqwest::{Client, Method, StatusCode};
use support::{Backend, Server};
use tokio::io::AsyncWriteExt;

/// The client side of the draft, as its text describes it.
struct Rufh {
    http: Client,
    base: String,
    token: String,
    /// `Upload-Draft-Interop-Version` to send (None: the final RFC's clients send none).
    interop: Option<u32>,
}

/// A structured-field boolean as the draft's headers carry it.
fn sf_bool(b: bool) -> &'static str {
    if b { "?1" } else { "?0" }
}

impl Rufh {
    fn new(s: &Server, user: &str, interop: Option<u32>) -> Rufh {
        Rufh {
            http: Client::new(),
            base: s.base(),
            token: s.token(user),
            interop,
        }
    }

    fn req(&self, m: Method, url: &str) -> reqwest::RequestBuilder {
        let url = if url.starts_with("http") {
            url.to_string()
        } else {
            format!("{}{url}", self.base)
        };
        let mut r = self.http.request(m, url).bearer_auth(&self.token);
        if let Some(v) = self.interop {
            r = r.header("upload-draft-interop-version", v.to_string());
        }
        r
    }

    /// The completeness field: interop 3 sends the inverse, `Upload-Incomplete`.
    fn complete(&self, r: reqwest::RequestBuilder, complete: bool) -> reqwest::RequestBuilder {
        if self.interop == Some(3) {
            r.header("upload-incomplete", sf_bool(!complete))
        } else {
            r.header("upload-complete", sf_bool(complete))
        }
    }

    /// §Upload Creation: any request with content and `Upload-Complete`.
    async fn create(
        &self,
        body: Vec<u8>,
        complete: bool,
        length: Option<u64>,
    ) -> reqwest::Response {
        let mut r = self
            .complete(self.req(Method::POST, "/files"), complete)
            .header("content-type", "video/mp4")
            .header("content-disposition", "inline; filename=\"clip.mp4\"");
        if let Some(l) = length {
            r = r.header("upload-length", l.to_string());
        }
        r.body(body).send().await.unwrap()
    }

    /// §Offset Retrieval: HEAD on the upload resource.
    async fn offset(&self, url: &str) -> (u64, bool) {
        let r = self.req(Method::HEAD, url).send().await.unwrap();
        assert!(r.status().is_success(), "HEAD answered {}", r.status());
        assert_eq!(r.headers()["cache-control"], "no-store");
        let offset = r.headers()["upload-offset"]
            .to_str()
            .unwrap()
            .parse()
            .unwrap();
        let complete = if self.interop == Some(3) {
            r.headers()["upload-incomplete"] == "?0"
        } else {
            r.headers()["upload-complete"] == "?1"
        };
        (offset, complete)
    }

    /// §Upload Append: PATCH with application/partial-upload at the offset.
    async fn append(
        &self,
        url: &str,
        offset: u64,
        body: Vec<u8>,
        complete: bool,
    ) -> reqwest::Response {
        let mut r = self
            .complete(self.req(Method::PATCH, url), complete)
            .header("upload-offset", offset.to_string());
        if self.interop.is_none_or(|v| v >= 6) {
            r = r.header("content-type", "application/partial-upload");
        }
        r.body(body).send().await.unwrap()
    }
}

fn location(r: &reqwest::Response, base: &str) -> String {
    r.headers()["location"]
        .to_str()
        .unwrap()
        .trim_start_matches(base)
        .to_string()
}

/// A problem document's detail, with the status.
async fn problem(r: reqwest::Response) -> (u16, serde_json::Value, reqwest::header::HeaderMap) {
    let status = r.status().as_u16();
    let headers = r.headers().clone();
    assert_eq!(
        headers["content-type"], "application/problem+json",
        "status {status}: an error answer is a problem document"
    );
    let body: serde_json::Value = r.json().await.unwrap();
    assert!(
        !body["detail"].as_str().unwrap_or("").is_empty(),
        "every error says why: {body}"
    );
    (status, body, headers)
}

#[tokio::test]
async fn one_request_upload_and_careful_parts_upload_both_complete() {
    for pg in support::databases().await {
        let dir = tempfile::tempdir().unwrap();
        let s = Server::start_with(dir.path(), &Backend::Local, pg.as_ref()).await;
        let c = Rufh::new(&s, "alice", Some(8));
        let data = support::data(3 << 20, 5);
        // optimistic creation: everything in one request
        let r = c.create(data.clone(), true, Some(data.len() as u64)).await;
        assert_eq!(r.status(), StatusCode::CREATED);
        assert_eq!(r.headers()["upload-complete"], "?1");
        assert_eq!(r.headers()["upload-draft-interop-version"], "8");
        let url = location(&r, &s.base());
        let body: serde_json::Value = r.json().await.unwrap();
        assert!(body["moment_id"].as_str().is_some(), "{body}");
        assert_eq!(
            support::stored_sha256(&s, &url).await,
            support::sha256(&data)
        );
        assert_eq!(c.offset(&url).await, (data.len() as u64, true));

        // careful creation: an empty request learns the URL and the limits, then three appends
        let r = c.create(Vec::new(), false, Some(data.len() as u64)).await;
        assert_eq!(r.status(), StatusCode::CREATED);
        let limit = r.headers()["upload-limit"].to_str().unwrap().to_string();
        assert!(
            limit.contains("max-size=") && limit.contains("max-age="),
            "{limit}"
        );
        assert_eq!(r.headers()["upload-complete"], "?0");
        let url = location(&r, &s.base());
        let third = data.len() / 3;
        for (i, piece) in data.chunks(third).enumerate() {
            let offset = (i * third) as u64;
            let last = offset as usize + piece.len() == data.len();
            let r = c.append(&url, offset, piece.to_vec(), last).await;
            if last {
                assert_eq!(r.status(), StatusCode::OK);
                assert_eq!(r.headers()["upload-complete"], "?1");
            } else {
                assert_eq!(r.status(), StatusCode::NO_CONTENT);
                assert_eq!(r.headers()["upload-complete"], "?0");
            }
        }
        assert_eq!(
            support::stored_sha256(&s, &url).await,
            support::sha256(&data)
        );
        // a completed upload takes nothing more
        let (st, body, _) = problem(c.append(&url, data.len() as u64, vec![1], true).await).await;
        assert_eq!(st, 400);
        assert_eq!(
            body["type"],
            "https://iana.org/assignments/http-problem-types#completed-upload"
        );
        s.stop().await;
    }
}

/// Sends the head of an append and part of its content over a raw connection, then drops
/// it: the interruption the draft is about.
async fn cut_append(s: &Server, token: &str, url: &str, offset: u64, promised: usize, sent: &[u8]) {
    let mut sock = tokio::net::TcpStream::connect(s.http).await.unwrap();
    let head = format!(
        "PATCH {url} HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {token}\r\n\
         Upload-Draft-Interop-Version: 8\r\nUpload-Complete: ?1\r\nUpload-Offset: {offset}\r\n\
         Content-Type: application/partial-upload\r\nContent-Length: {promised}\r\n\r\n",
        s.http
    );
    sock.write_all(head.as_bytes()).await.unwrap();
    sock.write_all(sent).await.unwrap();
    sock.flush().await.unwrap();
    tokio::time::sleep(Duration::from_millis(800)).await;
    drop(sock);
    tokio::time::sleep(Duration::from_millis(300)).await;
}

#[tokio::test]
async fn an_interrupted_upload_resumes_with_head_and_patch() {
    for pg in support::databases().await {
        let dir = tempfile::tempdir().unwrap();
        let s = Server::start_with(dir.path(), &Backend::Local, pg.as_ref()).await;
        let c = Rufh::new(&s, "alice", Some(8));
        let data = support::data(6 << 20, 9);
        // careful creation (Example 2 of the draft), then an append cut two thirds in
        let r = c
            .create(data[..1000].to_vec(), false, Some(data.len() as u64))
            .await;
        assert_eq!(r.status(), StatusCode::CREATED);
        let url = location(&r, &s.base());
        cut_append(
            &s,
            &c.token,
            &url,
            1000,
            data.len() - 1000,
            &data[1000..(4 << 20)],
        )
        .await;
        let (offset, complete) = c.offset(&url).await;
        assert!(!complete);
        assert!(offset > 1000 && offset <= 4 << 20, "offset {offset}");
        // appending from anywhere else is refused with the true offset
        let (st, body, headers) =
            problem(c.append(&url, offset + 1, vec![0; 10], false).await).await;
        assert_eq!(st, 409);
        assert_eq!(headers["upload-offset"], offset.to_string().as_str());
        assert_eq!(body["expected-offset"], offset);
        assert_eq!(body["provided-offset"], offset + 1);
        assert_eq!(
            body["type"],
            "https://iana.org/assignments/http-problem-types#mismatching-upload-offset"
        );
        let r = c
            .append(&url, offset, data[offset as usize..].to_vec(), true)
            .await;
        assert_eq!(r.status(), StatusCode::OK, "{:?}", r.text().await);
        assert_eq!(
            support::stored_sha256(&s, &url).await,
            support::sha256(&data)
        );
        s.stop().await;
    }
}

#[tokio::test]
async fn ios_17_interop_3_and_unannounced_clients() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(dir.path(), &Backend::Local).await;
    let data = support::data(1 << 20, 2);
    // interop 3: Upload-Incomplete, appends without application/partial-upload
    let c = Rufh::new(&s, "alice", Some(3));
    let r = c
        .create(data[..1000].to_vec(), false, Some(data.len() as u64))
        .await;
    assert_eq!(r.status(), StatusCode::CREATED);
    assert_eq!(r.headers()["upload-incomplete"], "?1");
    assert_eq!(r.headers()["upload-draft-interop-version"], "3");
    assert!(
        r.headers().get("upload-limit").is_none(),
        "interop 3 has no Upload-Limit"
    );
    let url = location(&r, &s.base());
    assert_eq!(c.offset(&url).await, (1000, false));
    let r = c.append(&url, 1000, data[1000..].to_vec(), true).await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.headers()["upload-incomplete"], "?0");
    assert_eq!(
        support::stored_sha256(&s, &url).await,
        support::sha256(&data)
    );
    // no interop version at all: the latest text, answered without the echo
    let c = Rufh::new(&s, "bob", None);
    let r = c.create(data.clone(), true, None).await;
    assert_eq!(r.status(), StatusCode::CREATED);
    assert!(r.headers().get("upload-draft-interop-version").is_none());
    assert_eq!(r.headers()["upload-complete"], "?1");
    s.stop().await;
}

#[tokio::test]
async fn every_bad_draft_request_gets_its_status_and_reason() {
    for pg in support::databases().await {
        let dir = tempfile::tempdir().unwrap();
        let s = Server::start_with(dir.path(), &Backend::Local, pg.as_ref()).await;
        let c = Rufh::new(&s, "alice", Some(8));
        // creations here name their interop version themselves (one case sends an unknown one)
        let raw = Rufh::new(&s, "alice", None);
        let max = support::config().max_size;
        let post = |h: &[(&str, &str)], body: Vec<u8>| {
            let mut r = raw.req(Method::POST, "/files");
            for (k, v) in h {
                r = r.header(*k, *v);
            }
            r.body(body).send()
        };
        // malformed fields: 400 with the field named
        for (h, needle) in [
            (vec![("upload-complete", "yes")], "structured boolean"),
            (
                vec![("upload-complete", "?1"), ("upload-length", "-5")],
                "Upload-Length",
            ),
            (
                vec![("upload-complete", "?1"), ("upload-length", "12abc")],
                "Upload-Length",
            ),
            (
                vec![("upload-complete", "?1"), ("upload-incomplete", "?0")],
                "contradict",
            ),
            (
                vec![
                    ("upload-complete", "?1"),
                    ("upload-draft-interop-version", "2"),
                ],
                "not supported",
            ),
            (
                vec![("upload-complete", "?1"), ("repr-digest", "sha-256=nope")],
                "Repr-Digest",
            ),
        ] {
            let (st, body, _) = problem(post(&h, vec![1; 10]).await.unwrap()).await;
            assert_eq!(st, 400, "{h:?}: {body}");
            assert!(
                body["detail"].as_str().unwrap().contains(needle),
                "{h:?}: {body}"
            );
        }
        // Upload-Complete: ?1 with content that contradicts Upload-Length
        let (st, body, _) = problem(
            post(
                &[("upload-complete", "?1"), ("upload-length", "99")],
                vec![1; 10],
            )
            .await
            .unwrap(),
        )
        .await;
        assert_eq!(st, 400);
        assert_eq!(
            body["type"],
            "https://iana.org/assignments/http-problem-types#inconsistent-upload-length"
        );
        // no length to be known: 411
        let (st, _, _) = problem(
            c.req(Method::POST, "/files")
                .header("upload-complete", "?0")
                .send()
                .await
                .unwrap(),
        )
        .await;
        assert_eq!(st, 411);
        // past the limit: 413 with Upload-Limit
        let too_big = (max + 1).to_string();
        let (st, _, headers) = problem(
            post(
                &[("upload-complete", "?0"), ("upload-length", &too_big)],
                vec![],
            )
            .await
            .unwrap(),
        )
        .await;
        assert_eq!(st, 413);
        assert!(
            headers["upload-limit"]
                .to_str()
                .unwrap()
                .contains(&format!("max-size={max}"))
        );
        // not a video
        let (st, _, _) = problem(
            post(
                &[("upload-complete", "?1"), ("content-type", "image/png")],
                vec![1; 10],
            )
            .await
            .unwrap(),
        )
        .await;
        assert_eq!(st, 415);

        // appends
        let r = c.create(vec![7; 100], false, Some(1000)).await;
        let url = location(&r, &s.base());
        let patch = |h: &[(&str, &str)], body: Vec<u8>| {
            let mut r = c.req(Method::PATCH, &url);
            for (k, v) in h {
                r = r.header(*k, *v);
            }
            r.body(body).send()
        };
        let pu = ("content-type", "application/partial-upload");
        for (h, st_want, needle) in [
            (
                vec![("upload-offset", "100"), ("upload-complete", "?0")],
                415,
                "partial-upload",
            ),
            (vec![pu, ("upload-complete", "?0")], 400, "Upload-Offset"),
            (
                vec![pu, ("upload-offset", "x"), ("upload-complete", "?0")],
                400,
                "Upload-Offset",
            ),
            (vec![pu, ("upload-offset", "100")], 400, "upload-complete"),
            (
                vec![
                    pu,
                    ("upload-offset", "100"),
                    ("upload-complete", "?0"),
                    ("upload-length", "999"),
                ],
                400,
                "differs",
            ),
            (
                vec![pu, ("upload-offset", "100"), ("upload-complete", "?1")],
                400,
                "not at the length",
            ),
        ] {
            let (st, body, _) = problem(patch(&h, vec![1; 10]).await.unwrap()).await;
            assert_eq!(st, st_want, "{h:?}: {body}");
            assert!(
                body["detail"].as_str().unwrap().contains(needle),
                "{h:?}: {body}"
            );
        }
        // content past the length: 413, nothing written
        let (st, _, _) = problem(
            patch(
                &[pu, ("upload-offset", "100"), ("upload-complete", "?0")],
                vec![1; 901],
            )
            .await
            .unwrap(),
        )
        .await;
        assert_eq!(st, 413);
        assert_eq!(c.offset(&url).await, (100, false));
        // a Content-Digest that does not match: 400, nothing written
        let wrong = format!(
            "sha-256=:{}:",
            base64::engine::general_purpose::STANDARD.encode([0u8; 32])
        );
        let (st, body, _) = problem(
            patch(
                &[
                    pu,
                    ("upload-offset", "100"),
                    ("upload-complete", "?0"),
                    ("content-digest", &wrong),
                ],
                vec![1; 10],
            )
            .await
            .unwrap(),
        )
        .await;
        assert_eq!(st, 400, "{body}");
        assert_eq!(c.offset(&url).await, (100, false));
        // another user sees nothing; no token is 401
        let eve = Rufh::new(&s, "eve", Some(8));
        let r = eve.req(Method::HEAD, &url).send().await.unwrap();
        assert_eq!(r.status(), 404);
        let r = Client::new()
            .head(format!("{}{url}", s.base()))
            .header("upload-draft-interop-version", "8")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 401);
        // cancellation, after which the resource is gone
        let r = c.req(Method::DELETE, &url).send().await.unwrap();
        assert_eq!(r.status(), 204);
        let r = c.req(Method::HEAD, &url).send().await.unwrap();
        assert_eq!(r.status(), 404);
        s.stop().await;
    }
}

#[tokio::test]
async fn repr_digest_is_checked_at_completion() {
    use sha2::Digest;
    // on S3, 11 MiB is two parts and a tail, read back before the object is assembled
    let s3 = std::sync::Arc::new(common::testing::S3Server::start());
    for (backend, len) in [(Backend::Local, 300_000), (Backend::S3(s3), 11 << 20)] {
        for pg in support::databases().await {
            let dir = tempfile::tempdir().unwrap();
            let s = Server::start_with(dir.path(), &backend, pg.as_ref()).await;
            let c = Rufh::new(&s, "alice", Some(8));
            let data = support::data(len, 4);
            let good = format!(
                "sha-256=:{}:",
                base64::engine::general_purpose::STANDARD.encode(sha2::Sha256::digest(&data))
            );
            let r = c
                .complete(c.req(Method::POST, "/files"), false)
                .header("upload-length", data.len().to_string())
                .header("repr-digest", &good)
                .body(data[..1000].to_vec())
                .send()
                .await
                .unwrap();
            let url = location(&r, &s.base());
            let r = c.append(&url, 1000, data[1000..].to_vec(), true).await;
            assert_eq!(r.status(), StatusCode::OK);
            assert_eq!(
                support::stored_sha256(&s, &url).await,
                support::sha256(&data)
            );
            // the same bytes, one flipped, under the same digest: the upload fails and is removed
            let mut bad = data.clone();
            bad[12345] ^= 1;
            let r = c
                .complete(c.req(Method::POST, "/files"), true)
                .header("repr-digest", &good)
                .body(bad)
                .send()
                .await
                .unwrap();
            let url = location(&r, &s.base());
            let (st, body, _) = problem(r).await;
            assert_eq!(st, 400);
            assert!(
                body["detail"].as_str().unwrap().contains("Repr-Digest"),
                "{body}"
            );
            let r = c.req(Method::HEAD, &url).send().await.unwrap();
            assert_eq!(r.status(), 404, "the failed upload is gone");
            s.stop().await;
        }
    }
}

#[tokio::test]
async fn http3_creation_announces_the_upload_with_104_before_the_answer() {
    use bytes::Buf;
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(dir.path(), &Backend::Local).await;
    let token = s.token("alice");
    let trust = common::server::tls::Trust::Pinned(s.fingerprint.clone());
    let mut h3 = common::h3client::Client::connect(s.quic, "localhost", &trust)
        .await
        .unwrap();
    let data = support::data(2 << 20, 8);
    let req = http::Request::post(format!("https://{}/files", s.quic))
        .header("authorization", format!("Bearer {token}"))
        .header("upload-draft-interop-version", "8")
        .header("upload-complete", "?1")
        .header("upload-length", data.len().to_string())
        .header("content-type", "video/mp4")
        .body(())
        .unwrap();
    let mut stream = h3.sender().send_request(req).await.unwrap();
    // send the first bytes, then wait for the interim response before the rest
    stream
        .send_data(bytes::Bytes::copy_from_slice(&data[..65536]))
        .await
        .unwrap();
    let interim = tokio::time::timeout(Duration::from_secs(5), stream.recv_response())
        .await
        .expect("an interim response arrives while the content is still being sent")
        .unwrap();
    assert_eq!(interim.status().as_u16(), 104);
    let announced = interim.headers()["location"].to_str().unwrap().to_string();
    assert!(announced.contains("/files/"), "{announced}");
    assert_eq!(interim.headers()["upload-draft-interop-version"], "8");
    assert!(interim.headers().contains_key("upload-limit"));
    stream
        .send_data(bytes::Bytes::copy_from_slice(&data[65536..]))
        .await
        .unwrap();
    stream.finish().await.unwrap();
    let fin = stream.recv_response().await.unwrap();
    assert_eq!(fin.status().as_u16(), 201);
    assert_eq!(fin.headers()["location"].to_str().unwrap(), announced);
    while let Some(mut chunk) = stream.recv_data().await.unwrap() {
        chunk.advance(chunk.remaining());
    }
    let path = announced
        .split_once("/files/")
        .map(|(_, id)| format!("/files/{id}"))
        .unwrap();
    assert_eq!(
        support::stored_sha256(&s, &path).await,
        support::sha256(&data)
    );
    s.stop().await;
}
