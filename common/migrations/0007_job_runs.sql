-- Every claim of a job is a run: who ran it, from when, its last sign of life (lease
-- renewals) and how it ended. The history shows that no job ran on two workers at once (each
-- run's last sign of life precedes the next run's start) and what became of killed workers.
CREATE TABLE job_runs (
    job_id      TEXT NOT NULL,
    owner       TEXT NOT NULL,
    attempt     BIGINT NOT NULL,
    started_at  BIGINT NOT NULL,
    last_seen   BIGINT NOT NULL,            -- the claim, then each lease renewal
    ended_at    BIGINT,                     -- NULL while running, or when its worker died
    outcome     TEXT,                       -- done | retry | failed | released | requeued | parked | lease_lost
    PRIMARY KEY (job_id, owner, started_at)
);
CREATE INDEX job_runs_by_job ON job_runs (job_id, started_at);
CREATE INDEX job_runs_by_end ON job_runs (ended_at);
