//! Operational routes: `/healthz` (the process answers), `/readyz` (the database and the object
//! store are really reachable) and `/metrics`.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};
use serde::Serialize;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

/// What the ops routes need.
#[derive(Clone)]
pub struct OpsState {
    /// The database and store `/readyz` checks, the registry `/metrics` renders.
    pub shared: crate::service::Shared,
}

crate::shared_state!(OpsState);

/// The ops routes as a service (every process mounts them).
pub fn service(shared: &crate::service::Shared) -> crate::service::Service {
    crate::service::Service::routes(router(OpsState {
        shared: shared.clone(),
    }))
}

/// The router for `/healthz`, `/readyz` and `/metrics`.
pub fn router(state: OpsState) -> Router {
    let (router, _) = routes()
        .route("/metrics", get(crate::metrics::handler))
        .with_state(state)
        .split_for_parts();
    router
}

/// The JSON routes, documented.
fn routes() -> OpenApiRouter<OpsState> {
    OpenApiRouter::new()
        .routes(routes!(healthz))
        .routes(routes!(readyz))
}

/// The routes' part of the OpenAPI document.
pub fn openapi() -> utoipa::openapi::OpenApi {
    routes().into_openapi()
}

/// `/healthz`'s answer.
#[derive(Serialize, utoipa::ToSchema)]
pub struct Health {
    /// Always `ok`.
    pub status: String,
}

/// `/readyz`'s answer.
#[derive(Serialize, utoipa::ToSchema)]
pub struct Readiness {
    /// `ready` or `not ready`.
    pub status: String,
    /// `ok`, or why the database cannot be used.
    pub database: String,
    /// `ok`, or why the object store cannot be used.
    pub storage: String,
}

/// The process answers (liveness). Needs no token.
#[utoipa::path(get, path = "/healthz", tag = "operations",
    responses((status = 200, description = "The process is up", body = Health)))]
async fn healthz() -> Json<Health> {
    Json(Health {
        status: "ok".into(),
    })
}

/// The database and the object store are really reachable (readiness). Needs no token.
#[utoipa::path(get, path = "/readyz", tag = "operations",
    responses(
        (status = 200, description = "Ready", body = Readiness),
        (status = 503, description = "Not ready: the database or the store is unreachable", body = Readiness),
    ))]
async fn readyz(State(s): State<OpsState>) -> impl IntoResponse {
    let timeout = std::time::Duration::from_secs(3);
    let db = match tokio::time::timeout(timeout, s.shared.db.ping()).await {
        Ok(Ok(())) => "ok".to_string(),
        Ok(Err(e)) => e.to_string(),
        Err(_) => "timed out".to_string(),
    };
    let storage = match tokio::time::timeout(timeout, s.shared.store.check()).await {
        Ok(Ok(())) => "ok".to_string(),
        Ok(Err(e)) => e.to_string(),
        Err(_) => "timed out".to_string(),
    };
    let ready = db == "ok" && storage == "ok";
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let status_text = if ready { "ready" } else { "not ready" };
    (
        status,
        Json(Readiness {
            status: status_text.into(),
            database: db,
            storage,
        }),
    )
}
