//! The metadata database: SQLite (one WAL file in the data dir) by default, PostgreSQL when the
//! URL says `postgres://`. Both run the same migrations (written in the SQL both understand) and
//! the same queries through sqlx's `Any` driver; the few statements that must differ (job claims)
//! ask [`Db::backend`].

use std::path::Path;
use std::str::FromStr;
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
}

impl Default for Config {
    fn default() -> Self {
        Config {
            url: None,
            max_connections: 8,
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
    /// Events were written to the outbox (wakes this process's relay).
    Events,
}

/// A handle on the metadata database; cheap to clone.
#[derive(Clone, Debug)]
pub struct Db {
    pool: AnyPool,
    backend: Backend,
    changes: tokio::sync::broadcast::Sender<Change>,
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
    /// Opens (creating the SQLite file and its directory if needed) and migrates.
    pub async fn connect(url: &str, max_connections: u32) -> Result<Db, Error> {
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
        let db = Db {
            pool,
            backend,
            changes: tokio::sync::broadcast::channel(1024).0,
        };
        MIGRATOR.run(&db.pool).await?;
        Ok(db)
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

    /// Tells waiting tasks of this process that `change` was committed. In-process only:
    /// waiters in other processes find out by polling, so every waiter also polls (slowly).
    pub fn notify(&self, change: Change) {
        let _ = self.changes.send(change);
    }

    /// Changes committed by this process from now on. A receiver that falls behind gets
    /// `Lagged`, which it should treat as "anything may have changed".
    pub fn subscribe(&self) -> tokio::sync::broadcast::Receiver<Change> {
        self.changes.subscribe()
    }

    /// One round trip, for readiness checks.
    pub async fn ping(&self) -> Result<(), Error> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    /// Closes the pool, waiting for checked-out connections.
    pub async fn close(&self) {
        self.pool.close().await;
    }
}

#[cfg(test)]
mod tests {
    use super::redact;

    #[test]
    fn redacts_passwords_only() {
        assert_eq!(redact("postgres://u:secret@h/db"), "postgres://u:***@h/db");
        assert_eq!(redact("postgres://u@h/db"), "postgres://u@h/db");
        assert_eq!(redact("sqlite:///tmp/x.db"), "sqlite:///tmp/x.db");
    }
}
