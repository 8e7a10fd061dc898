//! Bearer-token authentication: EdDSA (Ed25519) JWTs verified with a public key only.
//!
//! In production the signer lives elsewhere and `[auth] public_key` names its PEM public key.
//! Without it the service makes a local development key pair under `$DATA/keys` on first start
//! (the private key file is mode 0600) so `moments token` can mint tokens for testing.
//! The verifier accepts nothing but EdDSA: `alg: none`, HMAC and RSA tokens are refused.
//! A token can be revoked before it expires ([`revoke`]): by its id, or all of a user's.

pub mod revoke;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{FromRef, FromRequestParts};
use http::HeaderMap;
use http::request::Parts;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

use crate::error::ApiError;

/// Largest `Authorization` header we look at; longer ones are refused without parsing.
pub const MAX_HEADER_BYTES: usize = 8 * 1024;

/// `[auth]` section.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// PEM file with the Ed25519 public key that signs tokens. Unset: use (and create) the
    /// local development key under `$DATA/keys`.
    pub public_key: Option<PathBuf>,
    /// User ids (token `sub`) allowed to revoke other users' tokens
    /// (`POST /v1/admin/revocations`).
    pub admins: Vec<String>,
    /// How often each process re-reads the revocations written by others (ms): the longest a
    /// revoked token is still accepted on another node (PostgreSQL notifications usually make
    /// it much shorter).
    pub revocation_poll_ms: u64,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            public_key: None,
            admins: Vec::new(),
            revocation_poll_ms: 500,
        }
    }
}

/// Authentication errors. All of them answer 401 to a client.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// No `Authorization` header.
    #[error("missing Authorization header (expected: Bearer <token>)")]
    Missing,
    /// Header present but not `Bearer <token>` in ASCII.
    #[error("malformed Authorization header (expected: Bearer <token>)")]
    Malformed,
    /// Header longer than [`MAX_HEADER_BYTES`] (abusive input).
    #[error("Authorization header is longer than {MAX_HEADER_BYTES} bytes")]
    TooLong,
    /// Signature, algorithm, expiry or claims rejected.
    #[error("invalid token: {0}")]
    Invalid(String),
    /// A valid token that was revoked (see [`revoke`]).
    #[error("token revoked: {0}")]
    Revoked(String),
    /// A key file could not be read, written or parsed.
    #[error("key file {path}: {reason}")]
    Key {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        reason: String,
    },
}

impl From<Error> for ApiError {
    fn from(e: Error) -> Self {
        match e {
            Error::Key { .. } => ApiError::internal(e),
            other => ApiError::unauthorized(other.to_string()),
        }
    }
}

/// What a token says.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Claims {
    /// The user id.
    pub sub: String,
    /// Issued at (seconds since epoch).
    pub iat: u64,
    /// Expiry (seconds since epoch).
    pub exp: u64,
    /// Issuer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iss: Option<String>,
    /// The token's id, by which it can be revoked alone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jti: Option<String>,
}

/// Paths of the local development key pair.
pub fn dev_key_paths(data_dir: &Path) -> (PathBuf, PathBuf) {
    let dir = data_dir.join("keys");
    (dir.join("ed25519.pem"), dir.join("ed25519.pub.pem"))
}

/// The signed-playback key of a single-node deployment: `$DATA/keys/playback.key` (32 random
/// bytes, hex), made on first use. Several nodes must share one key instead
/// (`packager.playback_secret`), or each would refuse the others' tokens.
pub fn ensure_playback_key(data_dir: &Path) -> Result<Vec<u8>, Error> {
    let path = data_dir.join("keys").join("playback.key");
    let key_err = |reason: String| Error::Key {
        path: path.clone(),
        reason,
    };
    if let Ok(text) = std::fs::read_to_string(&path) {
        return hex::decode(text.trim()).map_err(|e| key_err(format!("not hex: {e}")));
    }
    let key: [u8; 32] = rand::random();
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| key_err(e.to_string()))?;
    }
    let created = crate::fsutil::write_private_new(&path, hex::encode(key).as_bytes(), 0o600)
        .map_err(|e| key_err(e.to_string()))?;
    if !created {
        return ensure_playback_key(data_dir);
    }
    Ok(key.to_vec())
}

/// Creates the development key pair under `$DATA/keys` unless it exists; returns
/// `(private_pem, public_pem)`.
pub fn ensure_dev_key(data_dir: &Path) -> Result<(String, String), Error> {
    let (private, public) = dev_key_paths(data_dir);
    let key_err = |path: &Path, reason: String| Error::Key {
        path: path.to_path_buf(),
        reason,
    };
    if private.exists() {
        let priv_pem =
            std::fs::read_to_string(&private).map_err(|e| key_err(&private, e.to_string()))?;
        let pair = rcgen::KeyPair::from_pem(&priv_pem)
            .map_err(|e| key_err(&private, format!("not a PEM private key: {e}")))?;
        let pub_pem = pair.public_key_pem();
        if std::fs::read_to_string(&public).ok().as_deref() != Some(pub_pem.as_str()) {
            crate::fsutil::write_private(&public, pub_pem.as_bytes(), 0o644)
                .map_err(|e| key_err(&public, e.to_string()))?;
        }
        return Ok((priv_pem, pub_pem));
    }
    let pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519)
        .map_err(|e| key_err(&private, format!("cannot generate a key: {e}")))?;
    let (priv_pem, pub_pem) = (pair.serialize_pem(), pair.public_key_pem());
    let created = crate::fsutil::write_private_new(&private, priv_pem.as_bytes(), 0o600)
        .map_err(|e| key_err(&private, e.to_string()))?;
    if !created {
        // another process (a `moments serve` starting beside `moments token`) made it first:
        // use its key, so tokens minted by either verify
        return ensure_dev_key(data_dir);
    }
    crate::fsutil::write_private(&public, pub_pem.as_bytes(), 0o644)
        .map_err(|e| key_err(&public, e.to_string()))?;
    tracing::info!(path = %private.display(), "created the local development signing key");
    Ok((priv_pem, pub_pem))
}

/// Mints a token for `user` valid for `ttl`, signed with a PEM Ed25519 private key.
pub fn mint(private_pem: &str, user: &str, ttl: Duration) -> Result<String, Error> {
    check_user_id(user).map_err(Error::Invalid)?;
    let key = EncodingKey::from_ed_pem(private_pem.as_bytes()).map_err(|e| Error::Key {
        path: PathBuf::from("<private key>"),
        reason: e.to_string(),
    })?;
    let now = jsonwebtoken::get_current_timestamp();
    let claims = Claims {
        sub: user.to_string(),
        iat: now,
        exp: now + ttl.as_secs().max(1),
        iss: Some("moments-dev".to_string()),
        jti: Some(hex::encode(rand::random::<[u8; 16]>())),
    };
    jsonwebtoken::encode(&Header::new(Algorithm::EdDSA), &claims, &key)
        .map_err(|e| Error::Invalid(e.to_string()))
}

/// User ids are opaque but bounded: 1..=128 printable ASCII characters without spaces.
pub fn check_user_id(user: &str) -> Result<(), String> {
    if user.is_empty() || user.len() > 128 {
        return Err("user id must be 1 to 128 characters".into());
    }
    if !user.bytes().all(|b| b.is_ascii_graphic()) {
        return Err("user id must be printable ASCII without spaces".into());
    }
    Ok(())
}

/// Parses `90s`, `15m`, `1h`, `7d` (or plain seconds).
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, unit) = match s.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => (&s[..i], &s[i..]),
        None => (s, "s"),
    };
    let n: u64 = num
        .parse()
        .map_err(|_| format!("invalid duration {s:?} (use e.g. 90s, 15m, 1h, 7d)"))?;
    let secs = match unit {
        "s" => n,
        "m" => n * 60,
        "h" => n * 3600,
        "d" => n * 86400,
        _ => return Err(format!("invalid duration unit in {s:?} (use s, m, h or d)")),
    };
    Ok(Duration::from_secs(secs))
}

/// Verifies tokens.
pub struct Auth {
    key: DecodingKey,
    validation: Validation,
    revocations: Arc<revoke::Revocations>,
    admins: Vec<String>,
    /// Where the key came from, for logs.
    pub source: String,
}

impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Auth")
            .field("source", &self.source)
            .finish()
    }
}

impl Auth {
    /// A verifier for a PEM Ed25519 public key.
    pub fn from_public_pem(pem: &str, source: impl Into<String>) -> Result<Auth, Error> {
        let source = source.into();
        let key = DecodingKey::from_ed_pem(pem.as_bytes()).map_err(|e| Error::Key {
            path: PathBuf::from(&source),
            reason: format!("not an Ed25519 public key in PEM: {e}"),
        })?;
        let mut validation = Validation::new(Algorithm::EdDSA);
        validation.algorithms = vec![Algorithm::EdDSA];
        validation.leeway = 30;
        // a token that is not valid yet (`nbf` in the future) is refused like an expired one
        validation.validate_nbf = true;
        validation.set_required_spec_claims(&["exp", "sub"]);
        Ok(Auth {
            key,
            validation,
            revocations: Arc::default(),
            admins: Vec::new(),
            source,
        })
    }

    /// The configured public key, or the development key (created when missing).
    pub fn from_config(config: &Config, data_dir: &Path) -> Result<Auth, Error> {
        let mut auth = match &config.public_key {
            Some(path) => {
                let pem = std::fs::read_to_string(path).map_err(|e| Error::Key {
                    path: path.clone(),
                    reason: e.to_string(),
                })?;
                Auth::from_public_pem(&pem, path.display().to_string())
            }
            None => {
                let (_, public) = ensure_dev_key(data_dir)?;
                let (_, path) = dev_key_paths(data_dir);
                Auth::from_public_pem(&public, format!("{} (development key)", path.display()))
            }
        }?;
        auth.admins = config.admins.clone();
        Ok(auth)
    }

    /// The revocations this verifier refuses (kept current by [`revoke::Revocations::spawn_refresh`]).
    pub fn revocations(&self) -> &Arc<revoke::Revocations> {
        &self.revocations
    }

    /// Whether `user` is in `auth.admins`.
    pub fn is_admin(&self, user: &str) -> bool {
        self.admins.iter().any(|a| a == user)
    }

    /// Verifies a token and returns its claims.
    pub fn verify(&self, token: &str) -> Result<Claims, Error> {
        let data = jsonwebtoken::decode::<Claims>(token, &self.key, &self.validation)
            .map_err(|e| Error::Invalid(e.to_string()))?;
        check_user_id(&data.claims.sub).map_err(Error::Invalid)?;
        self.revocations.check(&data.claims)?;
        Ok(data.claims)
    }

    /// The user named by a request's `Authorization: Bearer` header.
    pub fn user_from_headers(&self, headers: &HeaderMap) -> Result<String, Error> {
        Ok(self.claims_from_headers(headers)?.sub)
    }

    /// The verified claims of a request's `Authorization: Bearer` header.
    pub fn claims_from_headers(&self, headers: &HeaderMap) -> Result<Claims, Error> {
        let value = headers
            .get(http::header::AUTHORIZATION)
            .ok_or(Error::Missing)?;
        if value.len() > MAX_HEADER_BYTES {
            return Err(Error::TooLong);
        }
        let text = value.to_str().map_err(|_| Error::Malformed)?;
        let (scheme, token) = text.trim().split_once(' ').ok_or(Error::Malformed)?;
        if !scheme.eq_ignore_ascii_case("bearer") {
            return Err(Error::Malformed);
        }
        let token = token.trim();
        if token.is_empty() {
            return Err(Error::Malformed);
        }
        self.verify(token)
    }
}

/// The authenticated user of a request (an axum extractor; answers 401 JSON when absent or
/// invalid, 429 when the user is over their `limits.requests`).
#[derive(Debug, Clone, PartialEq)]
pub struct User(pub String);

impl<S> FromRequestParts<S> for User
where
    Arc<Auth>: FromRef<S>,
    Arc<crate::limit::Limiter>: FromRef<S>,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let auth = Arc::<Auth>::from_ref(state);
        let user = auth.user_from_headers(&parts.headers)?;
        count_request(state, &user).await?;
        Ok(User(user))
    }
}

/// Counts one authenticated request against the user's `limits.requests` bucket.
async fn count_request<S>(state: &S, user: &str) -> Result<(), ApiError>
where
    Arc<crate::limit::Limiter>: FromRef<S>,
{
    let limiter = Arc::<crate::limit::Limiter>::from_ref(state);
    limiter
        .take(crate::limit::Kind::Requests, user, 1)
        .await
        .map_err(ApiError::from)
}

/// How long a ticket stays valid.
pub const TICKET_TTL_MS: i64 = 60_000;

/// Issues a single-use ticket for `user`, valid for [`TICKET_TTL_MS`]. Browsers cannot put
/// headers on EventSource or WebSocket connections; they pass `?ticket=T` instead of the JWT
/// (which must never appear in a URL). Only the ticket's SHA-256 is stored.
pub async fn issue_ticket(db: &crate::db::Db, user: &str) -> Result<String, crate::db::Error> {
    use base64::Engine;
    let raw: [u8; 32] = rand::random();
    let ticket = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(raw);
    let now = crate::ids::now_ms();
    sqlx::query("DELETE FROM tickets WHERE expires_at < $1")
        .bind(now)
        .execute(db.pool())
        .await?;
    sqlx::query("INSERT INTO tickets (hash, user_id, expires_at) VALUES ($1, $2, $3)")
        .bind(ticket_hash(&ticket))
        .bind(user)
        .bind(now + TICKET_TTL_MS)
        .execute(db.pool())
        .await?;
    Ok(ticket)
}

/// Redeems a ticket: returns its user once, if it has not expired; never again.
pub async fn redeem_ticket(
    db: &crate::db::Db,
    ticket: &str,
) -> Result<Option<String>, crate::db::Error> {
    if ticket.is_empty() || ticket.len() > 128 {
        return Ok(None);
    }
    let user: Option<String> = sqlx::query_scalar(
        "DELETE FROM tickets WHERE hash = $1 AND expires_at >= $2 RETURNING user_id",
    )
    .bind(ticket_hash(ticket))
    .bind(crate::ids::now_ms())
    .fetch_optional(db.pool())
    .await?;
    Ok(user)
}

/// State for [`tickets_router`].
#[derive(Clone)]
pub struct TicketState {
    /// Where tickets are kept (database), the token verifier.
    pub shared: crate::service::Shared,
}

crate::shared_state!(TicketState);

/// The ticket route as a service (the `api` and `voice` roles both mount it: SSE and the Q&A
/// WebSocket authenticate with tickets).
pub fn tickets(shared: &crate::service::Shared) -> crate::service::Service {
    crate::service::Service::routes(tickets_router(TicketState {
        shared: shared.clone(),
    }))
}

/// `POST /v1/tickets`: an authenticated client gets a single-use ticket (valid 60 s) to open an
/// EventSource or WebSocket with `?ticket=`.
pub fn tickets_router(state: TicketState) -> axum::Router {
    tickets_routes().with_state(state).split_for_parts().0
}

fn tickets_routes() -> utoipa_axum::router::OpenApiRouter<TicketState> {
    utoipa_axum::router::OpenApiRouter::new().routes(utoipa_axum::routes!(post_ticket))
}

/// The ticket route's part of the OpenAPI document.
pub fn tickets_openapi() -> utoipa::openapi::OpenApi {
    tickets_routes().into_openapi()
}

/// A single-use ticket.
#[derive(Serialize, utoipa::ToSchema)]
pub struct Ticket {
    /// Put it in `?ticket=` of one EventSource or WebSocket URL.
    pub ticket: String,
    /// Seconds it stays valid.
    pub expires_in: i64,
}

/// A single-use ticket (valid 60 s) for a browser's EventSource or WebSocket, which cannot send
/// an `Authorization` header: open `…/events?ticket=T` or `…/ws?ticket=T` with it.
#[utoipa::path(post, path = "/v1/tickets", tag = "auth",
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The ticket", body = Ticket),
        (status = "4XX", description = "Refused (no or bad token, rate limited)", body = crate::api::ErrorBody),
    ))]
async fn post_ticket(
    axum::extract::State(s): axum::extract::State<TicketState>,
    User(user): User,
) -> Result<axum::Json<Ticket>, ApiError> {
    let ticket = issue_ticket(&s.shared.db, &user).await?;
    Ok(axum::Json(Ticket {
        ticket,
        expires_in: TICKET_TTL_MS / 1000,
    }))
}

fn ticket_hash(ticket: &str) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(ticket.as_bytes()))
}

/// The user of a streaming request (EventSource, WebSocket): the `Authorization` header when
/// present, else a single-use `?ticket=`.
#[derive(Debug, Clone, PartialEq)]
pub struct StreamUser(pub String);

impl<S> FromRequestParts<S> for StreamUser
where
    Arc<Auth>: FromRef<S>,
    Arc<crate::limit::Limiter>: FromRef<S>,
    crate::db::Db: FromRef<S>,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        if parts.headers.contains_key(http::header::AUTHORIZATION) {
            let auth = Arc::<Auth>::from_ref(state);
            let user = auth.user_from_headers(&parts.headers)?;
            count_request(state, &user).await?;
            return Ok(StreamUser(user));
        }
        let ticket = parts
            .uri
            .query()
            .unwrap_or("")
            .split('&')
            .find_map(|kv| kv.strip_prefix("ticket="));
        let Some(ticket) = ticket else {
            return Err(Error::Missing.into());
        };
        let db = crate::db::Db::from_ref(state);
        match redeem_ticket(&db, ticket).await? {
            Some(user) => {
                count_request(state, &user).await?;
                Ok(StreamUser(user))
            }
            None => Err(ApiError::unauthorized(
                "invalid ticket: unknown, expired or already used",
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;

    fn keys() -> (tempfile::TempDir, String, Auth) {
        let dir = tempfile::tempdir().unwrap();
        let (private, _) = ensure_dev_key(dir.path()).unwrap();
        let auth = Auth::from_config(&Config::default(), dir.path()).unwrap();
        (dir, private, auth)
    }

    fn bearer(token: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(
            http::header::AUTHORIZATION,
            format!("Bearer {token}").parse().unwrap(),
        );
        h
    }

    #[test]
    fn round_trip() {
        let (_d, private, auth) = keys();
        let token = mint(&private, "alice", Duration::from_secs(3600)).unwrap();
        assert_eq!(auth.user_from_headers(&bearer(&token)).unwrap(), "alice");
    }

    #[test]
    fn private_key_file_is_private_and_reused() {
        use std::os::unix::fs::PermissionsExt;
        let (dir, private, _) = keys();
        let (path, _) = dev_key_paths(dir.path());
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let (again, _) = ensure_dev_key(dir.path()).unwrap();
        assert_eq!(again, private);
    }

    #[test]
    fn expired_token_is_refused() {
        let (_d, private, auth) = keys();
        let key = EncodingKey::from_ed_pem(private.as_bytes()).unwrap();
        let now = jsonwebtoken::get_current_timestamp();
        let claims = Claims {
            sub: "alice".into(),
            iat: now - 7200,
            exp: now - 3600,
            iss: None,
            jti: None,
        };
        let token = jsonwebtoken::encode(&Header::new(Algorithm::EdDSA), &claims, &key).unwrap();
        let err = auth.user_from_headers(&bearer(&token)).unwrap_err();
        assert!(err.to_string().contains("Expired"), "{err}");
    }

    #[test]
    fn processes_creating_the_dev_key_at_once_end_with_one_key() {
        for _ in 0..20 {
            let dir = tempfile::tempdir().unwrap();
            let keys: Vec<String> = std::thread::scope(|s| {
                let hs: Vec<_> = (0..4)
                    .map(|_| s.spawn(|| ensure_dev_key(dir.path()).unwrap().0))
                    .collect();
                hs.into_iter().map(|h| h.join().unwrap()).collect()
            });
            let (again, _) = ensure_dev_key(dir.path()).unwrap();
            assert!(keys.iter().all(|k| *k == again), "two dev keys were made");
        }
    }

    #[test]
    fn a_token_not_valid_yet_is_refused() {
        let (_d, private, auth) = keys();
        let key = EncodingKey::from_ed_pem(private.as_bytes()).unwrap();
        let now = jsonwebtoken::get_current_timestamp();
        let token = |nbf: u64| {
            let claims =
                serde_json::json!({"sub": "alice", "iat": now, "nbf": nbf, "exp": now + 7200});
            jsonwebtoken::encode(&Header::new(Algorithm::EdDSA), &claims, &key).unwrap()
        };
        let err = auth
            .user_from_headers(&bearer(&token(now + 3600)))
            .unwrap_err();
        assert!(err.to_string().contains("Immature"), "{err}");
        // within the clock leeway, and in the past: accepted
        assert!(auth.user_from_headers(&bearer(&token(now + 10))).is_ok());
        assert!(auth.user_from_headers(&bearer(&token(now - 60))).is_ok());
    }

    #[test]
    fn token_from_another_key_is_refused() {
        let (_d, _private, auth) = keys();
        let (_d2, other, _) = keys();
        let token = mint(&other, "alice", Duration::from_secs(60)).unwrap();
        assert!(matches!(
            auth.user_from_headers(&bearer(&token)),
            Err(Error::Invalid(_))
        ));
    }

    #[test]
    fn alg_none_and_hmac_are_refused() {
        let (_d, _private, auth) = keys();
        let now = jsonwebtoken::get_current_timestamp();
        let payload = B64.encode(format!(
            r#"{{"sub":"alice","iat":{now},"exp":{}}}"#,
            now + 60
        ));
        for header in [
            r#"{"alg":"none","typ":"JWT"}"#,
            r#"{"alg":"HS256","typ":"JWT"}"#,
        ] {
            let token = format!("{}.{payload}.", B64.encode(header));
            assert!(auth.user_from_headers(&bearer(&token)).is_err(), "{header}");
        }
        let hs = jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &Claims {
                sub: "alice".into(),
                iat: now,
                exp: now + 60,
                iss: None,
                jti: None,
            },
            &EncodingKey::from_secret(b"guess"),
        )
        .unwrap();
        assert!(auth.user_from_headers(&bearer(&hs)).is_err());
    }

    #[test]
    fn malformed_headers_are_refused_without_panics() {
        let (_d, _private, auth) = keys();
        assert!(matches!(
            auth.user_from_headers(&HeaderMap::new()),
            Err(Error::Missing)
        ));
        for v in [
            "Bearer",
            "Bearer ",
            "Basic abc",
            "token",
            "Bearer a.b.c",
            "Bearer ....",
            "Bearer x y",
        ] {
            let mut h = HeaderMap::new();
            h.insert(http::header::AUTHORIZATION, v.parse().unwrap());
            assert!(auth.user_from_headers(&h).is_err(), "{v}");
        }
        let mut h = HeaderMap::new();
        h.insert(
            http::header::AUTHORIZATION,
            format!("Bearer {}", "a".repeat(MAX_HEADER_BYTES))
                .parse()
                .unwrap(),
        );
        assert!(matches!(auth.user_from_headers(&h), Err(Error::TooLong)));
        let mut h = HeaderMap::new();
        h.insert(
            http::header::AUTHORIZATION,
            http::HeaderValue::from_bytes(b"Bearer \xff\xfe").unwrap(),
        );
        assert!(matches!(auth.user_from_headers(&h), Err(Error::Malformed)));
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("90s").unwrap(), Duration::from_secs(90));
        assert_eq!(parse_duration("15m").unwrap(), Duration::from_secs(900));
        assert_eq!(parse_duration("1h").unwrap(), Duration::from_secs(3600));
        assert_eq!(
            parse_duration("7d").unwrap(),
            Duration::from_secs(7 * 86400)
        );
        assert_eq!(parse_duration("42").unwrap(), Duration::from_secs(42));
        assert!(parse_duration("1y").is_err());
        assert!(parse_duration("h").is_err());
        assert!(parse_duration("").is_err());
    }

    #[test]
    fn user_ids_are_bounded() {
        assert!(check_user_id("alice@example.com").is_ok());
        assert!(check_user_id("").is_err());
        assert!(check_user_id("a b").is_err());
        assert!(check_user_id(&"a".repeat(129)).is_err());
    }
}
