//! The API contract. The OpenAPI document kept in the repository (`docs/openapi.json`) is the
//! one the code generates; every documented error answer is `{"error","code"}`; and
//! schemathesis (PyPI), a tool that knows nothing of our code, attacks a live service from the
//! document with a valid token: no 5xx, every status, content type and body as documented.
//!
//! `MOMENTS_TEST_SCHEMATHESIS_EXAMPLES` sets how many cases it makes per operation (default
//! 100); `MOMENTS_TEST_SCHEMATHESIS` where the tool is (default: the test tools' virtualenv,
//! `~/.cache/moments/venv/bin/schemathesis`, installed by `deploy/install-test-tools.sh`).

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly

mod support;

use std::path::PathBuf;
use std::process::Command;

use serde_json::Value;

fn committed() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../docs/openapi.json")
}

#[test]
fn the_committed_document_is_the_one_the_code_generates() {
    let generated = moments::openapi::pretty();
    let path = committed();
    let kept = std::fs::read_to_string(&path).unwrap_or_default();
    if kept != generated && std::env::var("MOMENTS_UPDATE_OPENAPI").as_deref() == Ok("1") {
        std::fs::write(&path, &generated).unwrap();
        return;
    }
    assert!(
        kept == generated,
        "{} is not what the code generates: run `cargo run -p moments -- openapi > docs/openapi.json` \
         (or this test with MOMENTS_UPDATE_OPENAPI=1) and commit it",
        path.display()
    );
}

#[test]
fn every_documented_error_answer_is_an_error_body() {
    let doc: Value = serde_json::from_str(&moments::openapi::pretty()).unwrap();
    assert!(doc["openapi"].as_str().unwrap().starts_with("3.1"));
    let paths = doc["paths"].as_object().unwrap();
    let mut operations = 0;
    for (path, item) in paths {
        for (method, op) in item.as_object().unwrap() {
            operations += 1;
            let responses = op["responses"].as_object().unwrap();
            let public = ["/healthz", "/readyz", "/openapi.json", "/ui/dev-token"]
                .contains(&path.as_str())
                || method == "options";
            if !public {
                assert_eq!(
                    op["security"][0]["bearer"],
                    serde_json::json!([]),
                    "{method} {path} takes a token"
                );
                assert!(
                    responses.contains_key("4XX"),
                    "{method} {path} documents no 4XX"
                );
            }
            for (status, r) in responses {
                if !(status.starts_with('4') || status.starts_with('5')) || method == "head" {
                    continue;
                }
                let content = r["content"]
                    .as_object()
                    .unwrap_or_else(|| panic!("{method} {path} {status} has no body"));
                for (media, c) in content {
                    let schema = c["schema"]["$ref"].as_str().unwrap_or("");
                    let ok = schema == "#/components/schemas/ErrorBody"
                        || (path == "/readyz" && schema == "#/components/schemas/Readiness");
                    assert!(ok, "{method} {path} {status} {media}: {schema:?}");
                }
            }
        }
    }
    // the tus routes, the moment, its events, the voice routes, tickets, revocations, the
    // outbox admin, health and the page's token
    assert!(operations >= 24, "only {operations} operations");
    let error = &doc["components"]["schemas"]["ErrorBody"];
    assert_eq!(error["required"], serde_json::json!(["error", "code"]));
}

fn schemathesis() -> PathBuf {
    let path = std::env::var_os("MOMENTS_TEST_SCHEMATHESIS")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var("HOME").unwrap())
                .join(".cache/moments/venv/bin/schemathesis")
        });
    assert!(
        path.exists(),
        "schemathesis is not installed at {}: run deploy/install-test-tools.sh",
        path.display()
    );
    path
}

/// One schemathesis run over the operations `filter` selects, with the fixed path parameters
/// of `config`; returns its output.
fn attack(
    url: &str,
    token: &str,
    config: &std::path::Path,
    filter: &[&str],
    dir: &std::path::Path,
) -> String {
    let examples = std::env::var("MOMENTS_TEST_SCHEMATHESIS_EXAMPLES").unwrap_or("100".into());
    let out = Command::new(schemathesis())
        .current_dir(dir) // what it writes stays in the test's directory
        .arg("--config-file")
        .arg(config)
        .args(["run", url, "--header"])
        .arg(format!("Authorization: Bearer {token}"))
        .args([
            "--checks",
            "not_a_server_error,status_code_conformance,content_type_conformance,\
             response_schema_conformance",
            "--phases",
            "examples,coverage,fuzzing",
            "--max-examples",
            &examples,
            "--seed",
            "1",
            "--workers",
            "2",
            "--request-timeout",
            "30",
            "--generation-database",
            "none",
            "--no-color",
        ])
        .args(filter)
        .env("NO_COLOR", "1")
        .env(
            "SCHEMATHESIS_HOOKS",
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/tools/schemathesis_hooks.py"),
        )
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if !out.status.success() {
        eprintln!("{}", tail(&text, 40_000));
        panic!(
            "schemathesis found answers that break the contract ({}; its report is above)",
            out.status
        );
    }
    text
}

fn tail(s: &str, n: usize) -> &str {
    let mut i = s.len().saturating_sub(n);
    while !s.is_char_boundary(i) {
        i += 1;
    }
    &s[i..]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schemathesis_finds_no_server_error_and_no_answer_off_the_document() {
    let dir = tempfile::tempdir().unwrap();
    let stack = support::start(dir.path(), |c| {
        // the operators' routes answer 200, not only 403
        c.auth.admins = vec!["alice".into(), "root".into()];
        c.events.admins = vec!["alice".into()];
    })
    .await;
    let url = format!("{}/openapi.json", stack.base);
    let served: Value = reqwest::get(&url).await.unwrap().json().await.unwrap();
    assert_eq!(
        served,
        serde_json::from_str::<Value>(&moments::openapi::pretty()).unwrap(),
        "/openapi.json serves the document"
    );

    // real ids for the path parameters, so the cases reach past "404 no such …": a ready
    // moment, an unfinished upload, a Q&A session
    let clip = support::faststart_clip(dir.path(), "clip.mp4", 320, 240, 2, 300);
    let moment = stack.whole(&std::fs::read(&clip).unwrap()).await;
    let m = stack
        .settle(&moment, std::time::Duration::from_secs(120))
        .await;
    assert_eq!(m["state"], "ready", "{m}");
    let (upload_url, _) = stack.create(100_000).await;
    let upload = upload_url.rsplit('/').next().unwrap().to_string();
    let session: Value = stack
        .http
        .post(format!("{}/v1/moments/{moment}/qa", stack.base))
        .bearer_auth(&stack.token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let session = session["session"].as_str().unwrap().to_string();
    let config = dir.path().join("schemathesis.toml");
    std::fs::write(
        &config,
        format!(
            "[[operations]]\ninclude-path-regex = \"^/v1/moments/\\\\{{id\\\\}}\"\n\
             parameters = {{ \"path.id\" = \"{moment}\" }}\n\n\
             [[operations]]\ninclude-path = \"/files/{{id}}\"\n\
             parameters = {{ \"path.id\" = \"{upload}\" }}\n\n\
             [[operations]]\ninclude-path = \"/v1/qa/{{session}}/ws\"\n\
             parameters = {{ \"path.session\" = \"{session}\" }}\n"
        ),
    )
    .unwrap();

    let (private, _) = common::auth::ensure_dev_key(&dir.path().join("data")).unwrap();
    let token = |user: &str| {
        common::auth::mint(&private, user, std::time::Duration::from_secs(3600)).unwrap()
    };
    let tokens = [token("alice"), token("root"), token("carol")];
    let (dir, base) = (dir.path().to_path_buf(), stack.base.clone());
    let outputs = tokio::task::spawn_blocking(move || {
        [
            // everything but the routes that revoke tokens: schemathesis does send
            // `{"user": "alice"}`, having seen the name in answers, which would end the run…
            attack(
                &url,
                &tokens[0],
                &config,
                &[
                    "--exclude-path-regex",
                    "^/v1/(auth/revoke|admin/revocations)$",
                ],
                &dir,
            ),
            // …so each of those runs last, with a user of its own
            attack(
                &url,
                &tokens[1],
                &config,
                &["--include-path", "/v1/admin/revocations"],
                &dir,
            ),
            attack(
                &url,
                &tokens[2],
                &config,
                &["--include-path", "/v1/auth/revoke"],
                &dir,
            ),
        ]
    })
    .await
    .unwrap();
    for text in &outputs {
        let summary: Vec<&str> = text
            .lines()
            .filter(|l| l.contains("generated") || l.contains("Selected:"))
            .collect();
        eprintln!("schemathesis against {base}: {}", summary.join("; "));
    }
    stack.stop().await;
}
