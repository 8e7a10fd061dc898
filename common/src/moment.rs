//! The `moments` table: one row per uploaded video, from upload to ready (or failed).
//! Ingest creates rows, transcode moves them along, the API reads them — always scoped to the
//! owning user, so another user's moment is indistinguishable from a missing one.

use serde::{Deserialize, Serialize};
use sqlx::Row;

use crate::db::{Change, Db, Error};
use crate::events::{self, Payload};
use crate::ids::now_ms;

/// Where a moment is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum State {
    /// Bytes are still arriving.
    Uploading,
    /// Upload complete; waiting for a transcode worker.
    Queued,
    /// A worker is making the ladder.
    Transcoding,
    /// The ladder is published.
    Ready,
    /// Could not be made; `error` says why.
    Failed,
}

impl State {
    /// The text stored in the database.
    pub fn as_str(self) -> &'static str {
        match self {
            State::Uploading => "uploading",
            State::Queued => "queued",
            State::Transcoding => "transcoding",
            State::Ready => "ready",
            State::Failed => "failed",
        }
    }

    /// Parses the stored text.
    pub fn parse(s: &str) -> Option<State> {
        Some(match s {
            "uploading" => State::Uploading,
            "queued" => State::Queued,
            "transcoding" => State::Transcoding,
            "ready" => State::Ready,
            "failed" => State::Failed,
            _ => return None,
        })
    }

    /// Ready and failed never change again.
    pub fn is_final(self) -> bool {
        matches!(self, State::Ready | State::Failed)
    }
}

/// What the worker says about a moment while it works on it (kept as JSON in the row).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Detail {
    /// Whether the ladder is being (or was) made while the upload arrived; unset until a
    /// worker has decided.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub streaming: Option<bool>,
    /// Why the after-upload path was taken (or streaming stopped).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Seconds of video encoded so far.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub encoded_s: Option<f64>,
    /// Seconds of video that have arrived (durably) so far, when known.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub received_s: Option<f64>,
    /// Object key of the poster, written as soon as the first frame is decoded.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub poster_key: Option<String>,
}

/// One row.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Moment {
    /// Public id.
    pub id: String,
    /// Owner.
    pub user_id: String,
    /// Life-cycle state.
    pub state: State,
    /// 0..1 while transcoding.
    pub progress: f64,
    /// Human-readable reason when failed.
    pub error: Option<String>,
    /// Object key of the uploaded source.
    pub source_key: Option<String>,
    /// Published renditions (JSON written by the packager).
    pub renditions: serde_json::Value,
    /// What the worker says while it works.
    pub detail: Detail,
    /// Creation time (ms since epoch).
    pub created_at: i64,
    /// Last change (ms since epoch).
    pub updated_at: i64,
}

macro_rules! columns {
    () => {
        "id, user_id, state, progress, error, source_key, renditions, detail, created_at, updated_at"
    };
}

fn from_row(row: &sqlx::any::AnyRow) -> Result<Moment, Error> {
    let state: String = row.try_get("state")?;
    let renditions: String = row.try_get("renditions")?;
    let detail: String = row.try_get("detail")?;
    Ok(Moment {
        id: row.try_get("id")?,
        user_id: row.try_get("user_id")?,
        state: State::parse(&state).ok_or_else(|| {
            Error::Sql(sqlx::Error::Decode(
                format!("unknown moment state {state:?}").into(),
            ))
        })?,
        progress: row.try_get("progress")?,
        error: row.try_get("error")?,
        source_key: row.try_get("source_key")?,
        renditions: serde_json::from_str(&renditions).unwrap_or(serde_json::Value::Null),
        detail: serde_json::from_str(&detail).unwrap_or_default(),
        created_at: row.try_get("created_at")?,
        updated_at: row.try_get("updated_at")?,
    })
}

/// Inserts a new moment.
pub async fn create(
    db: &Db,
    id: &str,
    user_id: &str,
    state: State,
    source_key: Option<&str>,
) -> Result<Moment, Error> {
    let now = now_ms();
    sqlx::query(
        "INSERT INTO moments (id, user_id, state, progress, source_key, created_at, updated_at) \
         VALUES ($1, $2, $3, 0, $4, $5, $5)",
    )
    .bind(id)
    .bind(user_id)
    .bind(state.as_str())
    .bind(source_key)
    .bind(now)
    .execute(db.pool())
    .await?;
    db.notify(Change::Moment(id.to_string()));
    Ok(Moment {
        id: id.to_string(),
        user_id: user_id.to_string(),
        state,
        progress: 0.0,
        error: None,
        source_key: source_key.map(str::to_string),
        renditions: serde_json::json!([]),
        detail: Detail::default(),
        created_at: now,
        updated_at: now,
    })
}

/// The moment with this id, whoever owns it (for workers).
pub async fn get(db: &Db, id: &str) -> Result<Option<Moment>, Error> {
    let row = sqlx::query(concat!(
        "SELECT ",
        columns!(),
        " FROM moments WHERE id = $1"
    ))
    .bind(id)
    .fetch_optional(db.pool())
    .await?;
    row.as_ref().map(from_row).transpose()
}

/// The moment with this id if `user_id` owns it; `None` for a missing or foreign one.
pub async fn get_for_user(db: &Db, id: &str, user_id: &str) -> Result<Option<Moment>, Error> {
    let row = sqlx::query(concat!(
        "SELECT ",
        columns!(),
        " FROM moments WHERE id = $1 AND user_id = $2"
    ))
    .bind(id)
    .bind(user_id)
    .fetch_optional(db.pool())
    .await?;
    row.as_ref().map(from_row).transpose()
}

/// Moves a moment to `state` (with `error` for failures). Returns false when no row changed,
/// which includes trying to move a moment that is already final. A real change to
/// `transcoding` or `failed` writes its event (`moment.transcoding`, `moment.failed`) in the
/// same transaction; setting the state a moment already has writes none.
pub async fn set_state(
    db: &Db,
    id: &str,
    state: State,
    error: Option<&str>,
) -> Result<bool, Error> {
    let update = |same: bool| {
        let sql = if same {
            "UPDATE moments SET state = $1, error = $2, updated_at = $3, \
             progress = CASE WHEN $1 = 'ready' THEN 1 \
                             WHEN $1 IN ('queued', 'uploading') THEN 0 ELSE progress END \
             WHERE id = $4 AND state NOT IN ('ready', 'failed') AND state = $1 RETURNING user_id"
        } else {
            "UPDATE moments SET state = $1, error = $2, updated_at = $3, \
             progress = CASE WHEN $1 = 'ready' THEN 1 \
                             WHEN $1 IN ('queued', 'uploading') THEN 0 ELSE progress END \
             WHERE id = $4 AND state NOT IN ('ready', 'failed') AND state <> $1 RETURNING user_id"
        };
        sqlx::query(sql)
            .bind(state.as_str())
            .bind(error)
            .bind(now_ms())
            .bind(id)
    };
    let mut tx = db.pool().begin().await?;
    // the write comes first, so SQLite takes its write lock before anything is read
    let changed = update(false).fetch_optional(&mut *tx).await?;
    let mut emitted = false;
    let done = match changed {
        Some(row) => {
            let user_id: String = row.try_get("user_id")?;
            let payload = match state {
                State::Transcoding => Some(Payload::MomentTranscoding(events::MomentRef {
                    moment_id: id.to_string(),
                    user_id,
                })),
                State::Failed => Some(Payload::MomentFailed(events::MomentFailed {
                    moment_id: id.to_string(),
                    user_id,
                    reason: error.unwrap_or("failed").to_string(),
                })),
                _ => None,
            };
            if let Some(p) = payload {
                events::emit_on(&mut tx, p).await?;
                emitted = true;
            }
            true
        }
        None => update(true).fetch_optional(&mut *tx).await?.is_some(),
    };
    tx.commit().await?;
    db.notify(Change::Moment(id.to_string()));
    if emitted {
        db.notify(Change::Events);
    }
    Ok(done)
}

/// Marks a moment ready with what was published (a JSON object written by the packager), and
/// writes `moment.ready` in the same transaction (URLs under `public_base` when set, else
/// paths on the service's own origin). False when the moment was already final (a second
/// completion publishes nothing new, and reports nothing).
pub async fn set_ready(
    db: &Db,
    id: &str,
    published: &serde_json::Value,
    public_base: Option<&str>,
) -> Result<bool, Error> {
    let mut tx = db.pool().begin().await?;
    let row = sqlx::query(
        "UPDATE moments SET state = 'ready', progress = 1, error = NULL, renditions = $1, \
         updated_at = $2 WHERE id = $3 AND state NOT IN ('ready', 'failed') RETURNING user_id",
    )
    .bind(published.to_string())
    .bind(now_ms())
    .bind(id)
    .fetch_optional(&mut *tx)
    .await?;
    let done = row.is_some();
    if let Some(row) = row {
        let user_id: String = row.try_get("user_id")?;
        events::emit_on(&mut tx, ready_event(id, &user_id, published, public_base)).await?;
    }
    tx.commit().await?;
    db.notify(Change::Moment(id.to_string()));
    if done {
        db.notify(Change::Events);
    }
    Ok(done)
}

/// `moment.ready` from the packager's record.
fn ready_event(
    id: &str,
    user_id: &str,
    published: &serde_json::Value,
    public_base: Option<&str>,
) -> Payload {
    let url = |key: &str| match public_base {
        Some(base) => format!("{}/{key}", base.trim_end_matches('/')),
        None => format!("/{key}"),
    };
    let master = published
        .get("master_key")
        .and_then(|v| v.as_str())
        .map(str::to_string)
        .unwrap_or_else(|| format!("hls/{id}/master.m3u8"));
    let renditions = published
        .get("renditions")
        .and_then(|r| r.as_array())
        .map(|list| {
            list.iter()
                .map(|r| events::Rendition {
                    name: r["name"].as_str().unwrap_or_default().to_string(),
                    width: r["width"].as_u64().unwrap_or(0) as u32,
                    height: r["height"].as_u64().unwrap_or(0) as u32,
                    bandwidth: r["bandwidth"].as_u64().unwrap_or(0),
                })
                .collect()
        })
        .unwrap_or_default();
    Payload::MomentReady(events::MomentReady {
        moment_id: id.to_string(),
        user_id: user_id.to_string(),
        master_url: url(&master),
        renditions,
        poster_url: published
            .get("poster_key")
            .and_then(|v| v.as_str())
            .map(url),
        duration: published.get("duration").and_then(|v| v.as_f64()),
    })
}

/// The job kind that turns an uploaded moment into its ladder.
pub const TRANSCODE_KIND: &str = "transcode";

/// The dedup key of a moment's transcode job.
pub fn transcode_key(moment_id: &str) -> String {
    format!("{TRANSCODE_KIND}:{moment_id}")
}

/// The transcode job for a moment (one per moment: enqueueing twice is a no-op). A job
/// enqueued while the upload is still arriving is a background job: an idle worker may start
/// on the growing upload; completion promotes it.
pub fn transcode_job(moment_id: &str, priority: crate::queue::Priority) -> crate::queue::NewJob {
    crate::queue::NewJob {
        kind: TRANSCODE_KIND.to_string(),
        payload: serde_json::json!({ "moment": moment_id }),
        dedup_key: Some(transcode_key(moment_id)),
        max_attempts: None,
        priority,
    }
}

/// The job kind that makes a moment's captions.
pub const CAPTIONS_KIND: &str = "captions";

/// Where the transcoder leaves a moment's 16 kHz mono audio (WAV) for its captions job.
pub fn speech_key(moment_id: &str) -> String {
    format!("speech/{moment_id}.wav")
}

/// The captions job for a moment (one per moment).
pub fn captions_job(moment_id: &str) -> crate::queue::NewJob {
    crate::queue::NewJob {
        kind: CAPTIONS_KIND.to_string(),
        payload: serde_json::json!({ "moment": moment_id }),
        dedup_key: Some(format!("{CAPTIONS_KIND}:{moment_id}")),
        max_attempts: None,
        priority: crate::queue::Priority::default(),
    }
}

/// The job kind that renders a moment's poster from another frame of its ladder.
pub const POSTER_KIND: &str = "poster";

/// The job that makes the frame at `time` (seconds) a ready moment's poster. Each request is
/// its own job (no dedup key): the last one done wins, as the owner expects of the last click.
pub fn poster_job(moment_id: &str, time: f64) -> crate::queue::NewJob {
    crate::queue::NewJob {
        kind: POSTER_KIND.to_string(),
        payload: serde_json::json!({ "moment": moment_id, "time": time }),
        dedup_key: None,
        max_attempts: None,
        priority: crate::queue::Priority::default(),
    }
}

/// Sets `field` of a ready moment's published record to `value` (captions, the chosen
/// poster, …: what is added after `ready`). False when the moment is not ready (or gone).
pub async fn set_published_field(
    db: &Db,
    id: &str,
    field: &str,
    value: serde_json::Value,
) -> Result<bool, Error> {
    let mut tx = db.pool().begin().await?;
    // the write lock first (SQLite), then the read of what to change
    sqlx::query("UPDATE moments SET updated_at = updated_at WHERE id = $1 AND state = 'ready'")
        .bind(id)
        .execute(&mut *tx)
        .await?;
    let row: Option<String> =
        sqlx::query_scalar("SELECT renditions FROM moments WHERE id = $1 AND state = 'ready'")
            .bind(id)
            .fetch_optional(&mut *tx)
            .await?;
    let Some(text) = row else {
        tx.rollback().await?;
        return Ok(false);
    };
    let mut record: serde_json::Value =
        serde_json::from_str(&text).unwrap_or_else(|_| serde_json::json!({}));
    if !record.is_object() {
        record = serde_json::json!({});
    }
    record[field] = value;
    sqlx::query("UPDATE moments SET renditions = $1, updated_at = $2 WHERE id = $3")
        .bind(record.to_string())
        .bind(now_ms())
        .bind(id)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    db.notify(Change::Moment(id.to_string()));
    Ok(true)
}

/// Records transcode progress (clamped to 0..1; left alone while the moment is still
/// uploading, where progress is the upload's) and the worker's detail.
pub async fn set_progress(db: &Db, id: &str, progress: f64, detail: &Detail) -> Result<(), Error> {
    let p = if progress.is_finite() {
        progress.clamp(0.0, 1.0)
    } else {
        0.0
    };
    let detail =
        serde_json::to_string(detail).map_err(|e| Error::Sql(sqlx::Error::Encode(e.into())))?;
    sqlx::query(
        "UPDATE moments SET progress = CASE WHEN state = 'uploading' THEN progress ELSE $1 END, \
         detail = $2, updated_at = $3 WHERE id = $4 AND state NOT IN ('ready', 'failed')",
    )
    .bind(p)
    .bind(detail)
    .bind(now_ms())
    .bind(id)
    .execute(db.pool())
    .await?;
    db.notify(Change::Moment(id.to_string()));
    Ok(())
}
