//! The web page at `GET /`: our own HTML, CSS and JS embedded in the binary; hls.js and
//! tus-js-client served from the npm packages `deploy/install-web.sh` installed (never
//! committed, never from a CDN). Without them the page still loads and says what to install.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::Router;
use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Deserialize;
use serde_json::json;

const INDEX: &str = include_str!("../web/index.html");
const APP_JS: &str = include_str!("../web/app.js");
const APP_CSS: &str = include_str!("../web/app.css");

/// The third-party scripts the page loads: URL name → file under `node_modules`.
const VENDOR: &[(&str, &str)] = &[
    ("hls.js", "hls.js/dist/hls.min.js"),
    ("tus.js", "tus-js-client/dist/tus.min.js"),
];

/// Lifetime of a page token.
const DEV_TOKEN_TTL: Duration = Duration::from_secs(12 * 3600);

/// What the page's routes need.
#[derive(Clone)]
pub struct WebState {
    /// Where the npm packages are.
    pub node_modules: PathBuf,
    /// The development signing key (PEM), only while tokens are verified with it.
    pub dev_key: Option<Arc<String>>,
}

/// `GET /`, `GET /ui/…`, `POST /ui/dev-token`.
pub fn router(state: WebState) -> Router {
    Router::new()
        .route("/", get(index))
        .route(
            "/ui/app.js",
            get(|| async { asset(APP_JS, "text/javascript; charset=utf-8") }),
        )
        .route(
            "/ui/app.css",
            get(|| async { asset(APP_CSS, "text/css; charset=utf-8") }),
        )
        .route("/ui/vendor/{name}", get(vendor))
        .route("/ui/dev-token", post(dev_token))
        .with_state(state)
}

fn asset(body: &'static str, content_type: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, HeaderValue::from_static(content_type)),
            (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
        ],
        body,
    )
        .into_response()
}

async fn index() -> Response {
    asset(INDEX, "text/html; charset=utf-8")
}

async fn vendor(
    State(s): State<WebState>,
    axum::extract::Path(name): axum::extract::Path<String>,
) -> Response {
    let Some((_, rel)) = VENDOR.iter().find(|(n, _)| *n == name) else {
        return (StatusCode::NOT_FOUND, "no such script\n").into_response();
    };
    let path = s.node_modules.join(rel);
    match tokio::fs::read(&path).await {
        Ok(bytes) => (
            [
                (header::CONTENT_TYPE, HeaderValue::from_static("text/javascript; charset=utf-8")),
                (header::CACHE_CONTROL, HeaderValue::from_static("public, max-age=3600")),
            ],
            bytes,
        )
            .into_response(),
        Err(_) => (
            StatusCode::NOT_FOUND,
            format!(
                "// {} is not installed: run deploy/install-web.sh (npm packages hls.js and tus-js-client into {})\n",
                path.display(),
                s.node_modules.display()
            ),
        )
            .into_response(),
    }
}

#[derive(Deserialize)]
struct TokenRequest {
    user: String,
}

async fn dev_token(State(s): State<WebState>, body: Option<Json<TokenRequest>>) -> Response {
    let Some(key) = &s.dev_key else {
        return (
            StatusCode::NOT_FOUND,
            Json(json!({"error": "development tokens are off: this server verifies tokens with a configured public key (or web.dev_tokens = false)"})),
        )
            .into_response();
    };
    let user = body.map(|Json(b)| b.user).unwrap_or_default();
    // the one user-id rule, the same that every verified token's `sub` must pass
    if let Err(e) = common::auth::check_user_id(&user) {
        return (
            StatusCode::BAD_REQUEST,
            Json(json!({"error": e, "code": "bad_request"})),
        )
            .into_response();
    }
    match common::auth::mint(key, &user, DEV_TOKEN_TTL) {
        Ok(token) => {
            Json(json!({"token": token, "user": user, "expires_in": DEV_TOKEN_TTL.as_secs()}))
                .into_response()
        }
        Err(e) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            Json(json!({"error": e.to_string()})),
        )
            .into_response(),
    }
}
