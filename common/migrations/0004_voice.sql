-- Voice Q&A sessions, their rounds (question and transcribed answer) and the per-user memory
-- the summarising job writes.
CREATE TABLE qa_sessions (
    id                 TEXT PRIMARY KEY,
    user_id            TEXT NOT NULL,
    moment_id          TEXT NOT NULL,
    state              TEXT NOT NULL,            -- new | open | done
    audio_format       TEXT NOT NULL,            -- ogg | pcm16 (question audio)
    prompt_tokens      BIGINT NOT NULL DEFAULT 0,
    completion_tokens  BIGINT NOT NULL DEFAULT 0,
    local_rounds       BIGINT NOT NULL DEFAULT 0,
    created_at         BIGINT NOT NULL,
    updated_at         BIGINT NOT NULL
);
CREATE INDEX qa_sessions_by_moment ON qa_sessions (moment_id);
CREATE INDEX qa_sessions_by_user ON qa_sessions (user_id, created_at);

CREATE TABLE qa_turns (
    session_id  TEXT NOT NULL,
    round       BIGINT NOT NULL,
    question    TEXT NOT NULL,
    answer      TEXT,
    writer      TEXT NOT NULL,
    created_at  BIGINT NOT NULL,
    PRIMARY KEY (session_id, round)
);

CREATE TABLE profiles (
    user_id     TEXT PRIMARY KEY,
    summary     TEXT NOT NULL DEFAULT '',
    tags        TEXT NOT NULL DEFAULT '[]',
    updated_at  BIGINT NOT NULL
);
