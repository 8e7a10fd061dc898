-- Revoked tokens: one token by its id (kind 'jti', subject = the jti), or every token of a user
-- issued at or before a second (kind 'user', subject = the user id, before_s = that second).
-- Every node keeps these in memory and re-reads the rows written since its last read
-- (revoked_at), so a revocation holds everywhere within a second.
CREATE TABLE revocations (
    kind        TEXT NOT NULL,             -- jti | user
    subject     TEXT NOT NULL,
    before_s    BIGINT NOT NULL,           -- user: tokens with iat <= before_s are refused; jti: 0
    expires_s   BIGINT,                    -- jti: when the token expires anyway (row dropped then)
    revoked_at  BIGINT NOT NULL,           -- ms; updated when revoked again
    revoked_by  TEXT NOT NULL,             -- the user who asked, or "cli"
    PRIMARY KEY (kind, subject)
);
CREATE INDEX revocations_by_time ON revocations (revoked_at);
