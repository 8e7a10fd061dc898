//! The one upload handler, served over HTTP/1.1, HTTP/2 and HTTP/3 alike (the transports hand
//! it the same `Request`): routes, the write lock, streaming bodies into the sink with durable
//! checkpoints, checksums, completion and the expiry sweeper. Two protocols share it on the
//! same routes: tus 1.0.0 (requests with `Tus-Resumable`) and the IETF resumable-upload draft
//! (requests with its fields; see [`crate::draft`]).

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode, Version};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use common::api::ErrorBody;
use common::auth::User;
use common::ids::{new_id, now_ms};
use common::metrics::Metrics;
use common::service::Shared;
use futures::StreamExt;
use prometheus_client::metrics::counter::Counter;
use sha1::Digest as _;
use tokio_util::sync::CancellationToken;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::Config;
use crate::record::{self, Upload};
use crate::sink::{self, Writer};
use crate::tus::{self, Algorithm, Checksum};

/// Ingest counters.
#[derive(Clone, Debug, Default)]
pub struct IngestMetrics {
    created: Counter,
    completed: Counter,
    bytes: Counter,
    checksum_failures: Counter,
    slow_bodies: Counter,
}

impl IngestMetrics {
    /// Registers them.
    pub fn register(metrics: &Metrics) -> IngestMetrics {
        let m = IngestMetrics::default();
        metrics.register("uploads_created", "tus uploads created", m.created.clone());
        metrics.register(
            "uploads_completed",
            "tus uploads completed",
            m.completed.clone(),
        );
        metrics.register("upload_bytes", "Upload bytes made durable", m.bytes.clone());
        metrics.register(
            "upload_checksum_failures",
            "PATCH bodies refused for a checksum mismatch",
            m.checksum_failures.clone(),
        );
        metrics.register(
            "upload_slow_bodies",
            "Request bodies ended for arriving slower than ingest.body_min_rate",
            m.slow_bodies.clone(),
        );
        m
    }
}

/// A request currently writing to an upload in this process.
struct Active {
    owner: String,
    cancel: CancellationToken,
    last_byte_ms: Arc<AtomicI64>,
}

/// What the handler needs.
#[derive(Clone)]
pub struct IngestState {
    /// Upload rows and moments (database), upload bytes (store), the queue completed uploads
    /// go to, the token verifier.
    pub shared: Shared,
    /// Limits and timings.
    pub config: Config,
    /// S3 part size (bytes).
    pub part_size: u64,
    /// Counters.
    pub metrics: IngestMetrics,
    active: Arc<Mutex<HashMap<String, Active>>>,
}

impl IngestState {
    /// State for the routes.
    pub fn new(
        shared: Shared,
        config: Config,
        part_size: u64,
        metrics: IngestMetrics,
    ) -> IngestState {
        IngestState {
            shared,
            config,
            part_size,
            metrics,
            active: Arc::new(Mutex::new(HashMap::new())),
        }
    }

    fn limits(&self) -> tus::Limits {
        tus::Limits {
            max_size: self.config.max_size,
        }
    }
}

common::shared_state!(IngestState);

/// The tus routes.
pub fn router(state: IngestState) -> Router {
    routes()
        // the same creation without the slash (tus clients append ids to either)
        .route("/files/", post(create_any).options(preflight))
        .layer(axum::middleware::map_response(decorate))
        .with_state(state)
        .split_for_parts()
        .0
}

fn routes() -> OpenApiRouter<IngestState> {
    OpenApiRouter::new()
        .routes(routes!(create_any, preflight))
        .routes(routes!(
            head_any,
            patch_any,
            terminate_any,
            preflight_upload
        ))
}

/// The upload routes' part of the OpenAPI document.
pub fn openapi() -> utoipa::openapi::OpenApi {
    routes().into_openapi()
}

/// Creates an upload (tus 1.0.0 creation, creation-with-upload, creation-defer-length; or the
/// IETF resumable-upload draft, told apart by its fields). The answer's `Location` is the
/// upload's URL and `Moment-Id` the moment it becomes.
#[utoipa::path(post, path = "/files", tag = "uploads",
    security(("bearer" = [])),
    params(
        ("Tus-Resumable" = Option<String>, Header, description = "`1.0.0` (tus)"),
        ("Upload-Length" = Option<u64>, Header, description = "Total bytes (tus; or `Upload-Defer-Length: 1`)"),
        ("Upload-Defer-Length" = Option<String>, Header, description = "`1`: the length comes later (tus)"),
        ("Upload-Metadata" = Option<String>, Header, description = "`key base64,key base64` (tus): `filename`, `filetype`, …"),
        ("Upload-Checksum" = Option<String>, Header, description = "`sha1|sha256|md5 base64` of the body sent with the creation"),
        ("Upload-Complete" = Option<String>, Header, description = "`?1` or `?0` (the resumable-upload draft)"),
        ("Content-Type" = Option<String>, Header, description = "`application/offset+octet-stream` when the creation carries bytes"),
    ),
    request_body(content = Option<String>, content_type = "application/offset+octet-stream", description = "The first bytes (creation-with-upload), or nothing"),
    responses(
        (status = 201, description = "Created",
            headers(("Location" = String, description = "The upload's URL"), ("Upload-Offset" = u64), ("Moment-Id" = String))),
        (status = 200, description = "Created and complete in one request (the draft; a JSON body names the moment)"),
        (status = "4XX", description = "Refused (no or bad token, bad or missing fields, too large, too many active uploads, rate limited, checksum mismatch)", content((ErrorBody = "application/json"), (ErrorBody = "application/problem+json"))),
        (status = 503, description = "The database or the object store is unreachable", content((ErrorBody = "application/json"), (ErrorBody = "application/problem+json"))),
    ))]
// Each route answers tus or the draft, by the request's fields.
async fn create_any(
    state: State<IngestState>,
    user: User,
    headers: HeaderMap,
    uri: axum::http::Uri,
    version: Version,
    interim: Option<axum::Extension<common::server::h3::Interim>>,
    body: Body,
) -> Response {
    if crate::rufh::is_draft(&headers) {
        let interim = interim.map(|axum::Extension(i)| i);
        return crate::draft::create(state, user, headers, uri, version, interim, body).await;
    }
    create(state, user, headers, uri, version, body).await
}

/// How far an upload got: `Upload-Offset` is where to resume.
#[utoipa::path(head, path = "/files/{id}", tag = "uploads",
    security(("bearer" = [])),
    params(
        ("id" = String, Path, description = "The upload's id (the last segment of `Location`)"),
        ("Tus-Resumable" = Option<String>, Header, description = "`1.0.0` (tus)"),
    ),
    responses(
        (status = 200, description = "The upload",
            headers(("Upload-Offset" = u64), ("Upload-Length" = u64), ("Upload-Metadata" = String), ("Cache-Control" = String))),
        (status = 204, description = "The upload (the draft)"),
        (status = "4XX", description = "Refused (no or bad token, no such upload of yours, gone); a HEAD answer has no body"),
        (status = 503, description = "The database is unreachable"),
    ))]
async fn head_any(
    state: State<IngestState>,
    user: User,
    id: Path<String>,
    headers: HeaderMap,
) -> Response {
    if crate::rufh::is_draft(&headers) {
        return crate::draft::head(state, user, id, headers).await;
    }
    head(state, user, id, headers).await
}

/// Appends bytes at `Upload-Offset`; each chunk is durable when the answer comes. The last
/// byte completes the upload and queues the moment's transcode.
#[utoipa::path(patch, path = "/files/{id}", tag = "uploads",
    security(("bearer" = [])),
    params(
        ("id" = String, Path, description = "The upload's id"),
        ("Tus-Resumable" = Option<String>, Header, description = "`1.0.0` (tus)"),
        ("Upload-Offset" = u64, Header, description = "Where these bytes go: the offset HEAD reports"),
        ("Upload-Length" = Option<u64>, Header, description = "The total, when the creation deferred it"),
        ("Upload-Checksum" = Option<String>, Header, description = "`sha1|sha256|md5 base64` of this body"),
        ("Upload-Complete" = Option<String>, Header, description = "`?1` on the last piece (the draft)"),
        ("Content-Type" = String, Header, description = "`application/offset+octet-stream` (tus), `application/partial-upload` (the draft)"),
    ),
    request_body(content = String, content_type = "application/offset+octet-stream", description = "The bytes"),
    responses(
        (status = 204, description = "Stored", headers(("Upload-Offset" = u64, description = "The new offset"))),
        (status = "4XX", description = "Refused (no or bad token, wrong offset, wrong content type, another request is writing, checksum mismatch, too large, no such upload of yours)", content((ErrorBody = "application/json"), (ErrorBody = "application/problem+json"))),
        (status = 503, description = "The database or the object store is unreachable: resume from HEAD's offset", content((ErrorBody = "application/json"), (ErrorBody = "application/problem+json"))),
    ))]
async fn patch_any(
    state: State<IngestState>,
    user: User,
    id: Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    if crate::rufh::is_draft(&headers) {
        return crate::draft::append(state, user, id, headers, body).await;
    }
    patch(state, user, id, headers, body).await
}

/// Abandons an upload: its bytes are deleted and its moment with them.
#[utoipa::path(delete, path = "/files/{id}", tag = "uploads",
    security(("bearer" = [])),
    params(
        ("id" = String, Path, description = "The upload's id"),
        ("Tus-Resumable" = Option<String>, Header, description = "`1.0.0` (tus)"),
    ),
    responses(
        (status = 204, description = "Deleted"),
        (status = "4XX", description = "Refused (no or bad token, no such upload of yours, already complete)", content((ErrorBody = "application/json"), (ErrorBody = "application/problem+json"))),
        (status = 503, description = "The database or the object store is unreachable", content((ErrorBody = "application/json"), (ErrorBody = "application/problem+json"))),
    ))]
async fn terminate_any(
    State(s): State<IngestState>,
    User(user): User,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Response {
    if crate::rufh::is_draft(&headers) {
        return crate::draft::decorate(
            crate::rufh::dialect(&headers).ok(),
            terminate_core(&s, &id, &user).await,
        )
        .await;
    }
    if let Err(e) = tus::check_version(&headers) {
        return tus_error(e);
    }
    terminate_core(&s, &id, &user).await
}

/// Every tus answer carries `Tus-Resumable` (CORS for browser clients such as tus-js-client
/// is the shared layer's, [`common::http::cors`]).
async fn decorate(mut resp: Response) -> Response {
    resp.headers_mut()
        .insert("tus-resumable", HeaderValue::from_static(tus::VERSION));
    resp
}

fn tus_error(e: tus::Error) -> Response {
    let mut resp = (
        e.status_code(),
        axum::Json(serde_json::json!({"error": e.message, "code": e.code})),
    )
        .into_response();
    if e.status == 412 {
        resp.headers_mut()
            .insert("tus-version", HeaderValue::from_static(tus::VERSION));
    }
    resp
}

pub(crate) fn api_error(
    status: StatusCode,
    code: &'static str,
    msg: impl Into<String>,
) -> Response {
    tus_error(tus::Error {
        status: status.as_u16(),
        code,
        message: msg.into(),
    })
}

pub(crate) fn internal(e: impl std::fmt::Display) -> Response {
    tracing::error!(error = %e, "upload failed on our side");
    api_error(
        StatusCode::INTERNAL_SERVER_ERROR,
        "internal",
        "the upload could not be stored; retry from the offset HEAD reports",
    )
}

pub(crate) fn not_found() -> Response {
    api_error(StatusCode::NOT_FOUND, "not_found", "no such upload")
}

pub(crate) fn set(h: &mut HeaderMap, name: &'static str, value: impl AsRef<str>) {
    if let Ok(v) = HeaderValue::from_str(value.as_ref()) {
        h.insert(HeaderName::from_static(name), v);
    }
}

/// What the server supports: tus versions, extensions, the size limit, checksum algorithms
/// (and the draft's `Upload-Limit`). Needs no token.
#[utoipa::path(options, path = "/files", tag = "uploads",
    responses((status = 204, description = "The server's upload capabilities",
        headers(("Tus-Version" = String), ("Tus-Extension" = String), ("Tus-Max-Size" = u64), ("Tus-Checksum-Algorithm" = String)))))]
async fn preflight(s: State<IngestState>) -> Response {
    capabilities(s).await
}

/// The same capabilities, asked of an upload's URL. Needs no token.
#[utoipa::path(options, path = "/files/{id}", tag = "uploads",
    params(("id" = String, Path, description = "The upload's id")),
    responses((status = 204, description = "The server's upload capabilities",
        headers(("Tus-Version" = String), ("Tus-Extension" = String), ("Tus-Max-Size" = u64), ("Tus-Checksum-Algorithm" = String)))))]
async fn preflight_upload(s: State<IngestState>) -> Response {
    capabilities(s).await
}

async fn capabilities(State(s): State<IngestState>) -> Response {
    let mut resp = StatusCode::NO_CONTENT.into_response();
    let h = resp.headers_mut();
    for (k, v) in tus::options_headers(&s.limits()) {
        set(h, lower(k), v);
    }
    set(h, "allow", "POST, HEAD, PATCH, DELETE, OPTIONS");
    // the resumable-upload draft's discovery (§Limits): appends and the limits of a creation
    set(h, "accept-patch", crate::rufh::PARTIAL_UPLOAD);
    if let Some(limit) = (crate::rufh::Dialect { interop: None })
        .limit(s.config.max_size, Some(s.config.expires_secs))
    {
        set(h, "upload-limit", limit);
    }
    resp
}

fn lower(k: &'static str) -> &'static str {
    match k {
        "Tus-Resumable" => "tus-resumable",
        "Tus-Version" => "tus-version",
        "Tus-Extension" => "tus-extension",
        "Tus-Max-Size" => "tus-max-size",
        "Tus-Checksum-Algorithm" => "tus-checksum-algorithm",
        _ => "x-unknown",
    }
}

pub(crate) fn location(
    headers: &HeaderMap,
    uri: &axum::http::Uri,
    version: Version,
    id: &str,
) -> String {
    common::http::RequestOrigin::of(headers, uri, version).url(&format!("/files/{id}"))
}

pub(crate) fn upload_headers(h: &mut HeaderMap, up: &Upload) {
    set(h, "upload-offset", up.received.to_string());
    set(h, "moment-id", &up.moment_id);
    set(h, "cache-control", "no-store");
    if !up.complete {
        set(h, "upload-expires", tus::http_date(up.expires_at));
    }
}

/// Loads an upload the caller owns; 404 for missing or foreign, 410 for expired.
/// Creates an upload (and its moment) for `user`, within the per-user limit.
pub(crate) async fn new_upload(
    s: &IngestState,
    user: &str,
    length: u64,
    metadata: &str,
) -> Result<Upload, Response> {
    if let Err(e) = s
        .shared
        .limiter
        .take(common::limit::Kind::Uploads, user, 1)
        .await
    {
        return Err(common::ApiError::from(e).into_response());
    }
    match record::count_active(&s.shared.db, user).await {
        Ok(n) if n >= i64::from(s.config.max_active_per_user) => {
            return Err(api_error(
                StatusCode::TOO_MANY_REQUESTS,
                "too_many_uploads",
                format!(
                    "you have {n} unfinished uploads (limit {}); finish or delete one first",
                    s.config.max_active_per_user
                ),
            ));
        }
        Ok(_) => {}
        Err(e) => return Err(internal(e)),
    }
    let (id, moment_id) = (new_id(), new_id());
    let expires = now_ms() + (s.config.expires_secs as i64) * 1000;
    if let Err(e) = record::create(
        &s.shared.db,
        &id,
        &moment_id,
        user,
        length,
        metadata,
        expires,
    )
    .await
    {
        return Err(internal(e));
    }
    s.metrics.created.inc();
    tracing::info!(upload = %id, moment = %moment_id, %user, length, "upload created");
    match record::get(&s.shared.db, &id).await {
        Ok(Some(up)) => Ok(up),
        Ok(None) => Err(internal("upload vanished after creation")),
        Err(e) => Err(internal(e)),
    }
}

pub(crate) async fn owned(s: &IngestState, id: &str, user: &str) -> Result<Upload, Response> {
    if !common::ids::is_id(id) {
        return Err(not_found());
    }
    match record::get(&s.shared.db, id).await {
        Ok(Some(up)) if up.user_id == user => {
            if !up.complete && up.expires_at <= now_ms() {
                return Err(api_error(
                    StatusCode::GONE,
                    "expired",
                    "this upload has expired",
                ));
            }
            Ok(up)
        }
        Ok(_) => Err(not_found()),
        Err(e) => Err(internal(e)),
    }
}

async fn create(
    State(s): State<IngestState>,
    User(user): User,
    headers: HeaderMap,
    uri: axum::http::Uri,
    version: Version,
    body: Body,
) -> Response {
    let req = match tus::parse_create(&headers, &s.limits()) {
        Ok(r) => r,
        Err(e) => return tus_error(e),
    };
    let mut up = match new_upload(&s, &user, req.length, &req.metadata_raw).await {
        Ok(up) => up,
        Err(resp) => return resp,
    };
    let id = up.id.clone();
    if req.with_body || req.length == 0 {
        match write(&s, up.clone(), body, req.checksum, None).await {
            Ok(u) => up = u,
            Err(resp) => return resp,
        }
    }
    let mut resp = StatusCode::CREATED.into_response();
    let h = resp.headers_mut();
    set(h, "location", location(&headers, &uri, version, &id));
    upload_headers(h, &up);
    resp
}

async fn head(
    State(s): State<IngestState>,
    User(user): User,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Response {
    if let Err(e) = tus::check_version(&headers) {
        return tus_error(e);
    }
    let up = match owned(&s, &id, &user).await {
        Ok(u) => u,
        Err(r) => return r,
    };
    let mut resp = StatusCode::OK.into_response();
    let h = resp.headers_mut();
    upload_headers(h, &up);
    set(h, "upload-length", up.length.to_string());
    if !up.metadata.is_empty() {
        set(h, "upload-metadata", &up.metadata);
    }
    resp
}

/// Reads and drops what is left of a request body (bounded), so a client still sending gets
/// our answer instead of a connection reset.
pub(crate) async fn drain(body: Body) {
    let mut stream = body.into_data_stream();
    let mut left: usize = 16 << 20;
    let _ = tokio::time::timeout(Duration::from_secs(5), async {
        while let Some(Ok(chunk)) = stream.next().await {
            left = left.saturating_sub(chunk.len());
            if left == 0 {
                break;
            }
        }
    })
    .await;
}

async fn patch(
    State(s): State<IngestState>,
    User(user): User,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let req = match tus::parse_patch(&headers) {
        Ok(r) => r,
        Err(e) => {
            drain(body).await;
            return tus_error(e);
        }
    };
    let up = match owned(&s, &id, &user).await {
        Ok(u) => u,
        Err(r) => {
            drain(body).await;
            return r;
        }
    };
    let state = tus::Upload {
        length: up.length,
        offset: up.received,
        expires_at_ms: up.expires_at,
        complete: up.complete,
    };
    if let Err(e) = tus::check_patch(&state, &req, now_ms()) {
        if e.status != 413 {
            drain(body).await;
        }
        return tus_error(e);
    }
    let up = if up.complete {
        up
    } else {
        match write(&s, up, body, req.checksum, None).await {
            Ok(u) => u,
            Err(r) => return r,
        }
    };
    let mut resp = StatusCode::NO_CONTENT.into_response();
    upload_headers(resp.headers_mut(), &up);
    resp
}

/// Cancels an upload (tus termination, the draft's cancellation): stops a request still
/// writing to it here, frees its storage and forgets it.
pub(crate) async fn terminate_core(s: &IngestState, id: &str, user: &str) -> Response {
    let up = match owned(s, id, user).await {
        Ok(u) => u,
        Err(r) => return r,
    };
    // stop a request still writing to it in this process
    if let Ok(map) = s.active.lock()
        && let Some(a) = map.get(id)
    {
        a.cancel.cancel();
    }
    if !up.complete
        && let Err(e) = sink::remove(&s.shared.store, &up).await
    {
        return internal(e);
    }
    if let Err(e) = record::delete(&s.shared.db, &up, record::Removal::Terminated).await {
        return internal(e);
    }
    tracing::info!(upload = %id, "upload terminated");
    StatusCode::NO_CONTENT.into_response()
}

/// Removes the in-process registration when the writing request ends, however it ends.
struct Registration {
    active: Arc<Mutex<HashMap<String, Active>>>,
    id: String,
    owner: String,
}

impl Drop for Registration {
    fn drop(&mut self) {
        if let Ok(mut map) = self.active.lock()
            && map.get(&self.id).is_some_and(|a| a.owner == self.owner)
        {
            map.remove(&self.id);
        }
    }
}

/// Takes the upload's write lock: in this process (a stalled earlier request is cancelled once
/// it has been silent for `stale_lock_secs`) and in the database (across ingest nodes).
async fn acquire(
    s: &IngestState,
    id: &str,
) -> Result<(String, CancellationToken, Arc<AtomicI64>, Registration), Response> {
    let owner = new_id();
    let stale_ms = (s.config.stale_lock_secs as i64) * 1000;
    let busy = || {
        api_error(
            StatusCode::LOCKED,
            "locked",
            "another request is writing to this upload; retry after it ends",
        )
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(3);
    let patience = tokio::time::Instant::now() + Duration::from_secs(1);
    let (cancel, last) = loop {
        let waited = {
            let Ok(mut map) = s.active.lock() else {
                return Err(internal("lock registry poisoned"));
            };
            match map.get(id) {
                Some(a) if now_ms() - a.last_byte_ms.load(Ordering::Relaxed) < stale_ms => {
                    // Usually the previous request of a reconnecting client, finishing up:
                    // wait a moment for it before answering 423.
                    if tokio::time::Instant::now() > patience {
                        return Err(busy());
                    }
                    true
                }
                Some(a) => {
                    // Its client went silent: stop it, then wait for it to let go.
                    a.cancel.cancel();
                    true
                }
                None => {
                    let cancel = CancellationToken::new();
                    let last = Arc::new(AtomicI64::new(now_ms()));
                    map.insert(
                        id.to_string(),
                        Active {
                            owner: owner.clone(),
                            cancel: cancel.clone(),
                            last_byte_ms: last.clone(),
                        },
                    );
                    break (cancel, last);
                }
            }
        };
        if waited {
            if tokio::time::Instant::now() > deadline {
                return Err(busy());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    let reg = Registration {
        active: s.active.clone(),
        id: id.to_string(),
        owner: owner.clone(),
    };
    let until = now_ms() + stale_ms;
    match record::lock(&s.shared.db, id, &owner, until).await {
        Ok(true) => Ok((owner, cancel, last, reg)),
        Ok(false) => Err(busy()),
        Err(e) => Err(internal(e)),
    }
}

enum Hasher {
    Sha1(sha1::Sha1),
    Sha256(sha2::Sha256),
}

impl Hasher {
    fn new(c: &Checksum) -> Hasher {
        match c.algorithm {
            Algorithm::Sha1 => Hasher::Sha1(sha1::Sha1::new()),
            Algorithm::Sha256 => Hasher::Sha256(sha2::Sha256::new()),
        }
    }
    fn update(&mut self, data: &[u8]) {
        match self {
            Hasher::Sha1(h) => h.update(data),
            Hasher::Sha256(h) => h.update(data),
        }
    }
    fn finish(self) -> Vec<u8> {
        match self {
            Hasher::Sha1(h) => h.finalize().to_vec(),
            Hasher::Sha256(h) => h.finalize().to_vec(),
        }
    }
}

/// Bytes read between two takes from the upload byte throttle.
const THROTTLE_STEP: u64 = 64 << 10;

/// Pays `bytes` to `user`'s upload byte throttle (`limits.upload_bytes`), waiting for the
/// bucket to refill: `Ok(false)` when a newer request took the upload over meanwhile, `Err`
/// (503) when the limiter fails closed.
async fn pay(
    s: &IngestState,
    user: &str,
    bytes: u64,
    cancel: &CancellationToken,
) -> Result<bool, Response> {
    let wait = s
        .shared
        .limiter
        .wait(common::limit::Kind::UploadBytes, user, bytes);
    tokio::select! {
        paid = wait => match paid {
            Ok(_) => Ok(true),
            Err(e) => Err(common::ApiError::from(e).into_response()),
        },
        _ = cancel.cancelled() => Ok(false),
    }
}

/// Streams a request body into the upload under the write lock, making progress durable as it
/// goes (or, with a checksum, all at once after the digest matches), and completes the upload
/// when its last byte lands. Returns the upload as it now stands.
pub(crate) async fn write(
    s: &IngestState,
    up: Upload,
    body: Body,
    checksum: Option<Checksum>,
    repr: Option<Checksum>,
) -> Result<Upload, Response> {
    let (owner, cancel, last_byte, _reg) = match acquire(s, &up.id).await {
        Ok(x) => x,
        Err(r) => {
            drain(body).await;
            return Err(r);
        }
    };
    let result = write_locked(
        s,
        up.clone(),
        body,
        checksum,
        repr,
        &owner,
        &cancel,
        &last_byte,
    )
    .await;
    let _ = record::release(&s.shared.db, &up.id, &owner).await;
    result
}

#[allow(clippy::too_many_arguments)]
async fn write_locked(
    s: &IngestState,
    up: Upload,
    body: Body,
    checksum: Option<Checksum>,
    repr: Option<Checksum>,
    owner: &str,
    cancel: &CancellationToken,
    last_byte: &AtomicI64,
) -> Result<Upload, Response> {
    // The offset may have moved while we waited for the lock.
    let up = match record::get(&s.shared.db, &up.id).await {
        Ok(Some(u)) if u.received == up.received && !u.complete => u,
        Ok(Some(u)) => {
            drain(body).await;
            let mut resp = api_error(
                StatusCode::CONFLICT,
                "offset_mismatch",
                format!("the upload's offset is now {}", u.received),
            );
            set(resp.headers_mut(), "upload-offset", u.received.to_string());
            return Err(resp);
        }
        Ok(None) => return Err(not_found()),
        Err(e) => return Err(internal(e)),
    };
    let mut writer = Writer::open(
        &s.shared.store,
        &s.shared.db,
        &up,
        s.part_size,
        s.config.s3_parts_in_flight,
    )
    .await
    .map_err(internal)?;
    let mut hasher = checksum.as_ref().map(Hasher::new);
    let stale = Duration::from_secs(s.config.stale_lock_secs);
    let idle = Duration::from_secs(s.config.body_idle_secs);
    let mut pace = crate::tus::Pace::new(
        s.config.body_min_rate,
        Duration::from_secs(s.config.body_rate_window_secs.max(1)),
        tokio::time::Instant::now().into_std(),
    );
    let commit_every = s.config.commit_every_bytes.max(1);
    let commit_every_time = Duration::from_millis(s.config.commit_every_ms.max(1));
    let mut last_commit = tokio::time::Instant::now();
    let mut since_commit = 0u64;
    let mut committed = up.received;
    let mut stream = body.into_data_stream();
    let mut complete_body = false;
    let mut taken_over = false;
    // the per-user byte throttle (limits.upload_bytes), paid in steps so a Redis round trip
    // covers many small frames
    let throttled = s.shared.limiter.is_on(common::limit::Kind::UploadBytes);
    let mut unpaid = 0u64;
    let expires = || now_ms() + (s.config.expires_secs as i64) * 1000;
    let lock_until = || now_ms() + (stale.as_millis() as i64);
    loop {
        let next = tokio::select! {
            n = tokio::time::timeout(idle, stream.next()) => n,
            _ = cancel.cancelled() => {
                taken_over = true;
                break;
            }
        };
        let chunk = match next {
            Err(_) => break, // the client went silent: keep what is durable
            Ok(None) => {
                complete_body = true;
                break;
            }
            Ok(Some(Err(_))) => break, // connection cut mid-body
            Ok(Some(Ok(c))) => c,
        };
        let too_slow = !pace.arrived(chunk.len() as u64, tokio::time::Instant::now().into_std());
        if writer.position() + chunk.len() as u64 > up.length {
            let _ = writer.discard().await;
            return Err(api_error(
                StatusCode::PAYLOAD_TOO_LARGE,
                "past_length",
                "the body goes past Upload-Length; nothing from this request was kept",
            ));
        }
        writer.write(&chunk).await.map_err(internal)?;
        unpaid += chunk.len() as u64;
        if throttled && unpaid >= THROTTLE_STEP {
            match pay(s, &up.user_id, std::mem::take(&mut unpaid), cancel).await {
                Ok(true) => {}
                Ok(false) => {
                    taken_over = true;
                    break;
                }
                Err(e) => {
                    let _ = writer.rollback().await;
                    return Err(e);
                }
            }
        }
        if let Some(h) = hasher.as_mut() {
            h.update(&chunk);
        }
        if too_slow {
            // what arrived is kept, as when a body goes silent; the lock goes with the request
            tracing::info!(
                upload = %up.id,
                min_rate = s.config.body_min_rate,
                "request body slower than ingest.body_min_rate; ended, keeping what is durable"
            );
            s.metrics.slow_bodies.inc();
            break;
        }
        last_byte.store(now_ms(), Ordering::Relaxed);
        since_commit += chunk.len() as u64;
        if hasher.is_none()
            && (since_commit >= commit_every || last_commit.elapsed() >= commit_every_time)
        {
            since_commit = 0;
            last_commit = tokio::time::Instant::now();
            let c = writer.checkpoint(false).await.map_err(internal)?;
            if c.received > up.received || !c.parts.is_empty() {
                match record::commit(
                    &s.shared.db,
                    &s.shared.queue,
                    &up,
                    owner,
                    &c,
                    committed,
                    expires(),
                    lock_until(),
                )
                .await
                {
                    Ok(true) => {
                        s.metrics.bytes.inc_by(c.received.saturating_sub(committed));
                        committed = c.received;
                    }
                    Ok(false) => return Err(lost()),
                    Err(e) => return Err(internal(e)),
                }
            } else if !record::refresh(&s.shared.db, &up.id, owner, lock_until())
                .await
                .map_err(internal)?
            {
                return Err(lost());
            }
        }
    }
    if throttled && unpaid > 0 && !taken_over {
        // what the last step left unpaid (else many small PATCHes would never pay)
        match pay(s, &up.user_id, unpaid, cancel).await {
            Ok(paid) => taken_over = !paid,
            Err(e) => {
                let _ = writer.rollback().await;
                return Err(e);
            }
        }
    }
    if taken_over {
        // A newer request took the upload over: it resumes from our last checkpoint.
        let _ = writer.rollback().await;
        return Err(lost());
    }
    if let (Some(h), Some(c)) = (hasher, &checksum) {
        if !complete_body {
            let _ = writer.discard().await;
            return Err(api_error(
                StatusCode::BAD_REQUEST,
                "incomplete_body",
                "the body ended early; a checksummed chunk is kept whole or not at all",
            ));
        }
        if h.finish() != c.digest {
            s.metrics.checksum_failures.inc();
            let _ = writer.discard().await;
            return Err(api_error(
                StatusCode::from_u16(tus::CHECKSUM_MISMATCH).unwrap_or(StatusCode::BAD_REQUEST),
                "checksum_mismatch",
                "Upload-Checksum does not match the body; the chunk was discarded",
            ));
        }
    }
    let c = writer.checkpoint(true).await.map_err(internal)?;
    match record::commit(
        &s.shared.db,
        &s.shared.queue,
        &up,
        owner,
        &c,
        committed,
        expires(),
        lock_until(),
    )
    .await
    {
        Ok(true) => {}
        Ok(false) => return Err(lost()),
        Err(e) => return Err(internal(e)),
    }
    s.metrics.bytes.inc_by(c.received.saturating_sub(committed));
    let mut now = Upload {
        received: c.received,
        tail_size: c.tail_size.unwrap_or(up.tail_size),
        ..up
    };
    if now.received == now.length {
        let finish = match writer.finish(&now).await {
            Ok(f) => f,
            // The bytes are durable; a retry (HEAD, then an empty PATCH) finishes the job.
            Err(e) => return Err(internal(e)),
        };
        if let Some(want) = &repr {
            match sink::digest(&s.shared.store, &s.shared.db, &now, want.algorithm).await {
                Ok(got) if got == want.digest => {}
                Ok(_) => {
                    // The representation is not what the client meant to send: the upload
                    // failed as a whole (draft §Representation Digests); nothing is processed.
                    let _ = sink::remove(&s.shared.store, &now).await;
                    let _ =
                        record::delete(&s.shared.db, &now, record::Removal::DigestMismatch).await;
                    return Err(api_error(
                        StatusCode::BAD_REQUEST,
                        "repr_digest_mismatch",
                        "the uploaded bytes do not match Repr-Digest; the upload failed and was removed",
                    ));
                }
                Err(e) => return Err(internal(e)),
            }
        }
        let pieces = finish == sink::Finish::Pieces;
        match record::complete(&s.shared.db, &s.shared.queue, &now, owner, pieces).await {
            Ok(true) => {
                s.metrics.completed.inc();
                now.complete = true;
                tracing::info!(upload = %now.id, moment = %now.moment_id, "upload complete; transcode queued");
                // (with pieces, the assembly job removes them once the object is whole)
                if !pieces && let Err(e) = sink::cleanup(&s.shared.store, &now).await {
                    // Only space is at stake: the object holds every byte.
                    tracing::warn!(upload = %now.id, error = %e, "could not remove the upload's part objects");
                }
            }
            Ok(false) => return Err(lost()),
            Err(e) => return Err(internal(e)),
        }
    }
    Ok(now)
}

fn lost() -> Response {
    api_error(
        StatusCode::CONFLICT,
        "lock_lost",
        "another request took over this upload; HEAD for the current offset",
    )
}

/// Deletes expired unfinished uploads (bytes and rows) every `cleanup_interval_secs`.
pub async fn sweep_expired(s: IngestState, shutdown: CancellationToken) {
    let every = Duration::from_secs(s.config.cleanup_interval_secs.max(1));
    loop {
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = shutdown.cancelled() => return,
        }
        match record::expired(&s.shared.db, 100).await {
            Ok(list) => {
                for up in list {
                    if let Err(e) = sink::remove(&s.shared.store, &up).await {
                        tracing::warn!(upload = %up.id, error = %e, "could not free an expired upload");
                        continue;
                    }
                    if let Err(e) =
                        record::delete(&s.shared.db, &up, record::Removal::Expired).await
                    {
                        tracing::warn!(upload = %up.id, error = %e, "could not delete an expired upload");
                    } else {
                        tracing::info!(upload = %up.id, "expired upload removed");
                    }
                }
            }
            Err(e) => tracing::warn!(error = %e, "expiry sweep failed"),
        }
    }
}
