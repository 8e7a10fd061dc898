//! The durable job queue: jobs of any kind in the metadata database, claimed with a lease.
//!
//! States: `queued → running → done | failed`. A worker claims a job by taking its lease (on
//! PostgreSQL with `FOR UPDATE SKIP LOCKED`, on SQLite inside SQLite's single-writer
//! transaction), extends it with heartbeats while it works, and completes or fails it. A crashed
//! worker's lease expires and the job becomes claimable again. Failures retry with exponential
//! backoff and jitter until `max_attempts`, then the job is dead-lettered (`failed`, with the
//! last error kept). Completing twice is a no-op, so the work a kind does on completion happens
//! once.
//!
//! The queue knows job kinds, never what they mean: each kind brings a [`Handler`].

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use serde::Deserialize;
use sqlx::Row;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::db::{Backend, Db, Error};
use crate::ids::{new_id, now_ms};
use crate::metrics::Metrics;

/// `[queue]` section.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// How long a claim holds without a heartbeat (seconds).
    pub lease_secs: u64,
    /// Attempts before a job is dead-lettered.
    pub max_attempts: u32,
    /// First retry delay (milliseconds); doubles each attempt.
    pub backoff_base_ms: u64,
    /// Longest retry delay (milliseconds).
    pub backoff_max_ms: u64,
    /// How often idle workers look for work (milliseconds) when not woken in-process.
    pub poll_ms: u64,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            lease_secs: 30,
            max_attempts: 3,
            backoff_base_ms: 2_000,
            backoff_max_ms: 300_000,
            poll_ms: 1_000,
        }
    }
}

/// Delay before retry number `attempt` (1 = the first retry): exponential from `base`, capped
/// at `max`, with "equal jitter" — half fixed, half random (`unit` in `0..1`), so a burst of
/// failures does not retry in lockstep.
pub fn retry_delay(attempt: u32, base: Duration, max: Duration, unit: f64) -> Duration {
    let exp = base
        .saturating_mul(1u32 << attempt.saturating_sub(1).min(20))
        .min(max);
    let half = exp / 2;
    half + half.mul_f64(unit.clamp(0.0, 1.0))
}

/// How eagerly a job is claimed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Priority {
    /// Claimed only when no normal job is claimable: work that may wait for an idle worker,
    /// such as transcoding an upload that is still arriving. Such a job may park itself until
    /// it is promoted ([`promote_on`]).
    Background,
    /// Claimed in order of readiness.
    #[default]
    Normal,
}

impl Priority {
    fn value(self) -> i64 {
        match self {
            Priority::Background => 0,
            Priority::Normal => 1,
        }
    }

    fn from_value(v: i64) -> Priority {
        if v >= 1 {
            Priority::Normal
        } else {
            Priority::Background
        }
    }
}

/// `run_after` of a parked job: never claimable until promoted.
const PARKED: i64 = i64::MAX / 4;

/// A job to add.
#[derive(Debug, Clone)]
pub struct NewJob {
    /// Job kind (`transcode`, …).
    pub kind: String,
    /// Kind-specific JSON.
    pub payload: serde_json::Value,
    /// Enqueueing the same key again does nothing (and returns the existing job's id).
    pub dedup_key: Option<String>,
    /// Overrides the configured attempt limit.
    pub max_attempts: Option<u32>,
    /// How eagerly it is claimed.
    pub priority: Priority,
}

/// A claimed job.
#[derive(Debug, Clone)]
pub struct Job {
    /// Id.
    pub id: String,
    /// Kind.
    pub kind: String,
    /// Kind-specific JSON.
    pub payload: serde_json::Value,
    /// This is attempt number `attempts` (1-based).
    pub attempts: u32,
    /// Limit.
    pub max_attempts: u32,
    /// The worker holding the lease.
    pub owner: String,
    /// Its priority when it was claimed.
    pub priority: Priority,
}

/// One claim of a job, from the run history (`job_runs`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Run {
    /// The worker that claimed it.
    pub owner: String,
    /// Which attempt it was.
    pub attempt: u32,
    /// Claimed at (ms).
    pub started_at: i64,
    /// The claim or its last lease renewal (ms): the last moment it certainly ran.
    pub last_seen: i64,
    /// When it ended; `None` while running or when its worker died.
    pub ended_at: Option<i64>,
    /// `done`, `retry`, `failed`, `released`, `requeued`, `parked`, or `lease_lost` (its
    /// worker stopped renewing and another worker took the job over).
    pub outcome: Option<String>,
}

/// A job as stored (for status pages and tests).
#[derive(Debug, Clone, PartialEq)]
pub struct Record {
    /// Id.
    pub id: String,
    /// Kind.
    pub kind: String,
    /// `queued`, `running`, `done` or `failed`.
    pub state: String,
    /// Attempts so far.
    pub attempts: u32,
    /// The last failure's message.
    pub last_error: Option<String>,
    /// Lease holder while running.
    pub lease_owner: Option<String>,
    /// Not claimable before (ms); far in the future while parked.
    pub run_after: i64,
    /// Current priority.
    pub priority: Priority,
}

impl Record {
    /// Waiting for a promotion ([`promote_on`]) before it can run.
    pub fn parked(&self) -> bool {
        self.state == "queued" && self.run_after >= PARKED
    }
}

/// What [`Queue::fail`] did.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Outcome {
    /// Back in the queue; claimable after this many milliseconds.
    Retry {
        /// Delay.
        after_ms: u64,
    },
    /// Dead-lettered.
    Dead,
    /// The lease was no longer ours (another worker took over); nothing changed.
    LeaseLost,
}

/// Queue depth figures.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Stats {
    /// Jobs waiting, by kind.
    pub queued: HashMap<String, i64>,
    /// Jobs running, by kind.
    pub running: HashMap<String, i64>,
    /// Age of the oldest waiting job (ms), by kind.
    pub oldest_queued_ms: HashMap<String, i64>,
}

/// The queue.
#[derive(Clone, Debug)]
pub struct Queue {
    db: Db,
    config: Config,
    wake: Arc<Notify>,
}

impl Queue {
    /// A queue over `db`.
    pub fn new(db: Db, config: Config) -> Queue {
        Queue {
            db,
            config,
            wake: Arc::new(Notify::new()),
        }
    }

    /// The settings.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The database.
    pub fn db(&self) -> &Db {
        &self.db
    }

    /// Adds a job; returns its id (the existing job's id when `dedup_key` was used before).
    pub async fn enqueue(&self, job: &NewJob) -> Result<String, Error> {
        let mut conn = self.db.pool().acquire().await?;
        let id = enqueue_on(&mut conn, &self.config, job).await?;
        self.notify();
        Ok(id)
    }

    /// Wakes idle workers (after [`enqueue_on`] inside a caller's transaction): this process's
    /// at once, other processes' through the database's change channel (PostgreSQL).
    pub fn notify(&self) {
        self.wake.notify_waiters();
        self.db.notify(crate::db::Change::Jobs);
    }

    /// Claims the next runnable job of one of `kinds` for `owner`.
    pub async fn claim(&self, kinds: &[&str], owner: &str) -> Result<Option<Job>, Error> {
        if kinds.is_empty() {
            return Ok(None);
        }
        let now = now_ms();
        let lease_until = now + (self.config.lease_secs as i64) * 1000;
        // Placeholders only: the kinds are bound, never spliced.
        let kind_params: Vec<String> = (0..kinds.len()).map(|i| format!("${}", i + 4)).collect();
        let lock = match self.db.backend() {
            Backend::Postgres => " FOR UPDATE SKIP LOCKED",
            Backend::Sqlite => "",
        };
        let sql = format!(
            "UPDATE jobs SET state = 'running', attempts = attempts + 1, lease_owner = $1, \
             lease_until = $2, updated_at = $3, started_at = COALESCE(started_at, $3) \
             WHERE id = (SELECT id FROM jobs WHERE kind IN ({}) AND attempts < max_attempts AND \
               ((state = 'queued' AND run_after <= $3) OR (state = 'running' AND lease_until < $3)) \
               ORDER BY priority DESC, run_after, created_at LIMIT 1{lock}) \
             RETURNING id, kind, payload, attempts, max_attempts, priority",
            kind_params.join(", ")
        );
        let mut q = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(owner)
            .bind(lease_until)
            .bind(now);
        for k in kinds {
            q = q.bind(*k);
        }
        let Some(row) = q.fetch_optional(self.db.pool()).await? else {
            return Ok(None);
        };
        let payload: String = row.try_get("payload")?;
        let job = Job {
            id: row.try_get("id")?,
            kind: row.try_get("kind")?,
            payload: serde_json::from_str(&payload).unwrap_or(serde_json::Value::Null),
            attempts: row.try_get::<i64, _>("attempts")? as u32,
            max_attempts: row.try_get::<i64, _>("max_attempts")? as u32,
            owner: owner.to_string(),
            priority: Priority::from_value(row.try_get("priority")?),
        };
        self.record_run(&job, now).await;
        Ok(Some(job))
    }

    /// History: a run that was still open belonged to a worker whose lease expired (it died
    /// or stalled); the new run starts now.
    async fn record_run(&self, job: &Job, now: i64) {
        let lost = sqlx::query(
            "UPDATE job_runs SET outcome = 'lease_lost' WHERE job_id = $1 AND ended_at IS NULL              AND outcome IS NULL",
        )
        .bind(&job.id)
        .execute(self.db.pool());
        let started = sqlx::query(
            "INSERT INTO job_runs (job_id, owner, attempt, started_at, last_seen)              VALUES ($1, $2, $3, $4, $4)",
        )
        .bind(&job.id)
        .bind(&job.owner)
        .bind(i64::from(job.attempts))
        .bind(now);
        // the history is a record, never a reason to fail the work
        if let Err(e) = lost.await {
            tracing::debug!(error = %e, "job history: closing lost runs");
        }
        if let Err(e) = started.execute(self.db.pool()).await {
            tracing::debug!(error = %e, "job history: recording a run");
        }
    }

    /// History: the run of `job` by its owner ended with `outcome`.
    async fn end_run(&self, job: &Job, outcome: &str) {
        let r = sqlx::query(
            "UPDATE job_runs SET ended_at = $1, last_seen = $1, outcome = $2              WHERE job_id = $3 AND owner = $4 AND ended_at IS NULL",
        )
        .bind(now_ms())
        .bind(outcome)
        .bind(&job.id)
        .bind(&job.owner)
        .execute(self.db.pool())
        .await;
        if let Err(e) = r {
            tracing::debug!(error = %e, "job history: ending a run");
        }
    }

    /// The runs of `job_id`, oldest first.
    pub async fn runs(&self, job_id: &str) -> Result<Vec<Run>, Error> {
        let rows = sqlx::query(
            "SELECT owner, attempt, started_at, last_seen, ended_at, outcome FROM job_runs              WHERE job_id = $1 ORDER BY started_at",
        )
        .bind(job_id)
        .fetch_all(self.db.pool())
        .await?;
        rows.iter()
            .map(|r| {
                Ok(Run {
                    owner: r.try_get("owner")?,
                    attempt: r.try_get::<i64, _>("attempt")? as u32,
                    started_at: r.try_get("started_at")?,
                    last_seen: r.try_get("last_seen")?,
                    ended_at: r.try_get("ended_at")?,
                    outcome: r.try_get("outcome")?,
                })
            })
            .collect()
    }

    /// Extends the lease. False when the lease is no longer ours: the worker must stop.
    pub async fn heartbeat(&self, job: &Job) -> Result<bool, Error> {
        let now = now_ms();
        let r = sqlx::query(
            "UPDATE jobs SET lease_until = $1, updated_at = $2 \
             WHERE id = $3 AND lease_owner = $4 AND state = 'running'",
        )
        .bind(now + (self.config.lease_secs as i64) * 1000)
        .bind(now)
        .bind(&job.id)
        .bind(&job.owner)
        .execute(self.db.pool())
        .await?;
        if r.rows_affected() == 1 {
            let seen = sqlx::query(
                "UPDATE job_runs SET last_seen = $1 WHERE job_id = $2 AND owner = $3                  AND ended_at IS NULL",
            )
            .bind(now)
            .bind(&job.id)
            .bind(&job.owner)
            .execute(self.db.pool())
            .await;
            if let Err(e) = seen {
                tracing::debug!(error = %e, "job history: renewal");
            }
        }
        Ok(r.rows_affected() == 1)
    }

    /// Marks the job done. False when it was not ours to finish (already done, or taken over),
    /// so completion work keyed on a true result happens once.
    pub async fn complete(&self, job: &Job) -> Result<bool, Error> {
        let now = now_ms();
        let r = sqlx::query(
            "UPDATE jobs SET state = 'done', lease_owner = NULL, lease_until = NULL, \
             updated_at = $1, finished_at = $1, last_error = NULL \
             WHERE id = $2 AND lease_owner = $3 AND state = 'running'",
        )
        .bind(now)
        .bind(&job.id)
        .bind(&job.owner)
        .execute(self.db.pool())
        .await?;
        if r.rows_affected() == 1 {
            self.end_run(job, "done").await;
        }
        Ok(r.rows_affected() == 1)
    }

    /// Records a failure: back to the queue with backoff, or dead-lettered after the last
    /// attempt (or at once when `retryable` is false).
    pub async fn fail(&self, job: &Job, error: &str, retryable: bool) -> Result<Outcome, Error> {
        let now = now_ms();
        let error: String = error.chars().take(4000).collect();
        if retryable && job.attempts < job.max_attempts {
            let delay = retry_delay(
                job.attempts,
                Duration::from_millis(self.config.backoff_base_ms),
                Duration::from_millis(self.config.backoff_max_ms),
                rand::random::<f64>(),
            );
            let after_ms = delay.as_millis() as u64;
            let r = sqlx::query(
                "UPDATE jobs SET state = 'queued', lease_owner = NULL, lease_until = NULL, \
                 run_after = $1, last_error = $2, updated_at = $3 \
                 WHERE id = $4 AND lease_owner = $5 AND state = 'running'",
            )
            .bind(now + after_ms as i64)
            .bind(&error)
            .bind(now)
            .bind(&job.id)
            .bind(&job.owner)
            .execute(self.db.pool())
            .await?;
            return Ok(if r.rows_affected() == 1 {
                self.end_run(job, "retry").await;
                Outcome::Retry { after_ms }
            } else {
                Outcome::LeaseLost
            });
        }
        let r = sqlx::query(
            "UPDATE jobs SET state = 'failed', lease_owner = NULL, lease_until = NULL, \
             last_error = $1, updated_at = $2, finished_at = $2 \
             WHERE id = $3 AND lease_owner = $4 AND state = 'running'",
        )
        .bind(&error)
        .bind(now)
        .bind(&job.id)
        .bind(&job.owner)
        .execute(self.db.pool())
        .await?;
        Ok(if r.rows_affected() == 1 {
            self.end_run(job, "failed").await;
            Outcome::Dead
        } else {
            Outcome::LeaseLost
        })
    }

    /// Gives a claimed job back without counting the attempt (graceful shutdown).
    pub async fn release(&self, job: &Job) -> Result<bool, Error> {
        let r = sqlx::query(
            "UPDATE jobs SET state = 'queued', attempts = attempts - 1, lease_owner = NULL, \
             lease_until = NULL, updated_at = $1 \
             WHERE id = $2 AND lease_owner = $3 AND state = 'running'",
        )
        .bind(now_ms())
        .bind(&job.id)
        .bind(&job.owner)
        .execute(self.db.pool())
        .await?;
        if r.rows_affected() == 1 {
            self.end_run(job, "released").await;
        }
        self.notify();
        Ok(r.rows_affected() == 1)
    }

    /// Dead-letters jobs whose lease expired after their last attempt (their worker died every
    /// time); returns them so their kind can record the failure.
    pub async fn reap(&self) -> Result<Vec<Job>, Error> {
        let now = now_ms();
        // the run history is kept for a week
        sqlx::query("DELETE FROM job_runs WHERE ended_at < $1")
            .bind(now - 7 * 24 * 3600 * 1000)
            .execute(self.db.pool())
            .await?;
        let rows = sqlx::query(
            "UPDATE jobs SET state = 'failed', \
             last_error = 'worker lost (lease expired) on the last attempt', \
             lease_owner = NULL, lease_until = NULL, updated_at = $1, finished_at = $1 \
             WHERE state = 'running' AND lease_until < $1 AND attempts >= max_attempts \
             RETURNING id, kind, payload, attempts, max_attempts, priority",
        )
        .bind(now)
        .fetch_all(self.db.pool())
        .await?;
        rows.iter()
            .map(|row| {
                let payload: String = row.try_get("payload")?;
                Ok(Job {
                    id: row.try_get("id")?,
                    kind: row.try_get("kind")?,
                    payload: serde_json::from_str(&payload).unwrap_or(serde_json::Value::Null),
                    attempts: row.try_get::<i64, _>("attempts")? as u32,
                    max_attempts: row.try_get::<i64, _>("max_attempts")? as u32,
                    owner: String::new(),
                    priority: Priority::from_value(row.try_get("priority")?),
                })
            })
            .collect()
    }

    /// One stored job.
    pub async fn get(&self, id: &str) -> Result<Option<Record>, Error> {
        let row = sqlx::query(
            "SELECT id, kind, state, attempts, last_error, lease_owner, run_after, priority \
             FROM jobs WHERE id = $1",
        )
        .bind(id)
        .fetch_optional(self.db.pool())
        .await?;
        row.map(|row| {
            Ok(Record {
                id: row.try_get("id")?,
                kind: row.try_get("kind")?,
                state: row.try_get("state")?,
                attempts: row.try_get::<i64, _>("attempts")? as u32,
                last_error: row.try_get("last_error")?,
                lease_owner: row.try_get("lease_owner")?,
                run_after: row.try_get("run_after")?,
                priority: Priority::from_value(row.try_get("priority")?),
            })
        })
        .transpose()
    }

    /// The job enqueued under `dedup_key`, if any.
    pub async fn find(&self, dedup_key: &str) -> Result<Option<Record>, Error> {
        let id: Option<String> = sqlx::query_scalar("SELECT id FROM jobs WHERE dedup_key = $1")
            .bind(dedup_key)
            .fetch_optional(self.db.pool())
            .await?;
        match id {
            Some(id) => self.get(&id).await,
            None => Ok(None),
        }
    }

    /// Puts the finished (done or dead-lettered) job enqueued under `dedup_key` back in the
    /// queue with fresh attempts (a job that must always exist, such as the events relay).
    /// True when one was revived.
    pub async fn revive(&self, dedup_key: &str) -> Result<bool, Error> {
        let r = sqlx::query(
            "UPDATE jobs SET state = 'queued', attempts = 0, run_after = $1, last_error = NULL, \
             lease_owner = NULL, lease_until = NULL, updated_at = $1 \
             WHERE dedup_key = $2 AND state IN ('done', 'failed')",
        )
        .bind(now_ms())
        .bind(dedup_key)
        .execute(self.db.pool())
        .await?;
        self.wake.notify_waiters();
        Ok(r.rows_affected() > 0)
    }

    /// Gives a claimed job back without counting the attempt: runnable again after `delay`
    /// (a job that cannot make progress now, such as a transcode whose upload stalled). `note`
    /// is kept as its `last_error` so status pages can say why it waits.
    pub async fn requeue(&self, job: &Job, delay: Duration, note: &str) -> Result<bool, Error> {
        let now = now_ms();
        let r = sqlx::query(
            "UPDATE jobs SET state = 'queued', attempts = attempts - 1, lease_owner = NULL, \
             lease_until = NULL, run_after = $1, last_error = $2, updated_at = $3 \
             WHERE id = $4 AND lease_owner = $5 AND state = 'running'",
        )
        .bind(now + delay.as_millis() as i64)
        .bind(note)
        .bind(now)
        .bind(&job.id)
        .bind(&job.owner)
        .execute(self.db.pool())
        .await?;
        if r.rows_affected() == 1 {
            self.end_run(job, "requeued").await;
        }
        self.notify();
        Ok(r.rows_affected() == 1)
    }

    /// Gives a claimed job back until it is promoted ([`promote_on`]), without counting the
    /// attempt. A job promoted while it ran is runnable at once instead, so a promotion is
    /// never lost however it races with the park. True when the job was parked, false when it
    /// is runnable (or was no longer ours).
    pub async fn park(&self, job: &Job, note: &str) -> Result<bool, Error> {
        let now = now_ms();
        let r = sqlx::query(
            "UPDATE jobs SET state = 'queued', attempts = attempts - 1, lease_owner = NULL, \
             lease_until = NULL, last_error = $1, updated_at = $2, \
             run_after = CASE WHEN priority >= 1 THEN $2 ELSE $3 END \
             WHERE id = $4 AND lease_owner = $5 AND state = 'running' \
             RETURNING run_after",
        )
        .bind(note)
        .bind(now)
        .bind(PARKED)
        .bind(&job.id)
        .bind(&job.owner)
        .fetch_optional(self.db.pool())
        .await?;
        if r.is_some() {
            self.end_run(job, "parked").await;
        }
        self.notify();
        match r {
            Some(row) => Ok(row.try_get::<i64, _>("run_after")? >= PARKED),
            None => Ok(false),
        }
    }

    /// Whether a normal-priority job of one of `kinds` has been claimable for at least
    /// `for_at_least` without any worker taking it (a background job then gives its worker
    /// back).
    pub async fn others_waiting(
        &self,
        kinds: &[&str],
        for_at_least: Duration,
    ) -> Result<bool, Error> {
        if kinds.is_empty() {
            return Ok(false);
        }
        let kind_params: Vec<String> = (0..kinds.len()).map(|i| format!("${}", i + 2)).collect();
        let sql = format!(
            "SELECT COUNT(*) FROM jobs WHERE state = 'queued' AND priority >= 1 \
             AND attempts < max_attempts AND run_after <= $1 AND kind IN ({})",
            kind_params.join(", ")
        );
        let mut q = sqlx::query_scalar::<_, i64>(sqlx::AssertSqlSafe(sql))
            .bind(now_ms() - for_at_least.as_millis() as i64);
        for k in kinds {
            q = q.bind(*k);
        }
        Ok(q.fetch_one(self.db.pool()).await? > 0)
    }

    /// Depth and age figures by kind.
    pub async fn stats(&self) -> Result<Stats, Error> {
        let now = now_ms();
        let rows = sqlx::query(
            "SELECT kind, state, COUNT(*) AS n, MIN(created_at) AS oldest FROM jobs \
             WHERE state IN ('queued', 'running') GROUP BY kind, state",
        )
        .fetch_all(self.db.pool())
        .await?;
        let mut stats = Stats::default();
        for row in rows {
            let kind: String = row.try_get("kind")?;
            let state: String = row.try_get("state")?;
            let n: i64 = row.try_get("n")?;
            if state == "queued" {
                let oldest: i64 = row.try_get("oldest")?;
                stats
                    .oldest_queued_ms
                    .insert(kind.clone(), (now - oldest).max(0));
                stats.queued.insert(kind, n);
            } else {
                stats.running.insert(kind, n);
            }
        }
        Ok(stats)
    }

    /// Waits until woken by an enqueue (of this process, or of another one when the database
    /// carries changes across processes) or the poll interval passes.
    pub async fn idle(&self) {
        let notified = self.wake.notified();
        let mut changes = self.db.subscribe();
        let remote = async {
            loop {
                match changes.recv().await {
                    Ok(crate::db::Change::Jobs)
                    | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => return,
                    Ok(_) => {}
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => {
                        std::future::pending::<()>().await;
                    }
                }
            }
        };
        let woken = async {
            tokio::select! {
                _ = notified => {}
                _ = remote => {}
            }
        };
        let _ = tokio::time::timeout(Duration::from_millis(self.config.poll_ms), woken).await;
    }
}

/// Adds a job using `conn` (which may be inside the caller's transaction, so the job exists
/// exactly when the caller's other writes do). Call [`Queue::notify`] after committing.
pub async fn enqueue_on(
    conn: &mut sqlx::AnyConnection,
    config: &Config,
    job: &NewJob,
) -> Result<String, Error> {
    let id = new_id();
    let now = now_ms();
    let max_attempts = job.max_attempts.unwrap_or(config.max_attempts).max(1) as i64;
    let inserted = sqlx::query(
        "INSERT INTO jobs (id, kind, payload, state, attempts, max_attempts, run_after, \
         dedup_key, priority, created_at, updated_at) \
         VALUES ($1, $2, $3, 'queued', 0, $4, $5, $6, $7, $5, $5) \
         ON CONFLICT (dedup_key) DO NOTHING",
    )
    .bind(&id)
    .bind(&job.kind)
    .bind(job.payload.to_string())
    .bind(max_attempts)
    .bind(now)
    .bind(job.dedup_key.as_deref())
    .bind(job.priority.value())
    .execute(&mut *conn)
    .await?;
    if inserted.rows_affected() == 1 {
        return Ok(id);
    }
    let existing: String = sqlx::query_scalar("SELECT id FROM jobs WHERE dedup_key = $1")
        .bind(job.dedup_key.as_deref())
        .fetch_one(&mut *conn)
        .await?;
    Ok(existing)
}

/// Raises the job enqueued under `dedup_key` to normal priority, on `conn` (inside the
/// caller's transaction, like [`enqueue_on`]): a parked or waiting job becomes runnable at
/// once; a running one keeps running, and if it parks itself later it stays runnable (see
/// [`Queue::park`]). Call [`Queue::notify`] after committing. True when a job was promoted.
pub async fn promote_on(conn: &mut sqlx::AnyConnection, dedup_key: &str) -> Result<bool, Error> {
    let now = now_ms();
    let r = sqlx::query(
        "UPDATE jobs SET priority = 1, updated_at = $1, \
         run_after = CASE WHEN state = 'queued' AND run_after > $1 THEN $1 ELSE run_after END \
         WHERE dedup_key = $2 AND state IN ('queued', 'running')",
    )
    .bind(now)
    .bind(dedup_key)
    .execute(&mut *conn)
    .await?;
    Ok(r.rows_affected() > 0)
}

/// Removes the job enqueued under `dedup_key` if it is waiting (not running, not finished), on
/// `conn`: its work was withdrawn (an upload terminated before its last byte). A running job
/// notices by itself. True when a job was removed.
pub async fn withdraw_on(conn: &mut sqlx::AnyConnection, dedup_key: &str) -> Result<bool, Error> {
    let r = sqlx::query("DELETE FROM jobs WHERE dedup_key = $1 AND state = 'queued'")
        .bind(dedup_key)
        .execute(&mut *conn)
        .await?;
    Ok(r.rows_affected() > 0)
}

/// A job that gives its worker back without failing: the attempt does not count.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Defer {
    /// Wait until promoted ([`promote_on`]); runnable at once if it already was.
    UntilPromoted,
    /// Runnable again after this long.
    For(Duration),
}

/// Why a job attempt failed (or, with `defer`, why it gave its worker back).
#[derive(Debug, Clone)]
pub struct JobError {
    /// Human-readable reason (kept as the job's `last_error`).
    pub message: String,
    /// False when retrying cannot help (bad input): dead-letter at once.
    pub retryable: bool,
    /// Set when the job did not fail but cannot go on now.
    pub defer: Option<Defer>,
}

impl JobError {
    /// A failure worth retrying (storage hiccup, crash).
    pub fn retry(message: impl Into<String>) -> Self {
        JobError {
            message: message.into(),
            retryable: true,
            defer: None,
        }
    }

    /// Not a failure: give the worker back and wait as `defer` says (the attempt does not
    /// count).
    pub fn defer(message: impl Into<String>, defer: Defer) -> Self {
        JobError {
            message: message.into(),
            retryable: true,
            defer: Some(defer),
        }
    }

    /// A failure retrying cannot fix (the input is bad).
    pub fn permanent(message: impl Into<String>) -> Self {
        JobError {
            message: message.into(),
            retryable: false,
            defer: None,
        }
    }
}

/// What a running job can see: cancelled when the lease is lost or the process shuts down.
#[derive(Debug, Clone)]
pub struct Context {
    /// Stop working when this fires.
    pub cancel: CancellationToken,
    /// The queue the job came from.
    pub queue: Queue,
    /// The job kinds this worker pool runs (what a waiting background job yields to).
    pub kinds: Arc<[&'static str]>,
}

impl Context {
    /// Whether a normal-priority job of this pool has waited at least `for_at_least` for a
    /// worker (see [`Queue::others_waiting`]).
    pub async fn others_waiting(&self, for_at_least: Duration) -> Result<bool, Error> {
        self.queue.others_waiting(&self.kinds, for_at_least).await
    }
}

/// One job kind's behaviour.
#[async_trait]
pub trait Handler: Send + Sync + 'static {
    /// The kind this handler runs.
    fn kind(&self) -> &'static str;

    /// Longest a single attempt may take.
    fn time_limit(&self) -> Duration {
        Duration::from_secs(30 * 60)
    }

    /// Runs one attempt.
    async fn run(&self, job: &Job, ctx: &Context) -> Result<(), JobError>;

    /// Called once when the job is dead-lettered, with the last error.
    async fn dead(&self, job: &Job, error: &str);
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabels {
    kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    kind: String,
    outcome: String,
}

/// Queue metrics, registered once per process.
#[derive(Clone, Debug)]
pub struct QueueMetrics {
    outcomes: Family<OutcomeLabels, Counter>,
    duration: Family<KindLabels, Histogram>,
    depth: Family<KindLabels, Gauge>,
    running: Family<KindLabels, Gauge>,
    oldest: Family<KindLabels, Gauge>,
}

fn duration_histogram() -> Histogram {
    Histogram::new(prometheus_client::metrics::histogram::exponential_buckets(
        0.5, 2.0, 14,
    ))
}

impl QueueMetrics {
    /// Registers the queue's metrics.
    pub fn register(metrics: &Metrics) -> QueueMetrics {
        let m = QueueMetrics {
            outcomes: Family::default(),
            duration: Family::new_with_constructor(duration_histogram as fn() -> Histogram),
            depth: Family::default(),
            running: Family::default(),
            oldest: Family::default(),
        };
        metrics.register(
            "jobs",
            "Finished job attempts by kind and outcome (done, retry, failed, lost, deferred)",
            m.outcomes.clone(),
        );
        metrics.register(
            "job_duration_seconds",
            "Wall time of job attempts by kind",
            m.duration.clone(),
        );
        metrics.register("queue_depth", "Jobs waiting, by kind", m.depth.clone());
        metrics.register("queue_running", "Jobs running, by kind", m.running.clone());
        metrics.register(
            "queue_oldest_age_seconds",
            "Age of the oldest waiting job, by kind",
            m.oldest.clone(),
        );
        m
    }

    fn outcome(&self, kind: &str, outcome: &str, seconds: f64) {
        self.outcomes
            .get_or_create(&OutcomeLabels {
                kind: kind.to_string(),
                outcome: outcome.to_string(),
            })
            .inc();
        self.duration
            .get_or_create(&KindLabels {
                kind: kind.to_string(),
            })
            .observe(seconds);
    }

    /// Refreshes the depth gauges from the database.
    pub async fn refresh(&self, queue: &Queue, kinds: &[&str]) {
        if let Ok(stats) = queue.stats().await {
            for kind in kinds {
                let l = KindLabels {
                    kind: kind.to_string(),
                };
                self.depth
                    .get_or_create(&l)
                    .set(stats.queued.get(*kind).copied().unwrap_or(0));
                self.running
                    .get_or_create(&l)
                    .set(stats.running.get(*kind).copied().unwrap_or(0));
                self.oldest
                    .get_or_create(&l)
                    .set(stats.oldest_queued_ms.get(*kind).copied().unwrap_or(0) / 1000);
            }
        }
    }
}

/// Runs `concurrency` worker loops over `handlers` until `shutdown`. Jobs still running at
/// shutdown are cancelled and released back to the queue (their attempt does not count).
pub async fn run_workers(
    queue: Queue,
    handlers: Vec<Arc<dyn Handler>>,
    concurrency: usize,
    owner_prefix: &str,
    metrics: Option<QueueMetrics>,
    shutdown: CancellationToken,
) {
    let by_kind: Arc<HashMap<&'static str, Arc<dyn Handler>>> =
        Arc::new(handlers.into_iter().map(|h| (h.kind(), h)).collect());
    let mut tasks = tokio::task::JoinSet::new();
    for n in 0..concurrency.max(1) {
        let owner = format!("{owner_prefix}-{}-{n}", new_id());
        tasks.spawn(worker_loop(
            queue.clone(),
            by_kind.clone(),
            owner,
            metrics.clone(),
            shutdown.clone(),
        ));
    }
    if let Some(m) = metrics.clone() {
        let (queue, by_kind, shutdown) = (queue.clone(), by_kind.clone(), shutdown.clone());
        tasks.spawn(async move {
            let kinds: Vec<&str> = by_kind.keys().copied().collect();
            loop {
                m.refresh(&queue, &kinds).await;
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(5)) => {}
                    _ = shutdown.cancelled() => break,
                }
            }
        });
    }
    while tasks.join_next().await.is_some() {}
}

async fn worker_loop(
    queue: Queue,
    handlers: Arc<HashMap<&'static str, Arc<dyn Handler>>>,
    owner: String,
    metrics: Option<QueueMetrics>,
    shutdown: CancellationToken,
) {
    let kinds: Vec<&str> = handlers.keys().copied().collect();
    let pool_kinds: Arc<[&'static str]> = handlers.keys().copied().collect();
    while !shutdown.is_cancelled() {
        match queue.reap().await {
            Ok(dead) => {
                for job in dead {
                    if let Some(h) = handlers.get(job.kind.as_str()) {
                        tracing::warn!(job = %job.id, kind = %job.kind, "job dead-lettered: its worker was lost on every attempt");
                        h.dead(&job, "worker lost (lease expired) on the last attempt")
                            .await;
                    }
                }
            }
            Err(e) => tracing::warn!(error = %e, "queue reap failed"),
        }
        let job = match queue.claim(&kinds, &owner).await {
            Ok(Some(job)) => job,
            Ok(None) => {
                tokio::select! {
                    _ = queue.idle() => {}
                    _ = shutdown.cancelled() => break,
                }
                continue;
            }
            Err(e) => {
                tracing::warn!(error = %e, "queue claim failed; retrying");
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_millis(queue.config.poll_ms)) => {}
                    _ = shutdown.cancelled() => break,
                }
                continue;
            }
        };
        let Some(handler) = handlers.get(job.kind.as_str()).cloned() else {
            continue;
        };
        run_one(
            &queue,
            handler,
            pool_kinds.clone(),
            job,
            metrics.as_ref(),
            &shutdown,
        )
        .await;
    }
}

async fn run_one(
    queue: &Queue,
    handler: Arc<dyn Handler>,
    handlers: Arc<[&'static str]>,
    job: Job,
    metrics: Option<&QueueMetrics>,
    shutdown: &CancellationToken,
) {
    let started = Instant::now();
    let cancel = shutdown.child_token();
    let ctx = Context {
        cancel: cancel.clone(),
        queue: queue.clone(),
        kinds: handlers.clone(),
    };
    tracing::info!(job = %job.id, kind = %job.kind, attempt = job.attempts, "job started");

    // Heartbeats: extend the lease every third of its length; losing it cancels the work.
    let beat = {
        let (queue, job, cancel) = (queue.clone(), job.clone(), cancel.clone());
        let every = Duration::from_millis((queue.config.lease_secs * 1000 / 3).max(100));
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = tokio::time::sleep(every) => {}
                    _ = cancel.cancelled() => return,
                }
                match queue.heartbeat(&job).await {
                    Ok(true) => {}
                    Ok(false) => {
                        tracing::warn!(job = %job.id, "lease lost; stopping this attempt");
                        cancel.cancel();
                        return;
                    }
                    Err(e) => tracing::warn!(job = %job.id, error = %e, "heartbeat failed"),
                }
            }
        })
    };

    let limit = handler.time_limit();
    let result = tokio::time::timeout(limit, handler.run(&job, &ctx)).await;
    let lease_lost = cancel.is_cancelled() && !shutdown.is_cancelled();
    cancel.cancel();
    let _ = beat.await;
    let seconds = started.elapsed().as_secs_f64();
    let kind = job.kind.clone();
    let record = |outcome: &str| {
        if let Some(m) = metrics {
            m.outcome(&kind, outcome, seconds);
        }
    };

    if shutdown.is_cancelled() && !matches!(result, Ok(Ok(()))) {
        let _ = queue.release(&job).await;
        tracing::info!(job = %job.id, "shutting down: job released back to the queue");
        return;
    }
    if lease_lost {
        record("lost");
        return;
    }
    let err = match result {
        Ok(Ok(())) => {
            match queue.complete(&job).await {
                Ok(true) => {
                    record("done");
                    tracing::info!(job = %job.id, kind = %job.kind, seconds, "job done");
                }
                Ok(false) => record("lost"),
                Err(e) => tracing::warn!(job = %job.id, error = %e, "could not mark job done"),
            }
            return;
        }
        Ok(Err(e)) => e,
        Err(_) => JobError::retry(format!("time limit of {} s exceeded", limit.as_secs())),
    };
    if let Some(defer) = err.defer {
        let r = match defer {
            Defer::UntilPromoted => queue.park(&job, &err.message).await.map(|_| true),
            Defer::For(d) => queue.requeue(&job, d, &err.message).await,
        };
        match r {
            Ok(true) => {
                record("deferred");
                tracing::info!(job = %job.id, kind = %job.kind, reason = %err.message, ?defer, "job deferred");
            }
            Ok(false) => record("lost"),
            Err(e) => tracing::warn!(job = %job.id, error = %e, "could not defer the job"),
        }
        return;
    }
    match queue.fail(&job, &err.message, err.retryable).await {
        Ok(Outcome::Retry { after_ms }) => {
            record("retry");
            tracing::warn!(job = %job.id, error = %err.message, retry_in_ms = after_ms, "job failed; will retry");
        }
        Ok(Outcome::Dead) => {
            record("failed");
            tracing::warn!(job = %job.id, error = %err.message, "job failed for good");
            handler.dead(&job, &err.message).await;
        }
        Ok(Outcome::LeaseLost) => record("lost"),
        Err(e) => tracing::warn!(job = %job.id, error = %e, "could not record job failure"),
    }
}

#[cfg(test)]
mod tests {
    use super::retry_delay;
    use std::time::Duration;

    #[test]
    fn backoff_doubles_caps_and_jitters() {
        let base = Duration::from_secs(2);
        let max = Duration::from_secs(60);
        assert_eq!(retry_delay(1, base, max, 0.0), Duration::from_secs(1));
        assert_eq!(retry_delay(1, base, max, 1.0), Duration::from_secs(2));
        assert_eq!(retry_delay(2, base, max, 1.0), Duration::from_secs(4));
        assert_eq!(retry_delay(3, base, max, 0.5), Duration::from_secs(6));
        assert_eq!(retry_delay(10, base, max, 1.0), max);
        assert_eq!(retry_delay(1000, base, max, 1.0), max);
        // jitter stays within [exp/2, exp]
        for i in 0..=10 {
            let d = retry_delay(4, base, max, i as f64 / 10.0);
            assert!(d >= Duration::from_secs(8) && d <= Duration::from_secs(16));
        }
    }
}
