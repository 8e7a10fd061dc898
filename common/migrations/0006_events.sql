-- The transactional outbox. An event row is written in the same transaction as the state change
-- it reports; the relay (a job on the queue) fans each event out to one delivery row per target
-- that wants it and delivers those in order per (target, subject).
CREATE TABLE events (
    id          TEXT PRIMARY KEY,            -- evt_…, what consumers deduplicate on
    type        TEXT NOT NULL,
    subject     TEXT NOT NULL,               -- moment:{id} | user:{id}
    seq         BIGINT NOT NULL,             -- 1, 2, … per subject
    body        TEXT NOT NULL,               -- the event's JSON, exactly as delivered
    created_at  BIGINT NOT NULL,
    fanned      BIGINT NOT NULL DEFAULT 0,   -- 1 once its delivery rows exist
    UNIQUE (subject, seq)
);
CREATE INDEX events_unfanned ON events (fanned, created_at);

-- The last sequence number given out per subject (an upsert serialises writers of a subject).
CREATE TABLE event_subjects (
    subject   TEXT PRIMARY KEY,
    last_seq  BIGINT NOT NULL
);

CREATE TABLE event_deliveries (
    event_id      TEXT NOT NULL,
    target        TEXT NOT NULL,             -- webhook:{name} | bus
    subject       TEXT NOT NULL,
    seq           BIGINT NOT NULL,
    state         TEXT NOT NULL,             -- pending | done | dead
    attempts      BIGINT NOT NULL DEFAULT 0,
    next_at       BIGINT NOT NULL,           -- not attempted before (retry backoff)
    last_error    TEXT,
    created_at    BIGINT NOT NULL,
    delivered_at  BIGINT,
    PRIMARY KEY (event_id, target)
);
-- what is pending for a target, in fan-out order (each subject's rows in seq order)
CREATE INDEX event_deliveries_pending ON event_deliveries (target, state, created_at, seq);
-- the lowest pending seq of a subject
CREATE INDEX event_deliveries_chain ON event_deliveries (target, state, subject, seq);
CREATE INDEX event_deliveries_delivered ON event_deliveries (state, delivered_at);

-- Webhook endpoints that answered 410 Gone: nothing is sent to them until re-enabled; their
-- deliveries wait (nothing is dropped).
CREATE TABLE event_endpoints (
    name         TEXT PRIMARY KEY,
    disabled_at  BIGINT,
    reason       TEXT
);
