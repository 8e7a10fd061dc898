//! Operational routes: `/healthz` (the process answers), `/readyz` (the database and the object
//! store are really reachable) and `/metrics`.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};
use serde_json::json;

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
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(crate::metrics::handler))
        .with_state(state)
}

async fn healthz() -> impl IntoResponse {
    Json(json!({"status": "ok"}))
}

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
    (
        status,
        Json(json!({
            "status": if ready { "ready" } else { "not ready" },
            "database": db,
            "storage": storage,
        })),
    )
}
