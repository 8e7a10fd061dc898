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
use axum::routing::get;
use common::ApiError;
use common::api::ErrorBody;
use serde::{Deserialize, Serialize};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

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
    routes()
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
        .with_state(state)
        .split_for_parts()
        .0
}

fn routes() -> OpenApiRouter<WebState> {
    OpenApiRouter::new().routes(routes!(dev_token))
}

/// The page's JSON route, for the OpenAPI document.
pub fn openapi() -> utoipa::openapi::OpenApi {
    routes().into_openapi()
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

/// `POST /ui/dev-token`'s body.
#[derive(Deserialize, utoipa::ToSchema)]
struct TokenRequest {
    /// The user the token is for (letters, digits, `._@-`, at most 128 bytes).
    user: String,
}

/// A development token.
#[derive(Serialize, utoipa::ToSchema)]
struct DevToken {
    /// The bearer token.
    token: String,
    /// Its user.
    user: String,
    /// Seconds it is valid.
    expires_in: u64,
}

/// A development token for the web page, signed with the data directory's key: only while the
/// server verifies tokens with that key (the embedded defaults) and `web.dev_tokens` is on,
/// else 404. Needs no token.
#[utoipa::path(post, path = "/ui/dev-token", tag = "web",
    request_body(content = TokenRequest),
    responses(
        (status = 200, description = "The token", body = DevToken),
        (status = "4XX", description = "Development tokens are off (404), or the user id is not valid", body = ErrorBody),
    ))]
async fn dev_token(State(s): State<WebState>, body: Option<Json<TokenRequest>>) -> Response {
    let Some(key) = &s.dev_key else {
        return ApiError::not_found(
            "development tokens are off: this server verifies tokens with a configured public key (or web.dev_tokens = false)",
        )
        .into_response();
    };
    let user = body.map(|Json(b)| b.user).unwrap_or_default();
    // the one user-id rule, the same that every verified token's `sub` must pass
    if let Err(e) = common::auth::check_user_id(&user) {
        return ApiError::bad_request(e).into_response();
    }
    match common::auth::mint(key, &user, DEV_TOKEN_TTL) {
        Ok(token) => Json(DevToken {
            token,
            user,
            expires_in: DEV_TOKEN_TTL.as_secs(),
        })
        .into_response(),
        Err(e) => ApiError::internal(e).into_response(),
    }
}
