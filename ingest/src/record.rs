//! Upload rows in the metadata database: creation (with the moment, in one transaction),
//! the write lock, durable-offset commits, completion (which queues the transcode in the same
//! transaction) and expiry.

use async_trait::async_trait;
use common::db::{Change, Db, Error};
use common::events::{self, Payload};
use common::ids::now_ms;
use common::moment::{self, State};
use common::queue::{self, Priority, Queue};
use common::store::{Extent, Growing, Key, Part, Piece, Store};
use sqlx::Row;

/// One upload.
#[derive(Debug, Clone, PartialEq)]
pub struct Upload {
    /// Id (in `/files/{id}`).
    pub id: String,
    /// Owner.
    pub user_id: String,
    /// The moment it becomes.
    pub moment_id: String,
    /// Total size.
    pub length: u64,
    /// Durable offset.
    pub received: u64,
    /// Raw `Upload-Metadata`.
    pub metadata: String,
    /// All bytes are in.
    pub complete: bool,
    /// Expiry (ms).
    pub expires_at: i64,
    /// S3 multipart upload id, once started.
    pub s3_upload_id: Option<String>,
    /// Bytes in the S3 tail object (below the part size).
    pub tail_size: u64,
    /// Last change (ms since the epoch).
    pub updated_at: i64,
}

macro_rules! cols {
    () => {
        "id, user_id, moment_id, length, received, metadata, state, expires_at, s3_upload_id, tail_size, updated_at"
    };
}

fn from_row(r: &sqlx::any::AnyRow) -> Result<Upload, Error> {
    let state: String = r.try_get("state")?;
    Ok(Upload {
        id: r.try_get("id")?,
        user_id: r.try_get("user_id")?,
        moment_id: r.try_get("moment_id")?,
        length: r.try_get::<i64, _>("length")? as u64,
        received: r.try_get::<i64, _>("received")? as u64,
        metadata: r.try_get("metadata")?,
        complete: state == "complete",
        expires_at: r.try_get("expires_at")?,
        s3_upload_id: r.try_get("s3_upload_id")?,
        tail_size: r.try_get::<i64, _>("tail_size")? as u64,
        updated_at: r.try_get("updated_at")?,
    })
}

/// The object key of an upload's bytes (the transcoder's source).
pub fn source_key(id: &str) -> String {
    format!("uploads/{id}")
}

/// The object key of the bytes past the last full S3 part, which start at `base`.
pub fn tail_key(id: &str, base: u64) -> String {
    format!("uploads/{id}.tail/{base:012}")
}

/// The object key of S3 part `number` of an upload.
pub fn part_key(id: &str, number: i32) -> String {
    format!("uploads/{id}.parts/{number:05}")
}

/// The prefix of every part and tail object of an upload.
pub fn pieces_prefix(id: &str) -> String {
    format!("uploads/{id}.")
}

/// Creates the upload and its moment (state `uploading`) together.
pub async fn create(
    db: &Db,
    id: &str,
    moment_id: &str,
    user: &str,
    length: u64,
    metadata: &str,
    expires_at: i64,
) -> Result<(), Error> {
    let now = now_ms();
    let mut tx = db.pool().begin().await?;
    sqlx::query(
        "INSERT INTO uploads (id, user_id, moment_id, length, received, metadata, state, \
         expires_at, created_at, updated_at) VALUES ($1, $2, $3, $4, 0, $5, 'active', $6, $7, $7)",
    )
    .bind(id)
    .bind(user)
    .bind(moment_id)
    .bind(length as i64)
    .bind(metadata)
    .bind(expires_at)
    .bind(now)
    .execute(&mut *tx)
    .await?;
    sqlx::query(
        "INSERT INTO moments (id, user_id, state, progress, source_key, created_at, updated_at) \
         VALUES ($1, $2, 'uploading', 0, $3, $4, $4)",
    )
    .bind(moment_id)
    .bind(user)
    .bind(source_key(id))
    .bind(now)
    .execute(&mut *tx)
    .await?;
    let metadata = crate::tus::parse_metadata(metadata)
        .map(|m| {
            m.into_iter()
                .map(|(k, v)| {
                    (
                        k,
                        v.map(|b| String::from_utf8_lossy(&b).into_owned())
                            .unwrap_or_default(),
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    events::emit_on(
        &mut tx,
        Payload::UploadCreated(events::UploadCreated {
            upload_id: id.to_string(),
            moment_id: moment_id.to_string(),
            user_id: user.to_string(),
            length,
            metadata,
        }),
    )
    .await?;
    tx.commit().await?;
    db.notify(Change::Events);
    Ok(())
}

/// The upload, whoever owns it.
pub async fn get(db: &Db, id: &str) -> Result<Option<Upload>, Error> {
    let row = sqlx::query(concat!("SELECT ", cols!(), " FROM uploads WHERE id = $1"))
        .bind(id)
        .fetch_optional(db.pool())
        .await?;
    row.as_ref().map(from_row).transpose()
}

/// Unfinished, unexpired uploads of a user.
pub async fn count_active(db: &Db, user: &str) -> Result<i64, Error> {
    Ok(sqlx::query_scalar(
        "SELECT COUNT(*) FROM uploads WHERE user_id = $1 AND state = 'active' AND expires_at > $2",
    )
    .bind(user)
    .bind(now_ms())
    .fetch_one(db.pool())
    .await?)
}

/// Takes the write lock until `until` (ms) unless another live holder has it.
pub async fn lock(db: &Db, id: &str, owner: &str, until: i64) -> Result<bool, Error> {
    let r = sqlx::query(
        "UPDATE uploads SET lock_owner = $1, lock_until = $2 \
         WHERE id = $3 AND (lock_owner IS NULL OR lock_until < $4 OR lock_owner = $1)",
    )
    .bind(owner)
    .bind(until)
    .bind(id)
    .bind(now_ms())
    .execute(db.pool())
    .await?;
    Ok(r.rows_affected() == 1)
}

/// Extends the lock (while bytes keep arriving); false when it was lost.
pub async fn refresh(db: &Db, id: &str, owner: &str, until: i64) -> Result<bool, Error> {
    let r = sqlx::query("UPDATE uploads SET lock_until = $1 WHERE id = $2 AND lock_owner = $3")
        .bind(until)
        .bind(id)
        .bind(owner)
        .execute(db.pool())
        .await?;
    Ok(r.rows_affected() == 1)
}

/// Releases the lock if still held by `owner`.
pub async fn release(db: &Db, id: &str, owner: &str) -> Result<(), Error> {
    sqlx::query(
        "UPDATE uploads SET lock_owner = NULL, lock_until = NULL WHERE id = $1 AND lock_owner = $2",
    )
    .bind(id)
    .bind(owner)
    .execute(db.pool())
    .await?;
    Ok(())
}

/// Reserves a fresh S3 part number (never reused, so a stale writer cannot clobber a part).
pub async fn next_part(db: &Db, id: &str) -> Result<i32, Error> {
    let n: i64 = sqlx::query_scalar(
        "UPDATE uploads SET next_part = next_part + 1 WHERE id = $1 RETURNING next_part",
    )
    .bind(id)
    .fetch_one(db.pool())
    .await?;
    Ok(n as i32)
}

/// Records the S3 multipart upload id.
pub async fn set_s3_upload_id(db: &Db, id: &str, upload_id: &str) -> Result<(), Error> {
    sqlx::query("UPDATE uploads SET s3_upload_id = $1 WHERE id = $2")
        .bind(upload_id)
        .bind(id)
        .execute(db.pool())
        .await?;
    Ok(())
}

/// What a commit makes durable.
#[derive(Debug, Clone, Default)]
pub struct Commit {
    /// The new durable offset.
    pub received: u64,
    /// New S3 parts (number, size, etag).
    pub parts: Vec<(Part, u64)>,
    /// New tail size (S3), when it changed.
    pub tail_size: Option<u64>,
}

/// Makes progress durable (`durable_before` is the durable offset this commit moves on from),
/// if `owner` still holds the lock. Also slides the expiry, mirrors
/// the progress on the moment, and with the upload's first durable bytes queues its transcode
/// as a background job (a worker with nothing else to do starts on the growing upload).
#[allow(clippy::too_many_arguments)]
pub async fn commit(
    db: &Db,
    queue: &Queue,
    up: &Upload,
    owner: &str,
    c: &Commit,
    durable_before: u64,
    expires_at: i64,
    lock_until: i64,
) -> Result<bool, Error> {
    let now = now_ms();
    let mut tx = db.pool().begin().await?;
    let r = sqlx::query(
        "UPDATE uploads SET received = $1, tail_size = COALESCE($2, tail_size), expires_at = $3, \
         lock_until = $4, updated_at = $5 WHERE id = $6 AND lock_owner = $7 AND state = 'active'",
    )
    .bind(c.received as i64)
    .bind(c.tail_size.map(|t| t as i64))
    .bind(expires_at)
    .bind(lock_until)
    .bind(now)
    .bind(&up.id)
    .bind(owner)
    .execute(&mut *tx)
    .await?;
    if r.rows_affected() != 1 {
        return Ok(false);
    }
    for (part, size) in &c.parts {
        sqlx::query(
            "INSERT INTO upload_parts (upload_id, part_number, size, etag) VALUES ($1, $2, $3, $4)",
        )
        .bind(&up.id)
        .bind(i64::from(part.number))
        .bind(*size as i64)
        .bind(&part.etag)
        .execute(&mut *tx)
        .await?;
    }
    let progress = if up.length == 0 {
        0.0
    } else {
        c.received as f64 / up.length as f64
    };
    sqlx::query(
        "UPDATE moments SET progress = $1, updated_at = $2 WHERE id = $3 AND state = 'uploading'",
    )
    .bind(progress.min(1.0))
    .bind(now)
    .bind(&up.moment_id)
    .execute(&mut *tx)
    .await?;
    let first_bytes = durable_before == 0 && c.received > 0 && c.received < up.length;
    if first_bytes {
        // The first bytes are durable: an idle worker may start on the growing upload.
        queue::enqueue_on(
            &mut tx,
            queue.config(),
            &moment::transcode_job(&up.moment_id, Priority::Background),
        )
        .await?;
    }
    tx.commit().await?;
    if first_bytes {
        queue.notify();
    }
    db.notify(Change::Object(source_key(&up.id)));
    db.notify(Change::Moment(up.moment_id.clone()));
    Ok(true)
}

/// The committed S3 parts with their sizes, ascending.
pub async fn parts_with_sizes(db: &Db, id: &str) -> Result<Vec<(i32, u64)>, Error> {
    let rows = sqlx::query(
        "SELECT part_number, size FROM upload_parts WHERE upload_id = $1 ORDER BY part_number",
    )
    .bind(id)
    .fetch_all(db.pool())
    .await?;
    rows.iter()
        .map(|r| {
            Ok((
                r.try_get::<i64, _>("part_number")? as i32,
                r.try_get::<i64, _>("size")? as u64,
            ))
        })
        .collect()
}

/// The committed S3 parts, ascending.
pub async fn parts(db: &Db, id: &str) -> Result<Vec<Part>, Error> {
    let rows = sqlx::query(
        "SELECT part_number, etag FROM upload_parts WHERE upload_id = $1 ORDER BY part_number",
    )
    .bind(id)
    .fetch_all(db.pool())
    .await?;
    rows.iter()
        .map(|r| {
            Ok(Part {
                number: r.try_get::<i64, _>("part_number")? as i32,
                etag: r.try_get("etag")?,
            })
        })
        .collect()
}

/// The job kind that assembles a complete S3 upload's part and tail objects into its object.
pub const ASSEMBLE_KIND: &str = "assemble_upload";

/// The assembly job of upload `id` (one per upload).
pub fn assemble_job(id: &str) -> queue::NewJob {
    queue::NewJob {
        kind: ASSEMBLE_KIND.to_string(),
        payload: serde_json::json!({ "upload": id }),
        dedup_key: Some(format!("assemble:{id}")),
        // Idempotent and cheap to retry; until it succeeds the upload is read from its pieces,
        // so it is worth trying for a long while (backoff capped by the queue's maximum).
        max_attempts: Some(12),
        priority: Priority::Normal,
    }
}

/// Marks the upload complete and queues the moment's transcode, in one transaction. False when
/// the upload was not ours to complete (lock lost or already complete).
///
/// With `pieces`, the bytes stay in the upload's S3 part and tail objects for now: their rows
/// are kept (readers are given the pieces, see [`Sources`]) and the job that assembles them
/// into the object is queued in the same transaction ([`assembled`] records its end). Without,
/// the object is already whole.
pub async fn complete(
    db: &Db,
    queue: &Queue,
    up: &Upload,
    owner: &str,
    pieces: bool,
) -> Result<bool, Error> {
    let now = now_ms();
    let mut tx = db.pool().begin().await?;
    let r = sqlx::query(
        "UPDATE uploads SET state = 'complete', received = length, \
         tail_size = CASE WHEN $1 = 1 THEN tail_size ELSE 0 END, \
         lock_owner = NULL, lock_until = NULL, updated_at = $2 \
         WHERE id = $3 AND lock_owner = $4 AND state = 'active'",
    )
    .bind(i64::from(pieces))
    .bind(now)
    .bind(&up.id)
    .bind(owner)
    .execute(&mut *tx)
    .await?;
    if r.rows_affected() != 1 {
        return Ok(false);
    }
    let key = moment::transcode_key(&up.moment_id);
    queue::enqueue_on(
        &mut tx,
        queue.config(),
        &moment::transcode_job(&up.moment_id, Priority::Normal),
    )
    .await?;
    // A job queued with the first bytes waits no more; one already transcoding the growing
    // upload goes on (and will not park itself any more).
    queue::promote_on(&mut tx, &key).await?;
    let running: i64 =
        sqlx::query_scalar("SELECT COUNT(*) FROM jobs WHERE dedup_key = $1 AND state = 'running'")
            .bind(&key)
            .fetch_one(&mut *tx)
            .await?;
    let state = if running > 0 {
        State::Transcoding
    } else {
        State::Queued
    };
    let moved = sqlx::query(
        "UPDATE moments SET state = $1, progress = 0, updated_at = $2 WHERE id = $3 AND state = 'uploading'",
    )
    .bind(state.as_str())
    .bind(now)
    .bind(&up.moment_id)
    .execute(&mut *tx)
    .await?;
    events::emit_on(
        &mut tx,
        Payload::UploadCompleted(events::UploadCompleted {
            upload_id: up.id.clone(),
            moment_id: up.moment_id.clone(),
            user_id: up.user_id.clone(),
            length: up.length,
        }),
    )
    .await?;
    if state == State::Transcoding && moved.rows_affected() == 1 {
        // the worker already on the growing upload is now making the whole ladder
        events::emit_on(
            &mut tx,
            Payload::MomentTranscoding(events::MomentRef {
                moment_id: up.moment_id.clone(),
                user_id: up.user_id.clone(),
            }),
        )
        .await?;
    }
    if pieces {
        queue::enqueue_on(&mut tx, queue.config(), &assemble_job(&up.id)).await?;
    } else {
        sqlx::query("DELETE FROM upload_parts WHERE upload_id = $1")
            .bind(&up.id)
            .execute(&mut *tx)
            .await?;
    }
    tx.commit().await?;
    queue.notify();
    db.notify(Change::Object(source_key(&up.id)));
    db.notify(Change::Moment(up.moment_id.clone()));
    db.notify(Change::Events);
    Ok(true)
}

/// Records that a complete upload's object was assembled from its pieces: from now on readers
/// are sent to the object, so the pieces may go. False when the upload is gone (withdrawn
/// while it was being assembled).
pub async fn assembled(db: &Db, id: &str) -> Result<bool, Error> {
    let mut tx = db.pool().begin().await?;
    let r = sqlx::query(
        "UPDATE uploads SET tail_size = 0, s3_upload_id = NULL, updated_at = $1 \
         WHERE id = $2 AND state = 'complete'",
    )
    .bind(now_ms())
    .bind(id)
    .execute(&mut *tx)
    .await?;
    sqlx::query("DELETE FROM upload_parts WHERE upload_id = $1")
        .bind(id)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    db.notify(Change::Object(source_key(id)));
    Ok(r.rows_affected() == 1)
}

/// Why an upload is removed (what its events say).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Removal {
    /// The client terminated it (`DELETE /files/{id}`).
    Terminated,
    /// Its expiry passed before the last byte.
    Expired,
    /// Its bytes did not match the `Repr-Digest` the client sent.
    DigestMismatch,
}

impl Removal {
    fn reason(self) -> &'static str {
        match self {
            Removal::Terminated => "upload terminated",
            Removal::Expired => "upload expired",
            Removal::DigestMismatch => "upload digest mismatch",
        }
    }
}

/// Removes an upload (termination or expiry) and its moment, if it never completed, with a
/// transcode still waiting for it (one running on the growing upload sees it gone and stops).
/// Writes `upload.expired` for an expiry and `moment.deleted` when the moment went, in the same
/// transaction.
pub async fn delete(db: &Db, up: &Upload, why: Removal) -> Result<(), Error> {
    let mut tx = db.pool().begin().await?;
    if !up.complete {
        queue::withdraw_on(&mut tx, &moment::transcode_key(&up.moment_id)).await?;
    }
    sqlx::query("DELETE FROM upload_parts WHERE upload_id = $1")
        .bind(&up.id)
        .execute(&mut *tx)
        .await?;
    let gone = sqlx::query("DELETE FROM uploads WHERE id = $1")
        .bind(&up.id)
        .execute(&mut *tx)
        .await?
        .rows_affected()
        == 1;
    let mut moment_gone = false;
    if !up.complete {
        moment_gone = sqlx::query("DELETE FROM moments WHERE id = $1 AND state = 'uploading'")
            .bind(&up.moment_id)
            .execute(&mut *tx)
            .await?
            .rows_affected()
            == 1;
    }
    if gone && why == Removal::Expired {
        events::emit_on(
            &mut tx,
            Payload::UploadExpired(events::UploadExpired {
                upload_id: up.id.clone(),
                moment_id: up.moment_id.clone(),
                user_id: up.user_id.clone(),
                received: up.received,
                length: up.length,
            }),
        )
        .await?;
    }
    if moment_gone {
        events::emit_on(
            &mut tx,
            Payload::MomentDeleted(events::MomentDeleted {
                moment_id: up.moment_id.clone(),
                user_id: up.user_id.clone(),
                reason: why.reason().to_string(),
            }),
        )
        .await?;
    }
    tx.commit().await?;
    db.notify(Change::Object(source_key(&up.id)));
    db.notify(Change::Moment(up.moment_id.clone()));
    db.notify(Change::Events);
    Ok(())
}

/// Unfinished uploads whose expiry has passed.
pub async fn expired(db: &Db, limit: i64) -> Result<Vec<Upload>, Error> {
    let rows = sqlx::query(concat!(
        "SELECT ",
        cols!(),
        " FROM uploads WHERE state = 'active' AND expires_at < $1 ORDER BY expires_at LIMIT $2"
    ))
    .bind(now_ms())
    .bind(limit)
    .fetch_all(db.pool())
    .await?;
    rows.iter().map(from_row).collect()
}

/// How much of each upload is durable and where its bytes are, for readers of uploads that are
/// still arriving (the transcoder).
pub struct Sources {
    db: Db,
    store: Store,
}

impl Sources {
    /// Answers from the upload rows in `db` about objects in `store`.
    pub fn new(db: Db, store: Store) -> Sources {
        Sources { db, store }
    }
}

#[async_trait]
impl Growing for Sources {
    async fn extent(&self, key: &Key) -> Result<Option<Extent>, common::store::Error> {
        let Some(id) = key.as_str().strip_prefix("uploads/") else {
            return Ok(None);
        };
        let dberr = |e: Error| common::store::Error::Io(std::io::Error::other(e.to_string()));
        // The row and its parts are two reads; a commit between them can only add parts past
        // the row's offset, which are left out. Anything else is read again.
        for _ in 0..5 {
            let Some(up) = get(&self.db, id).await.map_err(dberr)? else {
                return Ok(None);
            };
            let local = self.store.local_path(key).is_some();
            if up.complete && local {
                return Ok(Some(Extent::whole(key.clone(), up.length)));
            }
            if local {
                return Ok(Some(Extent {
                    length: up.length,
                    durable: up.received,
                    complete: false,
                    pieces: vec![Piece {
                        key: key.clone(),
                        offset: 0,
                        size: up.received,
                    }],
                    updated_ms: up.updated_at,
                }));
            }
            let base = up.received - up.tail_size;
            let parts = parts_with_sizes(&self.db, id).await.map_err(dberr)?;
            if up.complete && parts.is_empty() {
                // assembled (or small enough to have been stored whole at completion)
                return Ok(Some(Extent::whole(key.clone(), up.length)));
            }
            // Still arriving, or complete and not yet assembled: the bytes are in the pieces.
            let mut pieces = Vec::new();
            let mut at = 0u64;
            for (number, size) in parts {
                if at >= base {
                    break;
                }
                pieces.push(Piece {
                    key: Key::new(part_key(id, number))?,
                    offset: at,
                    size,
                });
                at += size;
            }
            if at != base {
                continue;
            }
            if up.tail_size > 0 {
                pieces.push(Piece {
                    key: Key::new(tail_key(id, base))?,
                    offset: base,
                    size: up.tail_size,
                });
            }
            return Ok(Some(Extent {
                length: up.length,
                durable: up.received,
                complete: up.complete,
                pieces,
                updated_ms: up.updated_at,
            }));
        }
        Err(common::store::Error::Io(std::io::Error::other(format!(
            "upload {id}: its parts and offset keep disagreeing"
        ))))
    }
}
