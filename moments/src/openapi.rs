//! The OpenAPI document of the whole service: every crate's JSON routes (each part generated
//! from the handlers that serve it), served at `GET /openapi.json`, printed by
//! `moments openapi` and kept in the repository as `docs/openapi.json`.

use axum::Json;
use axum::Router;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

/// The whole document, every role's routes.
pub fn document() -> utoipa::openapi::OpenApi {
    common::api::document([
        common::ops::openapi(),
        routes().into_openapi(),
        common::auth::tickets_openapi(),
        common::auth::revoke::openapi(),
        common::events::admin::openapi(),
        ingest::handler::openapi(),
        packager::status::openapi(),
        asr_tts::api::openapi(),
        crate::web::openapi(),
    ])
}

/// The document as the repository keeps it: pretty JSON and a final newline.
pub fn pretty() -> String {
    let mut text = document()
        .to_pretty_json()
        .unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}"));
    text.push('\n');
    text
}

/// `GET /openapi.json` (every process serves it).
pub fn router() -> Router {
    routes().split_for_parts().0
}

fn routes() -> OpenApiRouter {
    OpenApiRouter::new().routes(routes!(openapi_json))
}

/// This document. Needs no token.
#[utoipa::path(get, path = "/openapi.json", tag = "operations",
    responses((status = 200, description = "The OpenAPI 3.1 document", body = Object)))]
async fn openapi_json() -> Json<serde_json::Value> {
    Json(serde_json::to_value(document()).unwrap_or_default())
}
