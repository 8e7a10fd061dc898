//! Operators' routes over the outbox, for the user ids in `events.admins` (403 for anyone
//! else, 401 without a token):
//!
//! - `GET  /v1/admin/events` — pending and dead deliveries by target, disabled endpoints
//! - `GET  /v1/admin/events/dead?limit=N` — dead-lettered deliveries with their events
//! - `POST /v1/admin/events/dead/replay` — every dead-lettered delivery is tried again
//! - `POST /v1/admin/events/{event_id}/replay[?target=T]` — one event's dead deliveries again
//! - `POST /v1/admin/events/endpoints/{name}/enable` — send to an endpoint disabled by a 410

use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{Value, json};

use super::outbox;
use crate::ApiError;
use crate::auth::User;
use crate::db::Change;

/// What the routes need.
#[derive(Clone)]
pub struct AdminState {
    /// The outbox's database, auth and the rest.
    pub shared: crate::service::Shared,
    /// `events.admins`.
    pub admins: Arc<Vec<String>>,
}

crate::shared_state!(AdminState);

/// The routes.
pub fn router(state: AdminState) -> Router {
    Router::new()
        .route("/v1/admin/events", get(stats))
        .route("/v1/admin/events/dead", get(dead))
        .route("/v1/admin/events/dead/replay", post(replay_all))
        .route("/v1/admin/events/{event}/replay", post(replay))
        .route("/v1/admin/events/endpoints/{name}/enable", post(enable))
        .with_state(state)
}

fn admin(s: &AdminState, user: &str) -> Result<(), ApiError> {
    if s.admins.iter().any(|a| a == user) {
        Ok(())
    } else {
        Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            "this route is for the operators listed in events.admins",
        ))
    }
}

async fn stats(State(s): State<AdminState>, User(user): User) -> Result<Json<Value>, ApiError> {
    admin(&s, &user)?;
    Ok(Json(json!(outbox::stats(&s.shared.db).await?)))
}

#[derive(Deserialize)]
struct Limit {
    limit: Option<i64>,
}

async fn dead(
    State(s): State<AdminState>,
    User(user): User,
    Query(q): Query<Limit>,
) -> Result<Json<Value>, ApiError> {
    admin(&s, &user)?;
    let limit = q.limit.unwrap_or(100).clamp(1, 1000);
    Ok(Json(
        json!({ "dead": outbox::dead(&s.shared.db, limit).await? }),
    ))
}

async fn replay_all(
    State(s): State<AdminState>,
    User(user): User,
) -> Result<Json<Value>, ApiError> {
    admin(&s, &user)?;
    let n = outbox::replay_all(&s.shared.db).await?;
    s.shared.db.notify(Change::Events);
    Ok(Json(json!({ "replayed": n })))
}

#[derive(Deserialize)]
struct Target {
    target: Option<String>,
}

async fn replay(
    State(s): State<AdminState>,
    User(user): User,
    Path(event): Path<String>,
    Query(q): Query<Target>,
) -> Result<Json<Value>, ApiError> {
    admin(&s, &user)?;
    let n = outbox::replay(&s.shared.db, &event, q.target.as_deref()).await?;
    if n == 0 {
        return Err(ApiError::not_found(
            "no dead-lettered delivery of that event (and target)",
        ));
    }
    s.shared.db.notify(Change::Events);
    Ok(Json(json!({ "replayed": n })))
}

async fn enable(
    State(s): State<AdminState>,
    User(user): User,
    Path(name): Path<String>,
) -> Result<Json<Value>, ApiError> {
    admin(&s, &user)?;
    if !outbox::enable(&s.shared.db, &name).await? {
        return Err(ApiError::not_found("no disabled endpoint of that name"));
    }
    s.shared.db.notify(Change::Events);
    Ok(Json(json!({ "enabled": name })))
}
