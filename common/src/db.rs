//! The metadata database: SQLite (one WAL file in the data dir) by default, PostgreSQL when the
//! URL says `postgres://`. Both run the same migrations (written in the SQL both understand) and
//! the same queries through sqlx's `Any` driver; the few statements that must differ (job claims)
//! ask [`Db::backend`].
//!
//! Changes ([`Change`]) reach the waiting tasks of this process through an in-memory broadcast.
//! On PostgreSQL they also cross processes: [`Db::notify`] publishes them with `pg_notify` on one
//! channel, and each process runs one `LISTEN` connection that re-broadcasts what other
//! processes committed — so an SSE watcher on node B hears of a moment finished on node A
//! without polling, however many watchers there are. SQLite has no such channel: waiters there
//! keep polling (which is also the fallback if the listener connection drops).

use std::path::Path;
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use serde::Deserialize;
use sqlx::any::{AnyConnectOptions, AnyPoolOptions};
use sqlx::{AnyPool, Executor};

/// `[database]` section.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// `sqlite://PATH` or `postgres://…`; unset means `sqlite://$DATA/moments.db`.
    pub url: Option<String>,
    /// Connections in the pool.
    pub max_connections: u32,
    /// PostgreSQL only: hear other processes' changes through `LISTEN/NOTIFY` (one extra
    /// connection per process). Turn off behind a pooler in transaction mode (PgBouncer), where
    /// `LISTEN` does not work; waiters then poll.
    pub listen: bool,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            url: None,
            max_connections: 8,
            listen: true,
        }
    }
}

impl Config {
    /// The URL to use, with the data-dir default applied.
    pub fn url_or_default(&self, data_dir: &Path) -> String {
        match &self.url {
            Some(u) => u.clone(),
            None => format!("sqlite://{}", data_dir.join("moments.db").display()),
        }
    }
}

/// Which engine is behind the pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// Embedded SQLite.
    Sqlite,
    /// PostgreSQL server.
    Postgres,
}

/// Database errors.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The URL names no engine we support.
    #[error("unsupported database URL {0:?}: use sqlite://PATH or postgres://USER@HOST/DB")]
    BadUrl(String),
    /// The server (or file) could not be reached or opened.
    #[error("database {url} is not reachable: {reason}")]
    Unreachable {
        /// URL with any password removed.
        url: String,
        /// What failed.
        reason: String,
    },
    /// A migration failed to apply.
    #[error("database migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// A query failed.
    #[error("database error: {0}")]
    Sql(#[from] sqlx::Error),
}

impl Error {
    /// True when the database could not be reached at all (readiness answers 503).
    pub fn is_unreachable(&self) -> bool {
        match self {
            Error::Unreachable { .. } => true,
            Error::Sql(e) => matches!(
                e,
                sqlx::Error::Io(_) | sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed
            ),
            _ => false,
        }
    }
}

/// A change that tasks of this process may be waiting for (see [`Db::notify`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// A moment's row changed (state, progress, detail).
    Moment(String),
    /// An object still being written (by its key) became longer, complete or gone.
    Object(String),
    /// Events were written to the outbox (wakes the relay).
    Events,
    /// Jobs were queued or became runnable (wakes idle workers).
    Jobs,
    /// A token or a user's tokens were revoked (every node re-reads its revocations).
    Revoked,
    /// This process (re)connected its listener: changes of other processes may have been
    /// missed while it was away, so anything may have changed (local only, never sent).
    Resync,
}

/// The PostgreSQL channel changes travel on.
const CHANNEL: &str = "moments_changes";
/// A `pg_notify` payload must stay under 8000 bytes.
const MAX_PAYLOAD: usize = 7_000;

impl Change {
    /// One line of a notification payload.
    fn encode(&self) -> String {
        match self {
            Change::Moment(id) => format!("m {id}"),
            Change::Object(key) => format!("o {key}"),
            Change::Events => "e".into(),
            Change::Jobs => "j".into(),
            Change::Revoked => "v".into(),
            Change::Resync => "r".into(),
        }
    }

    /// The inverse of [`Change::encode`]; `None` for a line this version does not know.
    fn decode(line: &str) -> Option<Change> {
        let (kind, rest) = line.split_once(' ').unwrap_or((line, ""));
        match kind {
            "m" if !rest.is_empty() => Some(Change::Moment(rest.to_string())),
            "o" if !rest.is_empty() => Some(Change::Object(rest.to_string())),
            "e" => Some(Change::Events),
            "j" => Some(Change::Jobs),
            "v" => Some(Change::Revoked),
            _ => None,
        }
    }
}

/// A payload: this process's id on the first line (so it skips its own), then one change per
/// line.
fn encode_payload(node: &str, changes: &[Change]) -> String {
    let mut out = node.to_string();
    for c in changes {
        out.push('\n');
        out.push_str(&c.encode());
    }
    out
}

/// The changes of a payload sent by another process (`None` when `node` sent it).
fn decode_payload(node: &str, payload: &str) -> Option<Vec<Change>> {
    let mut lines = payload.split('\n');
    if lines.next()? == node {
        return None;
    }
    Some(lines.filter_map(Change::decode).collect())
}

/// The cross-process side of a [`Db`] on PostgreSQL: where to send changes, whether the
/// listener is connected, and the token that stops both tasks when the last handle goes.
#[derive(Debug)]
struct Bridge {
    outbox: tokio::sync::mpsc::UnboundedSender<Change>,
    listening: Arc<AtomicBool>,
    stop: tokio_util::sync::CancellationToken,
}

impl Drop for Bridge {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// A handle on the metadata database; cheap to clone.
#[derive(Clone, Debug)]
pub struct Db {
    pool: AnyPool,
    backend: Backend,
    changes: tokio::sync::broadcast::Sender<Change>,
    bridge: Option<Arc<Bridge>>,
}

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// Removes the password from a URL for messages and logs.
pub fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let creds = &url[scheme + 3..at];
            match creds.find(':') {
                Some(colon) => format!(
                    "{}{}:***{}",
                    &url[..scheme + 3],
                    &creds[..colon],
                    &url[at..]
                ),
                None => url.to_string(),
            }
        }
        _ => url.to_string(),
    }
}

impl Db {
    /// Opens (creating the SQLite file and its directory if needed) and migrates; on
    /// PostgreSQL it also listens for other processes' changes.
    pub async fn connect(url: &str, max_connections: u32) -> Result<Db, Error> {
        Db::open(url, max_connections, true).await
    }

    /// Opens with the settings of a `[database]` section (`url` already resolved).
    pub async fn connect_config(url: &str, config: &Config) -> Result<Db, Error> {
        Db::open(url, config.max_connections, config.listen).await
    }

    async fn open(url: &str, max_connections: u32, listen: bool) -> Result<Db, Error> {
        sqlx::any::install_default_drivers();
        let (backend, url) = if let Some(path) = url.strip_prefix("sqlite://") {
            let (file, query) = match path.split_once('?') {
                Some((f, q)) => (f, Some(q)),
                None => (path, None),
            };
            if !file.is_empty()
                && file != ":memory:"
                && let Some(dir) = Path::new(file)
                    .parent()
                    .filter(|d| !d.as_os_str().is_empty())
            {
                std::fs::create_dir_all(dir).map_err(|e| Error::Unreachable {
                    url: url.to_string(),
                    reason: format!("cannot create {}: {e}", dir.display()),
                })?;
            }
            let url = match query {
                Some(_) => url.to_string(),
                None => format!("{url}?mode=rwc"),
            };
            (Backend::Sqlite, url)
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            (Backend::Postgres, url.to_string())
        } else {
            return Err(Error::BadUrl(redact(url)));
        };

        let options = AnyConnectOptions::from_str(&url).map_err(|e| Error::Unreachable {
            url: redact(&url),
            reason: e.to_string(),
        })?;
        let mut pool = AnyPoolOptions::new()
            .max_connections(max_connections.max(1))
            .acquire_timeout(Duration::from_secs(10));
        if backend == Backend::Sqlite {
            pool = pool.after_connect(|conn, _| {
                Box::pin(async move {
                    // Durable commits, and wait for the single writer instead of failing.
                    conn.execute("PRAGMA busy_timeout = 10000").await?;
                    conn.execute("PRAGMA synchronous = FULL").await?;
                    Ok(())
                })
            });
        }
        let pool = pool
            .connect_with(options)
            .await
            .map_err(|e| Error::Unreachable {
                url: redact(&url),
                reason: e.to_string(),
            })?;
        if backend == Backend::Sqlite {
            // Persistent per database file: readers never block the writer.
            pool.execute("PRAGMA journal_mode = WAL").await?;
        }
        let changes = tokio::sync::broadcast::channel(1024).0;
        let bridge = (backend == Backend::Postgres && listen)
            .then(|| Arc::new(start_bridge(&url, pool.clone(), changes.clone())));
        let db = Db {
            pool,
            backend,
            changes,
            bridge,
        };
        MIGRATOR.run(&db.pool).await?;
        Ok(db)
    }

    /// Whether changes committed by other processes reach [`Db::subscribe`] (PostgreSQL with
    /// its listener connected). When false, waiters must poll to see them.
    pub fn hears_other_nodes(&self) -> bool {
        self.bridge
            .as_ref()
            .is_some_and(|b| b.listening.load(Ordering::Relaxed))
    }

    /// A transaction that will write after reading: on SQLite it takes the write lock at once
    /// (`BEGIN IMMEDIATE`), so a write after the reads waits its turn instead of failing as
    /// "database is locked" when another writer committed in between.
    pub async fn begin_write(&self) -> Result<sqlx::Transaction<'static, sqlx::Any>, Error> {
        Ok(match self.backend {
            Backend::Sqlite => self.pool.begin_with("BEGIN IMMEDIATE").await?,
            Backend::Postgres => self.pool.begin().await?,
        })
    }

    /// The pool, for queries.
    pub fn pool(&self) -> &AnyPool {
        &self.pool
    }

    /// Which engine this is.
    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// Tells waiting tasks that `change` was committed: this process's at once, other
    /// processes' through PostgreSQL `NOTIFY` (SQLite: by their polling).
    pub fn notify(&self, change: Change) {
        if let Some(b) = &self.bridge
            && change != Change::Resync
        {
            let _ = b.outbox.send(change.clone());
        }
        let _ = self.changes.send(change);
    }

    /// Changes committed from now on, by this process and (see [`Db::hears_other_nodes`]) by
    /// others. A receiver that falls behind gets `Lagged`, which it should treat as "anything
    /// may have changed".
    pub fn subscribe(&self) -> tokio::sync::broadcast::Receiver<Change> {
        self.changes.subscribe()
    }

    /// One round trip, for readiness checks.
    pub async fn ping(&self) -> Result<(), Error> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    /// Closes the pool, waiting for checked-out connections, and stops the listener.
    pub async fn close(&self) {
        if let Some(b) = &self.bridge {
            b.stop.cancel();
        }
        self.pool.close().await;
    }
}

/// Starts the two tasks of the PostgreSQL bridge: one sends this process's changes (coalesced:
/// whatever queued up while the previous `NOTIFY` was in flight goes in one payload, repeats
/// removed), one `LISTEN`s and re-broadcasts other processes' changes, reconnecting with backoff.
fn start_bridge(url: &str, pool: AnyPool, local: tokio::sync::broadcast::Sender<Change>) -> Bridge {
    let node = crate::ids::new_id();
    let stop = tokio_util::sync::CancellationToken::new();
    let listening = Arc::new(AtomicBool::new(false));
    let (outbox, mut queued) = tokio::sync::mpsc::unbounded_channel::<Change>();
    let sender_stop = stop.clone();
    let sender_node = node.clone();
    tokio::spawn(async move {
        loop {
            let first = tokio::select! {
                _ = sender_stop.cancelled() => return,
                c = queued.recv() => match c { Some(c) => c, None => return },
            };
            let mut batch = vec![first];
            while let Ok(c) = queued.try_recv() {
                if !batch.contains(&c) {
                    batch.push(c);
                }
                if batch.len() >= 256 {
                    break;
                }
            }
            // split so each payload stays under PostgreSQL's limit
            let mut start = 0;
            while start < batch.len() {
                let mut end = start;
                let mut size = sender_node.len();
                while end < batch.len()
                    && (end == start || size + batch[end].encode().len() + 1 < MAX_PAYLOAD)
                {
                    size += batch[end].encode().len() + 1;
                    end += 1;
                }
                let payload = encode_payload(&sender_node, &batch[start..end]);
                if let Err(e) = sqlx::query("SELECT pg_notify($1, $2)")
                    .bind(CHANNEL)
                    .bind(payload)
                    .execute(&pool)
                    .await
                {
                    // other nodes fall back to polling for this one; never fail the writer
                    tracing::debug!(error = %e, "pg_notify failed");
                }
                start = end;
            }
        }
    });
    let url = url.to_string();
    let flag = listening.clone();
    let listen_stop = stop.clone();
    tokio::spawn(async move {
        let mut backoff = Duration::from_millis(200);
        loop {
            let connected = async {
                let mut l = sqlx::postgres::PgListener::connect(&url).await?;
                l.listen(CHANNEL).await?;
                Ok::<_, sqlx::Error>(l)
            };
            let mut listener = tokio::select! {
                _ = listen_stop.cancelled() => return,
                l = connected => match l {
                    Ok(l) => l,
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot LISTEN for other nodes' changes; polling until it can");
                        tokio::select! {
                            _ = listen_stop.cancelled() => return,
                            _ = tokio::time::sleep(backoff) => {}
                        }
                        backoff = (backoff * 2).min(Duration::from_secs(10));
                        continue;
                    }
                },
            };
            flag.store(true, Ordering::Relaxed);
            // whatever other processes committed while we were not listening was not heard
            let _ = local.send(Change::Resync);
            backoff = Duration::from_millis(200);
            loop {
                let n = tokio::select! {
                    _ = listen_stop.cancelled() => { flag.store(false, Ordering::Relaxed); return }
                    n = listener.try_recv() => n,
                };
                match n {
                    Ok(Some(n)) => {
                        for c in decode_payload(&node, n.payload()).unwrap_or_default() {
                            let _ = local.send(c);
                        }
                    }
                    // the connection dropped: what was sent meanwhile is lost, so waiters
                    // poll until we are back
                    Ok(None) | Err(_) => {
                        flag.store(false, Ordering::Relaxed);
                        tracing::warn!("lost the LISTEN connection; reconnecting");
                        break;
                    }
                }
            }
        }
    });
    Bridge {
        outbox,
        listening,
        stop,
    }
}

#[cfg(test)]
mod tests {
    use super::{Change, decode_payload, encode_payload, redact};

    #[test]
    fn payloads_round_trip_and_skip_their_own_node() {
        let changes = vec![
            Change::Moment("m1".into()),
            Change::Object("uploads/a b/source".into()),
            Change::Events,
            Change::Jobs,
        ];
        let p = encode_payload("node1", &changes);
        assert_eq!(decode_payload("node2", &p), Some(changes));
        assert_eq!(decode_payload("node1", &p), None);
        // lines a newer version added are ignored, not misread
        assert_eq!(
            decode_payload("node2", "node1\nz what\nm \ne"),
            Some(vec![Change::Events])
        );
    }

    #[test]
    fn redacts_passwords_only() {
        assert_eq!(redact("postgres://u:secret@h/db"), "postgres://u:***@h/db");
        assert_eq!(redact("postgres://u@h/db"), "postgres://u@h/db");
        assert_eq!(redact("sqlite:///tmp/x.db"), "sqlite:///tmp/x.db");
    }
}
