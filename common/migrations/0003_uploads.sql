-- Resumable (tus) uploads. `received` is the durable offset: every byte below it is stored
-- (fsynced file, committed S3 parts + tail object) before it is acknowledged.
CREATE TABLE uploads (
    id            TEXT PRIMARY KEY,
    user_id       TEXT NOT NULL,
    moment_id     TEXT NOT NULL,
    length        BIGINT NOT NULL,
    received      BIGINT NOT NULL DEFAULT 0,
    metadata      TEXT NOT NULL DEFAULT '',
    state         TEXT NOT NULL,            -- active | complete
    expires_at    BIGINT NOT NULL,
    lock_owner    TEXT,
    lock_until    BIGINT,
    s3_upload_id  TEXT,
    next_part     BIGINT NOT NULL DEFAULT 0,
    tail_size     BIGINT NOT NULL DEFAULT 0,
    created_at    BIGINT NOT NULL,
    updated_at    BIGINT NOT NULL
);

CREATE INDEX uploads_by_user ON uploads (user_id, state);
CREATE INDEX uploads_by_expiry ON uploads (state, expires_at);

-- Committed S3 parts of an upload (part numbers ascend but may skip: a number is never reused).
CREATE TABLE upload_parts (
    upload_id    TEXT NOT NULL,
    part_number  BIGINT NOT NULL,
    size         BIGINT NOT NULL,
    etag         TEXT NOT NULL,
    PRIMARY KEY (upload_id, part_number)
);
