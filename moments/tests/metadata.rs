//! Hostile upload metadata, over tus and the resumable-upload draft: path traversal in file
//! names, NUL and control characters, values past the limit, bad base64, bad keys. What is
//! valid is stored exactly as sent and never used as a path (the upload's objects stay under
//! their id); what is invalid gets `400 {"error", "code"}` naming the problem, and nothing is
//! created for it.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly

mod support;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use serde_json::Value;

/// Every file under `root`, relative.
fn files(root: &std::path::Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push(p.strip_prefix(root).unwrap().display().to_string());
            }
        }
    }
    out
}

async fn create(s: &support::Stack, metadata: &str) -> reqwest::Response {
    s.http
        .post(format!("{}/files", s.base))
        .bearer_auth(&s.token)
        .header("tus-resumable", "1.0.0")
        .header("upload-length", "16")
        .header("upload-metadata", metadata)
        .send()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_metadata_is_stored_as_data_or_refused_with_a_reason() {
    let dir = tempfile::tempdir().unwrap();
    let s = support::start(dir.path(), |_| {}).await;
    let before = files(dir.path());

    // valid but hostile values: stored byte for byte, used for nothing on disk
    let hostile: Vec<(&str, Vec<u8>)> = vec![
        ("filename", b"../../../../etc/passwd".to_vec()),
        ("filename", b"/absolute/path.mp4".to_vec()),
        ("filename", b"..\\..\\windows\\system32".to_vec()),
        ("filename", b"nul\0in\0the\0middle.mp4".to_vec()),
        (
            "filename",
            b"control\x01\x07\x1b[31mred\r\nX-Injected: 1".to_vec(),
        ),
        ("title", "😀 ünïcödé \u{202e}reversed".as_bytes().to_vec()),
        ("title", vec![0xff, 0xfe, 0x00, 0x80]), // not UTF-8 at all
        ("title", vec![b'x'; 2500]),             // long, under the 4 KiB header limit
    ];
    for (key, value) in &hostile {
        let raw = format!(
            "{key} {},filetype {}",
            B64.encode(value),
            B64.encode("video/mp4")
        );
        let r = create(&s, &raw).await;
        assert_eq!(
            r.status(),
            201,
            "{key}={value:?}: {}",
            r.text().await.unwrap()
        );
        let url = r.headers()["location"].to_str().unwrap().to_string();
        let id = url.rsplit('/').next().unwrap().to_string();
        s.patch(&url, 0, vec![7u8; 16]).await;
        let r = s
            .http
            .head(&url)
            .bearer_auth(&s.token)
            .header("tus-resumable", "1.0.0")
            .send()
            .await
            .unwrap();
        assert_eq!(
            r.headers()["upload-metadata"],
            raw.as_str(),
            "stored as sent"
        );
        // its bytes are objects named by its id, not by anything the client said
        let objects: Vec<String> = files(dir.path())
            .into_iter()
            .filter(|f| !before.contains(f))
            .collect();
        for f in &objects {
            assert!(
                f.starts_with("data/"),
                "{key}={value:?} made {f} outside the data directory"
            );
            assert!(!f.contains("passwd") && !f.contains("windows") && !f.contains("absolute"));
        }
        assert!(
            objects.iter().any(|f| f.contains(&id)),
            "the upload's bytes are under its id: {objects:?}"
        );
    }
    assert!(!std::path::Path::new("/etc/passwd.mp4").exists());

    // invalid: refused with a reason, nothing created
    let uploads_before = files(dir.path()).len();
    let cases: Vec<(String, u16, &str, &str)> = vec![
        ("filename not*base64!".into(), 400, "bad_metadata", "base64"),
        ("filename YQ".into(), 400, "bad_metadata", "base64"),
        (
            format!("title {}", B64.encode(vec![b'x'; 10 * 1024])),
            400,
            "bad_metadata",
            "4096",
        ),
        ("fil ename YQ==".into(), 400, "bad_metadata", ""),
        ("a YQ==,a Yg==".into(), 400, "bad_metadata", "\"a\""),
        ("a YQ==,,b Yg==".into(), 400, "bad_metadata", "empty"),
        (
            format!("filetype {}", B64.encode("text/html")),
            415,
            "unsupported_filetype",
            "text/html",
        ),
    ];
    for (raw, status, code, says) in &cases {
        let r = create(&s, raw).await;
        assert_eq!(r.status(), *status, "{raw:.60}");
        let body: Value = r.json().await.unwrap();
        assert_eq!(body["code"], *code, "{raw:.60}: {body}");
        let error = body["error"].as_str().unwrap();
        assert!(error.contains(says), "{raw:.60}: {error}");
    }
    assert_eq!(
        files(dir.path()).len(),
        uploads_before,
        "a refused upload left files"
    );

    // the draft protocol: a traversing file name in Content-Disposition is only metadata
    let r = s
        .http
        .post(format!("{}/files", s.base))
        .bearer_auth(&s.token)
        .header("upload-draft-interop-version", "6")
        .header("upload-complete", "?1")
        .header(
            "content-disposition",
            "attachment; filename=\"../../../etc/cron.d/x\"",
        )
        .body(vec![1u8; 16])
        .send()
        .await
        .unwrap();
    assert!(
        r.status().is_success(),
        "{} {}",
        r.status(),
        r.text().await.unwrap()
    );
    for f in files(dir.path()) {
        assert!(f.starts_with("data/") && !f.contains("cron"), "{f}");
    }
    s.stop().await;
}
