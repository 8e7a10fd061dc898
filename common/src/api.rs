//! The API contract: an OpenAPI 3.1 document of every JSON route, generated from the handlers
//! that serve them. Each crate builds its JSON routes with `utoipa_axum`'s `OpenApiRouter`
//! from `#[utoipa::path]` handlers, and the same builder gives both the router and that crate's
//! part of the document, so a route cannot be served undocumented nor documented unserved.
//! `moments openapi` prints the whole document, `GET /openapi.json` serves it and
//! `docs/openapi.json` keeps it in the repository (a test checks it is current).
//!
//! Every error answer, of every route, has the body [`ErrorBody`]: `ApiError` writes it, and
//! [`json_errors`] rewrites the plain-text answers of the framework itself (a malformed JSON
//! body, a bad query string, an unknown path, a wrong method).

use axum::body::Body;
use axum::extract::Request;
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::{InfoBuilder, OpenApi, OpenApiBuilder};

/// The body of every error answer (4xx and 5xx) of every route.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ErrorBody {
    /// What went wrong, for a person.
    pub error: String,
    /// A stable, machine-readable code: `bad_request`, `unauthorized`, `forbidden`,
    /// `not_found`, `rate_limited`, `too_large`, `headers_too_large`, `unavailable`, …
    pub code: String,
}

/// The name of the bearer-token security scheme the operations refer to.
pub const BEARER: &str = "bearer";

/// The whole document from the crates' parts.
pub fn document(parts: impl IntoIterator<Item = OpenApi>) -> OpenApi {
    let info = InfoBuilder::new()
        .title("Moments")
        .version(env!("CARGO_PKG_VERSION"))
        .description(Some(
            "Upload short videos with tus (or the IETF resumable-upload draft), follow them to \
             an HLS ladder, and talk about them in a voice Q&A. Every route but the health \
             checks, this document, upload discovery and the page's token takes a bearer \
             token (an EdDSA JWT whose `sub` is the user); every error answer is \
             `{\"error\", \"code\"}`. HLS playback (`/hls/{id}/…`), the web page (`/`, \
             `/ui/…`) and `/metrics` are not JSON and are described in the README.",
        ))
        .build();
    let mut doc = OpenApiBuilder::new().info(info).build();
    for part in parts {
        doc.merge(part);
    }
    doc.components
        .get_or_insert_with(Default::default)
        .add_security_scheme(
            BEARER,
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("JWT")
                    .build(),
            ),
        );
    doc
}

/// The longest error text kept when a plain-text error answer is rewritten.
const MAX_TEXT: usize = 4096;

/// Middleware: error answers (4xx and 5xx) that are not JSON — the framework's own rejections,
/// a fallback 404, a 405 — are rewritten as [`ErrorBody`] with the original text as `error`,
/// and headers such as `Allow` kept. HEAD answers and answers without a body stay as they are.
pub async fn json_errors(req: Request, next: Next) -> Response {
    let head = req.method() == Method::HEAD;
    let resp = next.run(req).await;
    let status = resp.status();
    if head || !(status.is_client_error() || status.is_server_error()) {
        return resp;
    }
    let json = resp
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| {
            let ct = ct.split(';').next().unwrap_or("").trim();
            ct == "application/json" || ct.ends_with("+json")
        });
    if json {
        return resp;
    }
    let (mut parts, body) = resp.into_parts();
    let text = match axum::body::to_bytes(body, MAX_TEXT).await {
        Ok(b) => String::from_utf8_lossy(&b).trim().to_string(),
        Err(_) => String::new(),
    };
    let error = if text.is_empty() {
        status.canonical_reason().unwrap_or("error").to_string()
    } else {
        text
    };
    let body = ErrorBody {
        error,
        code: code_for(status).to_string(),
    };
    let bytes = serde_json::to_vec(&body).unwrap_or_default();
    parts.headers.remove(header::CONTENT_LENGTH);
    parts.headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    Response::from_parts(parts, Body::from(bytes)).into_response()
}

/// The `code` of an error answer that came without one.
pub fn code_for(status: StatusCode) -> &'static str {
    match status.as_u16() {
        400 => "bad_request",
        401 => "unauthorized",
        403 => "forbidden",
        404 => "not_found",
        405 => "method_not_allowed",
        406 => "not_acceptable",
        408 => "timeout",
        409 => "conflict",
        411 => "length_required",
        413 => "too_large",
        414 => "uri_too_long",
        415 => "unsupported_media_type",
        422 => "unprocessable",
        429 => "rate_limited",
        431 => "headers_too_large",
        503 => "unavailable",
        500..=599 => "internal",
        _ => "error",
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;
    use axum::Router;
    use axum::routing::post;
    use tower::ServiceExt;

    async fn call(app: &Router, req: Request) -> (StatusCode, String, Option<String>) {
        let resp = app.clone().oneshot(req).await.unwrap();
        let status = resp.status();
        let ct = resp
            .headers()
            .get(header::CONTENT_TYPE)
            .map(|v| v.to_str().unwrap().to_string());
        let body = axum::body::to_bytes(resp.into_body(), 1 << 20)
            .await
            .unwrap();
        (status, String::from_utf8(body.to_vec()).unwrap(), ct)
    }

    #[tokio::test]
    async fn the_frameworks_plain_text_errors_become_error_bodies() {
        #[derive(serde::Deserialize)]
        struct In {
            #[allow(dead_code)]
            n: u32,
        }
        let app = Router::new()
            .route("/x", post(|_: axum::Json<In>| async { "ok" }))
            .route(
                "/ok",
                post(|| async { crate::ApiError::bad_request("ours").into_response() }),
            )
            .layer(axum::middleware::from_fn(json_errors));
        let req = |m: &str, uri: &str, body: &str| {
            Request::builder()
                .method(m)
                .uri(uri)
                .header("content-type", "application/json")
                .body(Body::from(body.to_string()))
                .unwrap()
        };
        // malformed JSON: axum's 400 text, now an error body with its reason
        let (status, body, ct) = call(&app, req("POST", "/x", "{")).await;
        assert_eq!(status, 400);
        assert_eq!(ct.as_deref(), Some("application/json"));
        let b: ErrorBody = serde_json::from_str(&body).unwrap();
        assert_eq!(b.code, "bad_request");
        assert!(b.error.contains("JSON"), "{}", b.error);
        // wrong shape (422), unknown path (404, empty body), wrong method (405)
        let (status, body, _) = call(&app, req("POST", "/x", "{\"n\": -1}")).await;
        assert_eq!(status, 422);
        assert_eq!(
            serde_json::from_str::<ErrorBody>(&body).unwrap().code,
            "unprocessable"
        );
        let (status, body, _) = call(&app, req("GET", "/nowhere", "")).await;
        assert_eq!(status, 404);
        let b: ErrorBody = serde_json::from_str(&body).unwrap();
        assert_eq!(
            (b.code.as_str(), b.error.as_str()),
            ("not_found", "Not Found")
        );
        let (status, body, _) = call(&app, req("GET", "/x", "")).await;
        assert_eq!(status, 405);
        assert_eq!(
            serde_json::from_str::<ErrorBody>(&body).unwrap().code,
            "method_not_allowed"
        );
        // an ApiError passes untouched; a HEAD keeps its empty body
        let (_, body, _) = call(&app, req("POST", "/ok", "")).await;
        assert_eq!(body, r#"{"error":"ours","code":"bad_request"}"#);
        let (status, body, _) = call(&app, req("HEAD", "/nowhere", "")).await;
        assert_eq!((status.as_u16(), body.as_str()), (404, ""));
    }
}
