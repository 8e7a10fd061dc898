//! Every authenticated route against every kind of bad credential, as a table: no token, a
//! malformed header, another scheme, expired, not yet valid (`nbf`), signed by another key,
//! `alg: none`, HS256 with the public key as the HMAC secret, a bad subject, a revoked token
//! (by its id, and by its user's cut-off), and a valid token of another user. Each bad credential gets `401 {"error", "code": "unauthorized"}` on every
//! route; another user's moment is `404` (its existence is not revealed) and the admin routes
//! are `403` for a user who is not an admin. Oversized request headers get `431`.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly

mod support;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use reqwest::Method;
use serde_json::{Value, json};

/// A route: method, path, headers and body of a request that would succeed with the owner's
/// token (so only the credential differs).
struct Route {
    method: Method,
    path: String,
    headers: Vec<(&'static str, String)>,
    body: Option<Vec<u8>>,
    /// Acts on the owner's moment (another user gets 404).
    owned: bool,
    /// Only for `events.admins` or `auth.admins` (a non-admin gets 403).
    admin: bool,
}

fn route(method: Method, path: &str) -> Route {
    Route {
        method,
        path: path.to_string(),
        headers: Vec::new(),
        body: None,
        owned: false,
        admin: false,
    }
}

fn sign(private: &str, claims: &Value) -> String {
    let key = EncodingKey::from_ed_pem(private.as_bytes()).unwrap();
    jsonwebtoken::encode(&Header::new(Algorithm::EdDSA), claims, &key).unwrap()
}

fn now() -> i64 {
    jsonwebtoken::get_current_timestamp() as i64
}

/// The bad credentials, as `Authorization` header values (`None`: no header).
fn bad_credentials(
    private: &str,
    public: &str,
    other_private: &str,
) -> Vec<(&'static str, Option<String>)> {
    let t = now();
    let claims = |iat: i64, exp: i64| json!({"sub": "alice", "iat": iat, "exp": exp});
    let unsigned = |alg: &str| {
        format!(
            "{}.{}.",
            B64.encode(format!(r#"{{"alg":"{alg}","typ":"JWT"}}"#)),
            B64.encode(claims(t, t + 600).to_string())
        )
    };
    let hs256 = jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims(t, t + 600),
        &EncodingKey::from_secret(public.as_bytes()),
    )
    .unwrap();
    vec![
        ("no token", None),
        ("malformed", Some("Bearer not.a.jwt".into())),
        ("empty bearer", Some("Bearer ".into())),
        (
            "another scheme",
            Some(format!("Basic {}", B64.encode("alice:secret"))),
        ),
        (
            "expired",
            Some(format!(
                "Bearer {}",
                sign(private, &claims(t - 7200, t - 3600))
            )),
        ),
        (
            "not yet valid",
            Some(format!(
                "Bearer {}",
                sign(
                    private,
                    &json!({"sub": "alice", "iat": t, "nbf": t + 3600, "exp": t + 7200})
                )
            )),
        ),
        (
            "wrong key",
            Some(format!(
                "Bearer {}",
                sign(other_private, &claims(t, t + 600))
            )),
        ),
        ("alg none", Some(format!("Bearer {}", unsigned("none")))),
        (
            "alg none, signed part dropped",
            Some(format!("Bearer {}", unsigned("None"))),
        ),
        (
            "HS256 with the public key as secret",
            Some(format!("Bearer {hs256}")),
        ),
        (
            "tampered subject",
            Some({
                let good = sign(private, &claims(t, t + 600));
                let mut parts: Vec<&str> = good.split('.').collect();
                let forged =
                    B64.encode(json!({"sub": "bob", "iat": t, "exp": t + 600}).to_string());
                parts[1] = &forged;
                format!("Bearer {}", parts.join("."))
            }),
        ),
        (
            "subject with a space",
            Some(format!(
                "Bearer {}",
                sign(
                    private,
                    &json!({"sub": "alice smith", "iat": t, "exp": t + 600})
                )
            )),
        ),
        (
            "no subject",
            Some(format!(
                "Bearer {}",
                sign(private, &json!({"iat": t, "exp": t + 600}))
            )),
        ),
        (
            "no expiry",
            Some(format!(
                "Bearer {}",
                sign(private, &json!({"sub": "alice", "iat": t}))
            )),
        ),
    ]
}

async fn send(s: &support::Stack, r: &Route, auth: Option<&str>) -> (u16, Value) {
    let mut req = s
        .http
        .request(r.method.clone(), format!("{}{}", s.base, r.path));
    for (k, v) in &r.headers {
        req = req.header(*k, v);
    }
    if let Some(a) = auth {
        req = req.header("authorization", a);
    }
    if let Some(b) = &r.body {
        req = req.body(b.clone());
    }
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    let body = resp.bytes().await.unwrap();
    (status, serde_json::from_slice(&body).unwrap_or(Value::Null))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_route_refuses_every_bad_credential_and_other_users_moments() {
    let dir = tempfile::tempdir().unwrap();
    let s = support::start(dir.path(), |c| {
        c.events.admins = vec!["root".into()];
    })
    .await;
    let (private, public) = common::auth::ensure_dev_key(&dir.path().join("data")).unwrap();
    let other = tempfile::tempdir().unwrap();
    let (other_private, _) = common::auth::ensure_dev_key(other.path()).unwrap();
    let bob = format!(
        "Bearer {}",
        common::auth::mint(&private, "bob", std::time::Duration::from_secs(600)).unwrap()
    );

    // alice's upload (and so her moment)
    let (upload_url, moment) = s.create(1000).await;
    let upload = upload_url.trim_start_matches(&s.base).to_string();
    // and a Q&A session on it, for the WebSocket route
    let r = s
        .http
        .post(format!("{}/v1/moments/{moment}/qa", s.base))
        .bearer_auth(&s.token)
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let session: Value = r.json().await.unwrap();
    let ws_path = session["ws_url"].as_str().unwrap().to_string();
    let tus = |r: Route| Route {
        headers: vec![("tus-resumable", "1.0.0".into())],
        ..r
    };
    let routes = vec![
        Route {
            headers: vec![
                ("tus-resumable", "1.0.0".into()),
                ("upload-length", "1000".into()),
            ],
            ..route(Method::POST, "/files")
        },
        Route {
            owned: true,
            ..tus(route(Method::HEAD, &upload))
        },
        Route {
            owned: true,
            headers: vec![
                ("tus-resumable", "1.0.0".into()),
                ("upload-offset", "0".into()),
                ("content-type", "application/offset+octet-stream".into()),
            ],
            body: Some(vec![0; 10]),
            ..route(Method::PATCH, &upload)
        },
        Route {
            owned: true,
            ..tus(route(Method::DELETE, &upload))
        },
        Route {
            owned: true,
            ..route(Method::GET, &format!("/v1/moments/{moment}"))
        },
        Route {
            owned: true,
            ..route(Method::GET, &format!("/v1/moments/{moment}/events"))
        },
        Route {
            owned: true,
            headers: vec![("content-type", "application/json".into())],
            body: Some(b"{}".to_vec()),
            ..route(Method::POST, &format!("/v1/moments/{moment}/qa"))
        },
        route(Method::POST, "/v1/tickets"),
        route(Method::POST, "/v1/auth/revoke"),
        Route {
            admin: true,
            headers: vec![("content-type", "application/json".into())],
            body: Some(br#"{"user": "nobody"}"#.to_vec()),
            ..route(Method::POST, "/v1/admin/revocations")
        },
        Route {
            owned: true,
            // a real upgrade request, so only the credential decides
            headers: vec![
                ("connection", "upgrade".into()),
                ("upgrade", "websocket".into()),
                ("sec-websocket-version", "13".into()),
                ("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ==".into()),
            ],
            ..route(Method::GET, &ws_path)
        },
        Route {
            headers: vec![("content-type", "application/json".into())],
            body: Some(br#"{"text":"Hello.","format":"pcm16"}"#.to_vec()),
            ..route(Method::POST, "/v1/tts")
        },
        Route {
            body: Some(vec![0; 3200]),
            ..route(Method::POST, "/v1/asr?format=pcm16")
        },
        route(Method::GET, "/v1/users/me/profile"),
        Route {
            admin: true,
            ..route(Method::GET, "/v1/admin/events")
        },
        Route {
            admin: true,
            ..route(Method::GET, "/v1/admin/events/dead?limit=5")
        },
        Route {
            admin: true,
            ..route(Method::POST, "/v1/admin/events/dead/replay")
        },
    ];

    // revoked: one of alice's tokens by its id, and every token of carol up to now
    let stolen =
        common::auth::mint(&private, "alice", std::time::Duration::from_secs(600)).unwrap();
    let carols =
        common::auth::mint(&private, "carol", std::time::Duration::from_secs(600)).unwrap();
    use common::auth::revoke::{Revocation, revoke};
    let jti = s
        .running
        .as_ref()
        .unwrap()
        .services
        .auth
        .verify(&stolen)
        .unwrap()
        .jti
        .unwrap();
    revoke(&s.db, &Revocation::Token { jti, expires: None }, "alice")
        .await
        .unwrap();
    revoke(
        &s.db,
        &Revocation::User {
            user: "carol".into(),
            before: now(),
        },
        "root",
    )
    .await
    .unwrap();
    let mut credentials = bad_credentials(&private, &public, &other_private);
    credentials.push(("revoked by its id", Some(format!("Bearer {stolen}"))));
    credentials.push((
        "revoked with its user's tokens",
        Some(format!("Bearer {carols}")),
    ));
    // the in-process node hears its own revocations at once; give its reader a moment anyway
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;

    let mut failures = Vec::new();
    for (what, cred) in credentials {
        for r in &routes {
            let (status, body) = send(&s, r, cred.as_deref()).await;
            // a HEAD answer has no body
            let ok = status == 401
                && (r.method == Method::HEAD
                    || body["code"] == "unauthorized"
                        && body["error"].as_str().is_some_and(|e| !e.is_empty()));
            if !ok {
                failures.push(format!("{what}: {} {} → {status} {body}", r.method, r.path));
            }
        }
    }
    // another user: the moment's routes do not reveal it; the admin routes refuse
    for r in routes.iter().filter(|r| r.owned || r.admin) {
        let (status, body) = send(&s, r, Some(&bob)).await;
        let want = if r.admin { 403 } else { 404 };
        if status != want || (r.method != Method::HEAD && body["code"].as_str().is_none()) {
            failures.push(format!(
                "bob: {} {} → {status} {body} (want {want})",
                r.method, r.path
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} answers were wrong:\n{}",
        failures.len(),
        failures.join("\n")
    );

    // the owner's token still works on her routes (the table's requests were valid ones)
    let m = s.moment(&moment).await;
    assert_eq!(m["id"], moment.as_str(), "{m}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_request_headers_get_431_and_normal_ones_pass() {
    let dir = tempfile::tempdir().unwrap();
    let s = support::start(dir.path(), |_| {}).await;
    for path in [
        "/healthz",
        "/files",
        "/v1/users/me/profile",
        "/hls/x/master.m3u8",
    ] {
        let r = s
            .http
            .get(format!("{}{path}", s.base))
            .bearer_auth(&s.token)
            .header("x-padding", "a".repeat(64 * 1024))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 431, "{path}");
        let body: Value = r.json().await.unwrap();
        assert_eq!(body["code"], "headers_too_large", "{path}: {body}");
    }
    // a long token and 10 kB of tus metadata are under the limit
    let meta = format!("filename {}", B64.encode("x".repeat(10 * 1024)));
    let r = s
        .http
        .post(format!("{}/files", s.base))
        .bearer_auth(&s.token)
        .header("tus-resumable", "1.0.0")
        .header("upload-length", "100")
        .header("upload-metadata", meta)
        .send()
        .await
        .unwrap();
    assert_ne!(r.status(), 431);
    let r = s
        .http
        .get(format!("{}/healthz", s.base))
        .header("x-padding", "a".repeat(16 * 1024))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
}

/// `POST /v1/tickets` with `token`: its status (200 while the token is good).
async fn ticket_status(http: &reqwest::Client, node: &support::Node, token: &str) -> u16 {
    http.post(format!("{}/v1/tickets", node.base))
        .bearer_auth(token)
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

/// Waits until `node` refuses `token` with 401; returns how long that took. Fails after 1 s.
async fn refused_within_a_second(
    http: &reqwest::Client,
    node: &support::Node,
    token: &str,
) -> u128 {
    let start = std::time::Instant::now();
    loop {
        let status = ticket_status(http, node, token).await;
        if status == 401 {
            return start.elapsed().as_millis();
        }
        assert_eq!(status, 200, "unexpected answer while waiting");
        assert!(
            start.elapsed() < std::time::Duration::from_secs(1),
            "{} still accepts a revoked token after a second",
            node.base
        );
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
}

fn jti(token: &str) -> String {
    let payload = token.split('.').nth(1).unwrap();
    let claims: Value = serde_json::from_slice(&B64.decode(payload).unwrap()).unwrap();
    claims["jti"].as_str().unwrap().to_string()
}

/// Two nodes on one database: a token revoked through either (by its user, by an operator, by
/// `moments revoke`) is refused by the other within a second; bad revocation requests get 400
/// and a non-admin 403.
async fn revocation_holds_across_nodes(db_url: &str) {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("moments.toml"),
        "[auth]\nadmins = [\"root\"]\n",
    )
    .unwrap();
    let (private, _) = common::auth::ensure_dev_key(&dir.path().join("data")).unwrap();
    let mint = |user: &str| {
        common::auth::mint(&private, user, std::time::Duration::from_secs(600)).unwrap()
    };
    let env = [("MOMENTS_DATABASE_URL", db_url)];
    let a = support::node(dir.path(), "api", &env).await;
    let b = support::node(dir.path(), "api", &env).await;
    let http = reqwest::Client::new();
    let (t1, t2, dave, root) = (mint("alice"), mint("alice"), mint("dave"), mint("root"));
    for t in [&t1, &t2, &dave, &root] {
        assert_eq!(ticket_status(&http, &a, t).await, 200);
        assert_eq!(ticket_status(&http, &b, t).await, 200);
    }
    let mut took = Vec::new();

    // alice revokes the token she sends, on node A: B refuses it, her other token still works
    let r = http
        .post(format!("{}/v1/auth/revoke", a.base))
        .bearer_auth(&t1)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["revoked"]["jti"], jti(&t1).as_str(), "{body}");
    took.push(refused_within_a_second(&http, &b, &t1).await);
    assert_eq!(ticket_status(&http, &a, &t1).await, 401);
    assert_eq!(ticket_status(&http, &b, &t2).await, 200);

    // "log out everywhere" on B: A refuses t2; a token issued afterwards works
    let r = http
        .post(format!("{}/v1/auth/revoke", b.base))
        .bearer_auth(&t2)
        .header("content-type", "application/json")
        .body(r#"{"all": true}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    took.push(refused_within_a_second(&http, &a, &t2).await);
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await; // the next second
    let t3 = mint("alice");
    assert_eq!(ticket_status(&http, &a, &t3).await, 200);
    assert_eq!(ticket_status(&http, &b, &t3).await, 200);

    // the operators' route: 403 for alice, bad bodies 400, then dave is cut off on both
    let admin = |token: &str, body: &str| {
        http.post(format!("{}/v1/admin/revocations", a.base))
            .bearer_auth(token)
            .header("content-type", "application/json")
            .body(body.to_string())
            .send()
    };
    let r = admin(&t3, r#"{"user": "dave"}"#).await.unwrap();
    assert_eq!(r.status(), 403);
    for bad in [
        r#"{"jti": "x", "user": "dave"}"#,
        r#"{}"#,
        r#"{"user": "da ve"}"#,
        r#"{"jti": ""}"#,
        r#"{"user": "dave", "before": -5}"#,
        r#"{"user": "dave", "bogus": 1}"#,
        "not json",
    ] {
        let r = admin(&root, bad).await.unwrap();
        assert_eq!(r.status(), 400, "{bad}");
        let body: Value = r.json().await.unwrap();
        assert_eq!(body["code"], "bad_request", "{bad}: {body}");
        assert!(body["error"].as_str().is_some_and(|e| !e.is_empty()));
    }
    assert_eq!(
        ticket_status(&http, &b, &dave).await,
        200,
        "bad requests revoked nothing"
    );
    let r = admin(&root, r#"{"user": "dave"}"#).await.unwrap();
    assert_eq!(r.status(), 201);
    took.push(refused_within_a_second(&http, &b, &dave).await);
    let r = http
        .post(format!("{}/v1/auth/revoke", a.base))
        .bearer_auth(&t3)
        .body("{\"everything\": 1}")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400, "an unknown field is refused");

    // an operator on the command line
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_moments"))
        .current_dir(dir.path())
        .env("MOMENTS_DATABASE_URL", db_url)
        .args(["revoke", "--jti", &jti(&t3)])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    took.push(refused_within_a_second(&http, &a, &t3).await);
    took.push(refused_within_a_second(&http, &b, &t3).await);
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_moments"))
        .current_dir(dir.path())
        .env("MOMENTS_DATABASE_URL", db_url)
        .args(["revoke", "--user", "a b"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("user id"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!("revoked tokens refused by the other node after {took:?} ms");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_token_is_refused_on_every_node_within_a_second_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    revocation_holds_across_nodes(&format!("sqlite://{}", dir.path().join("m.db").display())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_token_is_refused_on_every_node_within_a_second_postgres() {
    let Some(pg) = common::testing::fresh_pg().await else {
        return; // MOMENTS_TEST_SKIP_PG=1: fresh_pg printed why
    };
    revocation_holds_across_nodes(&pg.url).await;
}
