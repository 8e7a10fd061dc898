//! Operational routes: `/healthz` (the process answers), `/readyz` (the database and the object
//! store are really reachable) and `/metrics`.

use std::sync::Arc;

use axum::extract::{FromRef, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};
use serde_json::json;

use crate::db::Db;
use crate::metrics::Metrics;
use crate::store::Store;

/// What the ops routes need.
#[derive(Clone)]
pub struct OpsState {
    /// Metadata database.
    pub db: Db,
    /// Object store.
    pub store: Store,
    /// Metrics registry.
    pub metrics: Arc<Metrics>,
}

impl FromRef<OpsState> for Arc<Metrics> {
    fn from_ref(s: &OpsState) -> Self {
        s.metrics.clone()
    }
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
    let db = match tokio::time::timeout(timeout, s.db.ping()).await {
        Ok(Ok(())) => "ok".to_string(),
        Ok(Err(e)) => e.to_string(),
        Err(_) => "timed out".to_string(),
    };
    let storage = match tokio::time::timeout(timeout, s.store.check()).await {
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
