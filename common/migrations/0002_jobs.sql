-- The durable job queue (kinds: transcode, qa_summary, ...). Times are epoch milliseconds.
CREATE TABLE jobs (
    id            TEXT PRIMARY KEY,
    kind          TEXT NOT NULL,
    payload       TEXT NOT NULL,
    state         TEXT NOT NULL,            -- queued | running | done | failed
    attempts      BIGINT NOT NULL DEFAULT 0,
    max_attempts  BIGINT NOT NULL,
    run_after     BIGINT NOT NULL,          -- not claimable before (retry backoff)
    lease_owner   TEXT,
    lease_until   BIGINT,
    last_error    TEXT,
    dedup_key     TEXT UNIQUE,              -- enqueueing the same work twice is a no-op
    created_at    BIGINT NOT NULL,
    updated_at    BIGINT NOT NULL,
    started_at    BIGINT,
    finished_at   BIGINT
);

CREATE INDEX jobs_claimable ON jobs (state, kind, run_after);

-- Single-use tickets for browser EventSource/WebSocket connections (which cannot send headers).
CREATE TABLE tickets (
    hash        TEXT PRIMARY KEY,           -- SHA-256 of the ticket; the ticket itself is never stored
    user_id     TEXT NOT NULL,
    expires_at  BIGINT NOT NULL
);
