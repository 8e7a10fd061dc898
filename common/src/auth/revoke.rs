//! Token revocation: a stolen token is cut off before it expires, on every node within a
//! second.
//!
//! Two kinds, both kept in the `revocations` table of the shared database:
//! - one token, by its id (`jti`; [`super::mint`] gives every token one);
//! - every token of a user issued at or before a second `T` ("log out everywhere", or an
//!   operator cutting off an account; also the only way to revoke tokens that carry no `jti`).
//!
//! Verification stays a local, synchronous check with the public key: each process keeps the
//! revocations in memory ([`Revocations`]) and re-reads the rows written since its last read
//! every [`Config::revocation_poll_ms`](super::Config) (500 ms by default) and at once when a
//! PostgreSQL notification says another node revoked something. A token revoked on one node is
//! therefore refused on all of them within about half a second, whatever the database. A node
//! that cannot reach the database keeps what it had and retries.
//!
//! A third kind serves signed playback (`packager::signed`): every playback token of a moment
//! issued at or before a millisecond (`kind = 'playback'`, `subject` the moment, `before_s`
//! holding milliseconds), kept the same way, so `POST /v1/moments/{id}/revoke` reaches every
//! origin within the same bound.
//!
//! Rows are read again from a few seconds before the newest one seen, so a write whose
//! transaction committed late is not missed; merging a row twice changes nothing.

use std::collections::HashMap;
use std::sync::{Arc, RwLock, Weak};
use std::time::Duration;

use axum::Json;
use axum::extract::State;
use serde::{Deserialize, Serialize};
use sqlx::Row;

use super::{Claims, Error};
use crate::db::{Change, Db};
use crate::error::ApiError;

/// How far back each read starts before the newest row seen (ms): rows whose transaction
/// committed up to this much later than their timestamp are still picked up.
const OVERLAP_MS: i64 = 10_000;

/// What to revoke.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(untagged)]
pub enum Revocation {
    /// One token, by its `jti`.
    Token {
        /// The token id.
        jti: String,
        /// When the token expires anyway (seconds since epoch): the row may be dropped then.
        /// Unknown: kept.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        expires: Option<i64>,
    },
    /// Every token of `user` issued at or before `before` (seconds since epoch).
    User {
        /// The user id (token `sub`).
        user: String,
        /// Tokens whose `iat` is at or before this second are refused.
        before: i64,
    },
}

impl Revocation {
    /// Checks the fields of an outside request.
    pub fn validate(&self) -> Result<(), String> {
        match self {
            Revocation::Token { jti, .. } => {
                if jti.is_empty() || jti.len() > 128 || !jti.bytes().all(|b| b.is_ascii_graphic()) {
                    return Err("jti must be 1 to 128 printable ASCII characters".into());
                }
                Ok(())
            }
            Revocation::User { user, before } => {
                super::check_user_id(user)?;
                if *before < 0 {
                    return Err("before must be seconds since the epoch".into());
                }
                Ok(())
            }
        }
    }
}

/// The revocations a process knows, checked on every request.
#[derive(Debug, Default)]
struct Known {
    /// jti → when the row may be forgotten (seconds; `i64::MAX`: never).
    tokens: HashMap<String, i64>,
    /// user → tokens issued at or before this second are refused.
    users: HashMap<String, i64>,
    /// moment → playback tokens issued at or before this millisecond are refused.
    playback: HashMap<String, i64>,
    /// The newest `revoked_at` read (ms), where the next read starts (less the overlap).
    newest: i64,
}

impl Known {
    fn merge(&mut self, r: Revocation) {
        match r {
            Revocation::Token { jti, expires } => {
                self.tokens.insert(jti, expires.unwrap_or(i64::MAX));
            }
            Revocation::User { user, before } => {
                let e = self.users.entry(user).or_insert(before);
                *e = (*e).max(before);
            }
        }
    }

    fn check(&self, claims: &Claims) -> Result<(), Error> {
        if let Some(jti) = &claims.jti
            && self.tokens.contains_key(jti)
        {
            return Err(Error::Revoked("this token was revoked".into()));
        }
        if let Some(before) = self.users.get(&claims.sub)
            && i64::try_from(claims.iat).unwrap_or(i64::MAX) <= *before
        {
            return Err(Error::Revoked(format!(
                "tokens of this user issued at or before {before} were revoked"
            )));
        }
        Ok(())
    }
}

/// The revocations this process knows (see the module docs); shared by its [`super::Auth`].
#[derive(Debug, Default)]
pub struct Revocations {
    known: RwLock<Known>,
}

impl Revocations {
    /// Refuses a revoked token's claims.
    pub fn check(&self, claims: &Claims) -> Result<(), Error> {
        self.known
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .check(claims)
    }

    /// The cut-off of `moment`'s playback tokens (ms): those issued at or before it are
    /// refused.
    pub fn playback_cutoff(&self, moment: &str) -> Option<i64> {
        self.known
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .playback
            .get(moment)
            .copied()
    }

    /// Reads the rows written since the last read (all of them the first time); returns how
    /// many were read.
    pub async fn refresh(&self, db: &Db) -> Result<usize, crate::db::Error> {
        let since = {
            let k = self.known.read().unwrap_or_else(|p| p.into_inner());
            if k.newest == 0 {
                i64::MIN
            } else {
                k.newest - OVERLAP_MS
            }
        };
        let rows = sqlx::query(
            "SELECT kind, subject, before_s, expires_s, revoked_at FROM revocations \
             WHERE revoked_at >= $1",
        )
        .bind(since)
        .fetch_all(db.pool())
        .await?;
        let mut k = self.known.write().unwrap_or_else(|p| p.into_inner());
        let n = rows.len();
        for row in rows {
            let kind: String = row.try_get("kind")?;
            let subject: String = row.try_get("subject")?;
            let at: i64 = row.try_get("revoked_at")?;
            k.newest = k.newest.max(at);
            match kind.as_str() {
                "jti" => k.merge(Revocation::Token {
                    jti: subject,
                    expires: row.try_get("expires_s")?,
                }),
                "user" => k.merge(Revocation::User {
                    user: subject,
                    before: row.try_get("before_s")?,
                }),
                "playback" => {
                    let before: i64 = row.try_get("before_s")?;
                    let e = k.playback.entry(subject).or_insert(before);
                    *e = (*e).max(before);
                }
                other => tracing::warn!(kind = other, "unknown revocation kind; ignored"),
            }
        }
        let now = crate::ids::now_ms() / 1000;
        k.tokens.retain(|_, expires| *expires >= now - 60);
        Ok(n)
    }

    /// Keeps this set current while it is in use: re-reads every `poll` and whenever another
    /// node's change arrives; the task ends when the last handle on the set is dropped.
    pub fn spawn_refresh(self: &Arc<Self>, db: Db, poll: Duration) {
        let weak: Weak<Revocations> = Arc::downgrade(self);
        let mut changes = db.subscribe();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(poll.max(Duration::from_millis(10)));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut last_prune = std::time::Instant::now();
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    change = changes.recv() => match change {
                        Ok(Change::Revoked | Change::Resync) => {}
                        Ok(_) => continue,
                        Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                        Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
                    },
                }
                let Some(set) = weak.upgrade() else { return };
                if let Err(e) = set.refresh(&db).await {
                    tracing::debug!(error = %e, "cannot read revocations; keeping what is known");
                }
                if last_prune.elapsed() > Duration::from_secs(300) {
                    last_prune = std::time::Instant::now();
                    if let Err(e) = prune(&db).await {
                        tracing::debug!(error = %e, "cannot drop expired revocations");
                    }
                }
            }
        });
    }
}

/// Records a revocation (an existing one for the same token or user is updated: a user's cut-off
/// only moves forward), drops the user's outstanding stream tickets when all their tokens are
/// revoked, and tells the other nodes.
pub async fn revoke(db: &Db, r: &Revocation, by: &str) -> Result<(), crate::db::Error> {
    let now = crate::ids::now_ms();
    let mut tx = db.begin_write().await?;
    match r {
        Revocation::Token { jti, expires } => {
            sqlx::query(
                "INSERT INTO revocations (kind, subject, before_s, expires_s, revoked_at, revoked_by) \
                 VALUES ('jti', $1, 0, $2, $3, $4) \
                 ON CONFLICT (kind, subject) DO UPDATE SET revoked_at = excluded.revoked_at",
            )
            .bind(jti)
            .bind(*expires)
            .bind(now)
            .bind(by)
            .execute(&mut *tx)
            .await?;
        }
        Revocation::User { user, before } => {
            sqlx::query(
                "INSERT INTO revocations (kind, subject, before_s, expires_s, revoked_at, revoked_by) \
                 VALUES ('user', $1, $2, NULL, $3, $4) \
                 ON CONFLICT (kind, subject) DO UPDATE SET \
                 before_s = CASE WHEN excluded.before_s > revocations.before_s \
                 THEN excluded.before_s ELSE revocations.before_s END, \
                 revoked_at = excluded.revoked_at, revoked_by = excluded.revoked_by",
            )
            .bind(user)
            .bind(*before)
            .bind(now)
            .bind(by)
            .execute(&mut *tx)
            .await?;
            sqlx::query("DELETE FROM tickets WHERE user_id = $1")
                .bind(user)
                .execute(&mut *tx)
                .await?;
        }
    }
    tx.commit().await?;
    db.notify(Change::Revoked);
    Ok(())
}

/// Revokes every playback token of `moment` issued until now, and tells the other nodes;
/// returns the cut-off (ms since the epoch).
pub async fn revoke_playback(db: &Db, moment: &str, by: &str) -> Result<i64, crate::db::Error> {
    let now = crate::ids::now_ms();
    let mut tx = db.begin_write().await?;
    sqlx::query(
        "INSERT INTO revocations (kind, subject, before_s, expires_s, revoked_at, revoked_by) \
         VALUES ('playback', $1, $2, NULL, $2, $3) \
         ON CONFLICT (kind, subject) DO UPDATE SET before_s = excluded.before_s, \
         revoked_at = excluded.revoked_at, revoked_by = excluded.revoked_by",
    )
    .bind(moment)
    .bind(now)
    .bind(by)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    db.notify(Change::Revoked);
    Ok(now)
}

/// Drops token revocations whose token has expired anyway (with a minute to spare for the
/// verifier's leeway); returns how many.
pub async fn prune(db: &Db) -> Result<u64, crate::db::Error> {
    let now = crate::ids::now_ms() / 1000;
    let done = sqlx::query(
        "DELETE FROM revocations WHERE kind = 'jti' AND expires_s IS NOT NULL AND expires_s < $1",
    )
    .bind(now - 60)
    .execute(db.pool())
    .await?;
    Ok(done.rows_affected())
}

/// State for [`router`].
#[derive(Clone)]
pub struct RevokeState {
    /// The database the revocations go to, the verifier (and its `auth.admins`).
    pub shared: crate::service::Shared,
}

crate::shared_state!(RevokeState);

/// The revocation routes as a service (the `api` role mounts them).
pub fn service(shared: &crate::service::Shared) -> crate::service::Service {
    crate::service::Service::routes(router(RevokeState {
        shared: shared.clone(),
    }))
}

/// - `POST /v1/auth/revoke`: the caller revokes the token it sends (body empty or `{}`), or
///   with `{"all": true}` every token of theirs issued up to now ("log out everywhere").
/// - `POST /v1/admin/revocations` (users in `auth.admins`): `{"jti": J, "expires": S}` revokes
///   one token, `{"user": U, "before": S}` every token of U issued at or before second S
///   (default: now).
pub fn router(state: RevokeState) -> axum::Router {
    routes().with_state(state).split_for_parts().0
}

fn routes() -> utoipa_axum::router::OpenApiRouter<RevokeState> {
    utoipa_axum::router::OpenApiRouter::new()
        .routes(utoipa_axum::routes!(revoke_own))
        .routes(utoipa_axum::routes!(revoke_admin))
}

/// The revocation routes' part of the OpenAPI document.
pub fn openapi() -> utoipa::openapi::OpenApi {
    routes().into_openapi()
}

/// What was revoked.
#[derive(Serialize, utoipa::ToSchema)]
pub struct Revoked {
    /// The revocation now in force on every node.
    pub revoked: Revocation,
}

/// A JSON body, empty meaning `{}`; bad JSON is a 400 with the parser's reason.
fn body<T: serde::de::DeserializeOwned + Default>(bytes: &[u8]) -> Result<T, ApiError> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    serde_json::from_slice(bytes)
        .map_err(|e| ApiError::bad_request(format!("invalid JSON body: {e}")))
}

/// `POST /v1/auth/revoke`'s body.
#[derive(Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct OwnBody {
    /// Every token of the caller issued up to now ("log out everywhere"), not only this one.
    #[serde(default)]
    all: bool,
}

/// Revokes the token the request carries (an empty body or `{}`), or with `{"all": true}`
/// every token of the caller issued up to now. Refused on every node within a second.
#[utoipa::path(post, path = "/v1/auth/revoke", tag = "auth",
    security(("bearer" = [])),
    request_body(content = Option<OwnBody>, description = "Empty, `{}` or `{\"all\": true}`"),
    responses(
        (status = 200, description = "Revoked", body = Revoked),
        (status = "4XX", description = "Refused (no or bad token, a token without `jti`, bad JSON)", body = crate::api::ErrorBody),
    ))]
async fn revoke_own(
    State(s): State<RevokeState>,
    headers: http::HeaderMap,
    bytes: axum::body::Bytes,
) -> Result<Json<Revoked>, ApiError> {
    let claims = s.shared.auth.claims_from_headers(&headers)?;
    let own: OwnBody = body(&bytes)?;
    let r = if own.all {
        Revocation::User {
            user: claims.sub.clone(),
            before: crate::ids::now_ms() / 1000,
        }
    } else {
        let Some(jti) = claims.jti.clone() else {
            return Err(ApiError::bad_request(
                "this token has no jti to revoke it by; revoke all your tokens with {\"all\": true}",
            ));
        };
        Revocation::Token {
            jti,
            expires: i64::try_from(claims.exp).ok(),
        }
    };
    r.validate().map_err(ApiError::bad_request)?;
    revoke(&s.shared.db, &r, &claims.sub).await?;
    s.shared.auth.revocations().refresh(&s.shared.db).await?;
    tracing::info!(user = %claims.sub, revocation = ?r, "token revoked by its user");
    Ok(Json(Revoked { revoked: r }))
}

/// `POST /v1/admin/revocations`'s body: `jti` (with `expires`) or `user` (with `before`).
#[derive(Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct AdminBody {
    /// One token's id.
    jti: Option<String>,
    /// When that token expires anyway (seconds since epoch).
    expires: Option<i64>,
    /// A user whose tokens to revoke.
    user: Option<String>,
    /// Their tokens issued at or before this second are refused (default: now).
    before: Option<i64>,
}

/// For the operators listed in `auth.admins`: revokes one token by its `jti`, or every token of
/// a user issued at or before a second.
#[utoipa::path(post, path = "/v1/admin/revocations", tag = "admin",
    security(("bearer" = [])),
    request_body(content = AdminBody),
    responses(
        (status = 201, description = "Revoked", body = Revoked),
        (status = "4XX", description = "Refused (not an operator, bad body)", body = crate::api::ErrorBody),
    ))]
async fn revoke_admin(
    State(s): State<RevokeState>,
    super::User(admin): super::User,
    bytes: axum::body::Bytes,
) -> Result<(http::StatusCode, Json<Revoked>), ApiError> {
    if !s.shared.auth.is_admin(&admin) {
        return Err(ApiError::new(
            http::StatusCode::FORBIDDEN,
            "forbidden",
            "this route is for the operators listed in auth.admins",
        ));
    }
    let b: AdminBody = body(&bytes)?;
    let r = match (b.jti, b.user) {
        (Some(jti), None) if b.before.is_none() => Revocation::Token {
            jti,
            expires: b.expires,
        },
        (None, Some(user)) if b.expires.is_none() => Revocation::User {
            user,
            before: b.before.unwrap_or(crate::ids::now_ms() / 1000),
        },
        _ => {
            return Err(ApiError::bad_request(
                "give either {\"jti\": J[, \"expires\": S]} or {\"user\": U[, \"before\": S]}",
            ));
        }
    };
    r.validate().map_err(ApiError::bad_request)?;
    revoke(&s.shared.db, &r, &admin).await?;
    s.shared.auth.revocations().refresh(&s.shared.db).await?;
    tracing::info!(admin = %admin, revocation = ?r, "token(s) revoked by an operator");
    Ok((http::StatusCode::CREATED, Json(Revoked { revoked: r })))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;
    use crate::testing::on_both;

    fn claims(sub: &str, iat: u64, jti: Option<&str>) -> Claims {
        Claims {
            sub: sub.into(),
            iat,
            exp: iat + 3600,
            iss: None,
            jti: jti.map(String::from),
        }
    }

    fn now_s() -> i64 {
        crate::ids::now_ms() / 1000
    }

    #[tokio::test]
    async fn a_revoked_token_and_a_users_older_tokens_are_refused_newer_ones_pass() {
        on_both(|db| async move {
            let set = Revocations::default();
            set.refresh(&db).await.unwrap();
            let t = now_s() as u64;
            let stolen = claims("alice", t, Some("j-stolen"));
            let other = claims("alice", t, Some("j-other"));
            assert!(set.check(&stolen).is_ok());
            let r = Revocation::Token {
                jti: "j-stolen".into(),
                expires: Some(t as i64 + 3600),
            };
            revoke(&db, &r, "alice").await.unwrap();
            assert_eq!(set.refresh(&db).await.unwrap(), 1);
            assert!(matches!(set.check(&stolen), Err(Error::Revoked(_))));
            assert!(set.check(&other).is_ok(), "only the one token");

            // every token of bob issued at or before t; later ones pass; alice is untouched
            let r = Revocation::User {
                user: "bob".into(),
                before: t as i64,
            };
            revoke(&db, &r, "root").await.unwrap();
            // revoking again with an older cut-off does not move it back
            let older = Revocation::User {
                user: "bob".into(),
                before: t as i64 - 100,
            };
            revoke(&db, &older, "root").await.unwrap();
            set.refresh(&db).await.unwrap();
            assert!(set.check(&claims("bob", t, None)).is_err());
            assert!(set.check(&claims("bob", t - 50, Some("x"))).is_err());
            assert!(set.check(&claims("bob", t + 1, None)).is_ok());
            assert!(set.check(&other).is_ok());

            // a process starting later reads them all
            let fresh = Revocations::default();
            fresh.refresh(&db).await.unwrap();
            assert!(fresh.check(&stolen).is_err());
            assert!(fresh.check(&claims("bob", t, None)).is_err());
        })
        .await;
    }

    #[tokio::test]
    async fn a_revocation_written_elsewhere_is_picked_up_within_a_second() {
        on_both(|db| async move {
            let node = Arc::new(Revocations::default());
            node.refresh(&db).await.unwrap();
            node.spawn_refresh(db.clone(), Duration::from_millis(500));
            let t = now_s() as u64;
            let c = claims("carol", t, Some("j-b"));
            assert!(node.check(&c).is_ok());
            // written as another node would, but with no notification: the poll must find it
            let start = std::time::Instant::now();
            sqlx::query(
                "INSERT INTO revocations (kind, subject, before_s, expires_s, revoked_at, revoked_by) \
                 VALUES ('jti', 'j-b', 0, NULL, $1, 'elsewhere')",
            )
            .bind(crate::ids::now_ms())
            .execute(db.pool())
            .await
            .unwrap();
            while node.check(&c).is_ok() {
                assert!(
                    start.elapsed() < Duration::from_secs(1),
                    "still accepted after a second"
                );
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await;
    }

    #[tokio::test]
    async fn expired_token_revocations_are_dropped() {
        on_both(|db| async move {
            let gone = Revocation::Token {
                jti: "old".into(),
                expires: Some(now_s() - 3600),
            };
            let kept = Revocation::Token {
                jti: "new".into(),
                expires: Some(now_s() + 3600),
            };
            revoke(&db, &gone, "x").await.unwrap();
            revoke(&db, &kept, "x").await.unwrap();
            assert_eq!(prune(&db).await.unwrap(), 1);
            let set = Revocations::default();
            assert_eq!(set.refresh(&db).await.unwrap(), 1);
            assert!(set.check(&claims("a", 1, Some("new"))).is_err());
        })
        .await;
    }

    #[test]
    fn bad_revocation_requests_are_refused_with_a_reason() {
        for (r, want) in [
            (
                Revocation::Token {
                    jti: String::new(),
                    expires: None,
                },
                "jti",
            ),
            (
                Revocation::Token {
                    jti: "a\u{0}b".into(),
                    expires: None,
                },
                "jti",
            ),
            (
                Revocation::User {
                    user: "a b".into(),
                    before: 1,
                },
                "user id",
            ),
            (
                Revocation::User {
                    user: "x".repeat(200),
                    before: 1,
                },
                "user id",
            ),
            (
                Revocation::User {
                    user: "a".into(),
                    before: -1,
                },
                "before",
            ),
        ] {
            let err = r.validate().unwrap_err();
            assert!(err.contains(want), "{r:?}: {err}");
        }
    }
}
