//! The outbox tables: fanning events out to delivery rows, finding what is due in order,
//! recording outcomes, dead letters and replays, endpoints disabled by a 410, and pruning.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Serialize;
use sqlx::Row;

use super::Config;
use crate::db::{Db, Error};
use crate::ids::now_ms;

/// A delivery that may be attempted now: the oldest pending one of its subject for its target.
#[derive(Debug, Clone)]
pub struct Due {
    /// The event.
    pub event_id: String,
    /// `type`.
    pub kind: String,
    /// The JSON as delivered.
    pub body: String,
    /// Attempts so far.
    pub attempts: u32,
    /// When the event was written (ms).
    pub created_at: i64,
}

/// Creates the delivery rows of events not yet fanned out (for the targets that want each
/// type now) and marks them fanned. Returns how many events it took.
pub async fn fan_out(db: &Db, config: &Config, limit: i64) -> Result<usize, Error> {
    let mut tx = db.begin_write().await?;
    let rows = sqlx::query(
        "SELECT id, type, subject, seq FROM events WHERE fanned = 0 ORDER BY created_at, seq LIMIT $1",
    )
    .bind(limit)
    .fetch_all(&mut *tx)
    .await?;
    let now = now_ms();
    for row in &rows {
        let id: String = row.try_get("id")?;
        let kind: String = row.try_get("type")?;
        let subject: String = row.try_get("subject")?;
        let seq: i64 = row.try_get("seq")?;
        for target in config.targets_for(&kind) {
            sqlx::query(
                "INSERT INTO event_deliveries (event_id, target, subject, seq, state, attempts, \
                 next_at, created_at) VALUES ($1, $2, $3, $4, 'pending', 0, $5, $5) \
                 ON CONFLICT (event_id, target) DO NOTHING",
            )
            .bind(&id)
            .bind(&target)
            .bind(&subject)
            .bind(seq)
            .bind(now)
            .execute(&mut *tx)
            .await?;
        }
        sqlx::query("UPDATE events SET fanned = 1 WHERE id = $1")
            .bind(&id)
            .execute(&mut *tx)
            .await?;
    }
    tx.commit().await?;
    Ok(rows.len())
}

/// Up to `limit` deliveries for `target` that may go now: pending, past their backoff, and
/// with no earlier pending delivery of the same subject (so order per subject holds; a
/// dead-lettered event does not hold up the ones after it).
///
/// Candidates are read in fan-out order (past their backoff), the lowest `seq` per subject
/// among them is taken, and it goes only if no pending delivery of that subject has a lower
/// `seq` (a head in backoff, or one fanned out later by a node whose clock is behind). Two
/// index ranges per call, whatever the planner knows: the anti-join this replaces took
/// 0.7–6 s for 5,000 rows on a fresh PostgreSQL table without statistics.
pub async fn due(db: &Db, target: &str, limit: i64) -> Result<Vec<Due>, Error> {
    let window = (limit * 32).clamp(256, 4096);
    let now = now_ms();
    let rows = sqlx::query(
        "SELECT event_id, subject, seq, attempts FROM event_deliveries \
         WHERE target = $1 AND state = 'pending' AND next_at <= $2 \
         ORDER BY created_at, seq LIMIT $3",
    )
    .bind(target)
    .bind(now)
    .bind(window)
    .fetch_all(db.pool())
    .await?;
    // subject → (seq, event, attempts) of its lowest candidate, in order of first appearance
    let mut order: Vec<String> = Vec::new();
    let mut lowest: std::collections::HashMap<String, (i64, String, u32)> =
        std::collections::HashMap::new();
    for r in &rows {
        let subject: String = r.try_get("subject")?;
        let seq: i64 = r.try_get("seq")?;
        let cand = (
            seq,
            r.try_get::<String, _>("event_id")?,
            r.try_get::<i64, _>("attempts")? as u32,
        );
        match lowest.get_mut(&subject) {
            Some(have) if have.0 <= seq => {}
            Some(have) => *have = cand,
            None => {
                if order.len() as i64 >= limit {
                    continue;
                }
                order.push(subject.clone());
                lowest.insert(subject, cand);
            }
        }
    }
    if order.is_empty() {
        return Ok(Vec::new());
    }
    let params: Vec<String> = (0..order.len()).map(|i| format!("${}", i + 2)).collect();
    let sql = format!(
        "SELECT subject, MIN(seq) AS seq FROM event_deliveries \
         WHERE target = $1 AND state = 'pending' AND subject IN ({}) GROUP BY subject",
        params.join(", ")
    );
    let mut q = sqlx::query(sqlx::AssertSqlSafe(sql)).bind(target);
    for subject in &order {
        q = q.bind(subject);
    }
    let first: std::collections::HashMap<String, i64> = q
        .fetch_all(db.pool())
        .await?
        .iter()
        .map(|r| Ok((r.try_get("subject")?, r.try_get("seq")?)))
        .collect::<Result<_, Error>>()?;
    let heads: Vec<(String, u32)> = order
        .iter()
        .filter_map(|subject| {
            let (seq, event, attempts) = lowest.get(subject)?;
            (first.get(subject) == Some(seq)).then(|| (event.clone(), *attempts))
        })
        .collect();
    if heads.is_empty() {
        return Ok(Vec::new());
    }
    let params: Vec<String> = (0..heads.len()).map(|i| format!("${}", i + 1)).collect();
    let sql = format!(
        "SELECT id, type, body, created_at FROM events WHERE id IN ({})",
        params.join(", ")
    );
    let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
    for (id, _) in &heads {
        q = q.bind(id);
    }
    let mut bodies: std::collections::HashMap<String, (String, String, i64)> = q
        .fetch_all(db.pool())
        .await?
        .iter()
        .map(|r| {
            Ok((
                r.try_get("id")?,
                (
                    r.try_get("type")?,
                    r.try_get("body")?,
                    r.try_get("created_at")?,
                ),
            ))
        })
        .collect::<Result<_, Error>>()?;
    Ok(heads
        .into_iter()
        .filter_map(|(event_id, attempts)| {
            let (kind, body, created_at) = bodies.remove(&event_id)?;
            Some(Due {
                event_id,
                kind,
                body,
                attempts,
                created_at,
            })
        })
        .collect())
}

/// Records successful deliveries to `target`, in one statement (one commit per batch, not per
/// event: a crash before it means these go again, which at-least-once allows).
pub async fn delivered(db: &Db, target: &str, event_ids: &[String]) -> Result<(), Error> {
    if event_ids.is_empty() {
        return Ok(());
    }
    let params: Vec<String> = (0..event_ids.len())
        .map(|i| format!("${}", i + 3))
        .collect();
    let sql = format!(
        "UPDATE event_deliveries SET state = 'done', attempts = attempts + 1, delivered_at = $1, \
         last_error = NULL WHERE target = $2 AND state = 'pending' AND event_id IN ({})",
        params.join(", ")
    );
    let mut q = sqlx::query(sqlx::AssertSqlSafe(sql))
        .bind(now_ms())
        .bind(target);
    for id in event_ids {
        q = q.bind(id);
    }
    q.execute(db.pool()).await?;
    Ok(())
}

/// Records a failed attempt: retried after a backoff, or dead-lettered after the last attempt.
/// True when it was dead-lettered.
pub async fn failed(
    db: &Db,
    config: &Config,
    due: &Due,
    target: &str,
    error: &str,
) -> Result<bool, Error> {
    let attempts = due.attempts + 1;
    let error: String = error.chars().take(1000).collect();
    let dead = attempts >= config.max_attempts;
    let delay = crate::queue::retry_delay(
        attempts,
        Duration::from_millis(config.backoff_base_ms),
        Duration::from_millis(config.backoff_max_ms),
        rand::random::<f64>(),
    );
    sqlx::query(
        "UPDATE event_deliveries SET attempts = $1, last_error = $2, next_at = $3, state = $4 \
         WHERE event_id = $5 AND target = $6 AND state = 'pending'",
    )
    .bind(attempts as i64)
    .bind(&error)
    .bind(now_ms() + delay.as_millis() as i64)
    .bind(if dead { "dead" } else { "pending" })
    .bind(&due.event_id)
    .bind(target)
    .execute(db.pool())
    .await?;
    Ok(dead)
}

/// Stops deliveries to a webhook endpoint (it answered 410 Gone); they wait until
/// [`enable`].
pub async fn disable(db: &Db, name: &str, reason: &str) -> Result<(), Error> {
    sqlx::query(
        "INSERT INTO event_endpoints (name, disabled_at, reason) VALUES ($1, $2, $3) \
         ON CONFLICT (name) DO UPDATE SET disabled_at = $2, reason = $3",
    )
    .bind(name)
    .bind(now_ms())
    .bind(reason)
    .execute(db.pool())
    .await?;
    Ok(())
}

/// Sends to a disabled endpoint again. True when it was disabled.
pub async fn enable(db: &Db, name: &str) -> Result<bool, Error> {
    let r = sqlx::query(
        "UPDATE event_endpoints SET disabled_at = NULL, reason = NULL \
         WHERE name = $1 AND disabled_at IS NOT NULL",
    )
    .bind(name)
    .execute(db.pool())
    .await?;
    Ok(r.rows_affected() > 0)
}

/// Why the endpoint is disabled, when it is.
pub async fn disabled(db: &Db, name: &str) -> Result<Option<String>, Error> {
    let r: Option<Option<String>> = sqlx::query_scalar(
        "SELECT reason FROM event_endpoints WHERE name = $1 AND disabled_at IS NOT NULL",
    )
    .bind(name)
    .fetch_optional(db.pool())
    .await?;
    Ok(r.map(|r| r.unwrap_or_default()))
}

/// A dead-lettered delivery.
#[derive(Debug, Clone, Serialize, PartialEq, utoipa::ToSchema)]
pub struct Dead {
    /// The event.
    pub event_id: String,
    /// Where it could not go.
    pub target: String,
    /// `type`.
    #[serde(rename = "type")]
    pub kind: String,
    /// Attempts made.
    pub attempts: u32,
    /// The last failure.
    pub last_error: Option<String>,
    /// The event as it would be delivered.
    pub event: serde_json::Value,
}

/// Dead-lettered deliveries, oldest first.
pub async fn dead(db: &Db, limit: i64) -> Result<Vec<Dead>, Error> {
    let rows = sqlx::query(
        "SELECT d.event_id, d.target, d.attempts, d.last_error, e.type, e.body \
         FROM event_deliveries d JOIN events e ON e.id = d.event_id \
         WHERE d.state = 'dead' ORDER BY e.created_at, d.seq LIMIT $1",
    )
    .bind(limit)
    .fetch_all(db.pool())
    .await?;
    rows.iter()
        .map(|r| {
            let body: String = r.try_get("body")?;
            Ok(Dead {
                event_id: r.try_get("event_id")?,
                target: r.try_get("target")?,
                kind: r.try_get("type")?,
                attempts: r.try_get::<i64, _>("attempts")? as u32,
                last_error: r.try_get("last_error")?,
                event: serde_json::from_str(&body).unwrap_or(serde_json::Value::Null),
            })
        })
        .collect()
}

/// Puts dead-lettered deliveries back (all targets of `event_id`, or one): attempted again at
/// once with a fresh attempt count. Returns how many.
pub async fn replay(db: &Db, event_id: &str, target: Option<&str>) -> Result<u64, Error> {
    let r = sqlx::query(
        "UPDATE event_deliveries SET state = 'pending', attempts = 0, next_at = $1 \
         WHERE event_id = $2 AND state = 'dead' AND ($3 = '' OR target = $3)",
    )
    .bind(now_ms())
    .bind(event_id)
    .bind(target.unwrap_or(""))
    .execute(db.pool())
    .await?;
    Ok(r.rows_affected())
}

/// Puts every dead-lettered delivery back. Returns how many.
pub async fn replay_all(db: &Db) -> Result<u64, Error> {
    let r = sqlx::query(
        "UPDATE event_deliveries SET state = 'pending', attempts = 0, next_at = $1 WHERE state = 'dead'",
    )
    .bind(now_ms())
    .execute(db.pool())
    .await?;
    Ok(r.rows_affected())
}

/// Outbox figures.
#[derive(Debug, Clone, Default, Serialize, PartialEq, utoipa::ToSchema)]
pub struct Stats {
    /// Events written but not fanned out yet.
    pub unfanned: i64,
    /// Pending deliveries by target.
    pub pending: BTreeMap<String, i64>,
    /// Dead-lettered deliveries by target.
    pub dead: BTreeMap<String, i64>,
    /// Age of the oldest pending delivery's event (ms), by target.
    pub oldest_pending_ms: BTreeMap<String, i64>,
    /// Endpoints disabled by a 410, with the reason.
    pub disabled: BTreeMap<String, String>,
}

/// Current figures.
pub async fn stats(db: &Db) -> Result<Stats, Error> {
    let now = now_ms();
    let mut s = Stats {
        unfanned: sqlx::query_scalar("SELECT COUNT(*) FROM events WHERE fanned = 0")
            .fetch_one(db.pool())
            .await?,
        ..Stats::default()
    };
    let rows = sqlx::query(
        "SELECT d.target, d.state, COUNT(*) AS n, MIN(e.created_at) AS oldest \
         FROM event_deliveries d JOIN events e ON e.id = d.event_id \
         WHERE d.state IN ('pending', 'dead') GROUP BY d.target, d.state",
    )
    .fetch_all(db.pool())
    .await?;
    for r in rows {
        let target: String = r.try_get("target")?;
        let state: String = r.try_get("state")?;
        let n: i64 = r.try_get("n")?;
        if state == "pending" {
            let oldest: i64 = r.try_get("oldest")?;
            s.oldest_pending_ms
                .insert(target.clone(), (now - oldest).max(0));
            s.pending.insert(target, n);
        } else {
            s.dead.insert(target, n);
        }
    }
    for r in sqlx::query("SELECT name, reason FROM event_endpoints WHERE disabled_at IS NOT NULL")
        .fetch_all(db.pool())
        .await?
    {
        let reason: Option<String> = r.try_get("reason")?;
        s.disabled
            .insert(r.try_get("name")?, reason.unwrap_or_default());
    }
    Ok(s)
}

/// Removes events older than `keep` whose deliveries are all done (and those rows). Pending
/// and dead-lettered deliveries, and their events, stay.
pub async fn prune(db: &Db, keep: Duration) -> Result<u64, Error> {
    let before = now_ms() - keep.as_millis() as i64;
    let mut tx = db.begin_write().await?;
    let doomed = "SELECT id FROM events e WHERE e.fanned = 1 AND e.created_at < $1 \
         AND NOT EXISTS (SELECT 1 FROM event_deliveries d WHERE d.event_id = e.id AND d.state <> 'done')";
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "DELETE FROM event_deliveries WHERE event_id IN ({doomed})"
    )))
    .bind(before)
    .execute(&mut *tx)
    .await?;
    let r = sqlx::query(sqlx::AssertSqlSafe(format!(
        "DELETE FROM events WHERE id IN ({doomed})"
    )))
    .bind(before)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(r.rows_affected())
}

/// Deliveries made after `after_ms` (exclusive), oldest first, for `moments events tail`.
pub async fn delivered_since(
    db: &Db,
    after_ms: i64,
    limit: i64,
) -> Result<Vec<(i64, String, String)>, Error> {
    let rows = sqlx::query(
        "SELECT d.delivered_at, d.target, e.body FROM event_deliveries d \
         JOIN events e ON e.id = d.event_id \
         WHERE d.state = 'done' AND d.delivered_at > $1 ORDER BY d.delivered_at LIMIT $2",
    )
    .bind(after_ms)
    .bind(limit)
    .fetch_all(db.pool())
    .await?;
    rows.iter()
        .map(|r| {
            Ok((
                r.try_get("delivered_at")?,
                r.try_get("target")?,
                r.try_get("body")?,
            ))
        })
        .collect()
}

/// Events written after `after_ms` (exclusive), whether or not delivered (for `moments events
/// tail --written` where no target is configured).
pub async fn written_since(
    db: &Db,
    after_ms: i64,
    limit: i64,
) -> Result<Vec<(i64, String)>, Error> {
    let rows = sqlx::query(
        "SELECT created_at, body FROM events WHERE created_at > $1 ORDER BY created_at, seq LIMIT $2",
    )
    .bind(after_ms)
    .bind(limit)
    .fetch_all(db.pool())
    .await?;
    rows.iter()
        .map(|r| Ok((r.try_get("created_at")?, r.try_get("body")?)))
        .collect()
}
