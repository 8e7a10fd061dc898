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
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::outbox;
use crate::ApiError;
use crate::api::ErrorBody;
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
    routes().with_state(state).split_for_parts().0
}

fn routes() -> OpenApiRouter<AdminState> {
    OpenApiRouter::new()
        .routes(routes!(stats))
        .routes(routes!(dead))
        .routes(routes!(replay_all))
        .routes(routes!(replay))
        .routes(routes!(enable))
}

/// The routes' part of the OpenAPI document.
pub fn openapi() -> utoipa::openapi::OpenApi {
    routes().into_openapi()
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

/// Pending and dead deliveries by target, and the disabled endpoints (for `events.admins`).
#[utoipa::path(get, path = "/v1/admin/events", tag = "admin",
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The outbox's figures", body = outbox::Stats),
        (status = "4XX", description = "Refused (not an operator)", body = ErrorBody),
    ))]
async fn stats(
    State(s): State<AdminState>,
    User(user): User,
) -> Result<Json<outbox::Stats>, ApiError> {
    admin(&s, &user)?;
    Ok(Json(outbox::stats(&s.shared.db).await?))
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
struct Limit {
    /// At most this many (1–1000, default 100).
    limit: Option<i64>,
}

/// Dead deliveries.
#[derive(Serialize, utoipa::ToSchema)]
struct DeadList {
    /// Oldest first.
    dead: Vec<outbox::Dead>,
}

/// How many deliveries were queued again.
#[derive(Serialize, utoipa::ToSchema)]
struct Replayed {
    /// Deliveries queued again.
    replayed: u64,
}

/// The endpoint sent to again.
#[derive(Serialize, utoipa::ToSchema)]
struct Enabled {
    /// Its name.
    enabled: String,
}

/// Dead-lettered deliveries with their events, oldest first (for `events.admins`).
#[utoipa::path(get, path = "/v1/admin/events/dead", tag = "admin",
    security(("bearer" = [])),
    params(Limit),
    responses(
        (status = 200, description = "The dead deliveries", body = DeadList),
        (status = "4XX", description = "Refused (not an operator, bad query)", body = ErrorBody),
    ))]
async fn dead(
    State(s): State<AdminState>,
    User(user): User,
    Query(q): Query<Limit>,
) -> Result<Json<DeadList>, ApiError> {
    admin(&s, &user)?;
    let limit = q.limit.unwrap_or(100).clamp(1, 1000);
    Ok(Json(DeadList {
        dead: outbox::dead(&s.shared.db, limit).await?,
    }))
}

/// Every dead-lettered delivery is tried again (for `events.admins`).
#[utoipa::path(post, path = "/v1/admin/events/dead/replay", tag = "admin",
    security(("bearer" = [])),
    responses(
        (status = 200, description = "Queued again", body = Replayed),
        (status = "4XX", description = "Refused (not an operator)", body = ErrorBody),
    ))]
async fn replay_all(
    State(s): State<AdminState>,
    User(user): User,
) -> Result<Json<Replayed>, ApiError> {
    admin(&s, &user)?;
    let n = outbox::replay_all(&s.shared.db).await?;
    s.shared.db.notify(Change::Events);
    Ok(Json(Replayed { replayed: n }))
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
struct Target {
    /// Only the deliveries to this target.
    target: Option<String>,
}

/// One event's dead deliveries are tried again (for `events.admins`).
#[utoipa::path(post, path = "/v1/admin/events/{event}/replay", tag = "admin",
    security(("bearer" = [])),
    params(("event" = String, Path, description = "The event's id"), Target),
    responses(
        (status = 200, description = "Queued again", body = Replayed),
        (status = "4XX", description = "Refused (not an operator), or no dead delivery of that event", body = ErrorBody),
    ))]
async fn replay(
    State(s): State<AdminState>,
    User(user): User,
    Path(event): Path<String>,
    Query(q): Query<Target>,
) -> Result<Json<Replayed>, ApiError> {
    admin(&s, &user)?;
    let n = outbox::replay(&s.shared.db, &event, q.target.as_deref()).await?;
    if n == 0 {
        return Err(ApiError::not_found(
            "no dead-lettered delivery of that event (and target)",
        ));
    }
    s.shared.db.notify(Change::Events);
    Ok(Json(Replayed { replayed: n }))
}

/// Sends to an endpoint again after a 410 disabled it (for `events.admins`).
#[utoipa::path(post, path = "/v1/admin/events/endpoints/{name}/enable", tag = "admin",
    security(("bearer" = [])),
    params(("name" = String, Path, description = "The endpoint's name in `events.endpoints`")),
    responses(
        (status = 200, description = "Enabled", body = Enabled),
        (status = "4XX", description = "Refused (not an operator), or no disabled endpoint of that name", body = ErrorBody),
    ))]
async fn enable(
    State(s): State<AdminState>,
    User(user): User,
    Path(name): Path<String>,
) -> Result<Json<Enabled>, ApiError> {
    admin(&s, &user)?;
    if !outbox::enable(&s.shared.db, &name).await? {
        return Err(ApiError::not_found("no disabled endpoint of that name"));
    }
    s.shared.db.notify(Change::Events);
    Ok(Json(Enabled { enabled: name }))
}
