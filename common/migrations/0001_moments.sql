-- Written in the SQL that both SQLite and PostgreSQL accept: TEXT ids made by the application,
-- BIGINT epoch milliseconds for times, DOUBLE PRECISION for fractions, TEXT (JSON) for lists.

CREATE TABLE moments (
    id          TEXT PRIMARY KEY,
    user_id     TEXT NOT NULL,
    state       TEXT NOT NULL,
    progress    DOUBLE PRECISION NOT NULL DEFAULT 0,
    error       TEXT,
    source_key  TEXT,
    renditions  TEXT NOT NULL DEFAULT '[]',
    created_at  BIGINT NOT NULL,
    updated_at  BIGINT NOT NULL
);

CREATE INDEX moments_by_user ON moments (user_id, created_at);
