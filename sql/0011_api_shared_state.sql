-- 0011: what API processes share through the warehouse, so that any replica behind a load balancer sees it.
-- Portable DDL (PostgreSQL and SQLite).

-- The API's own rate limit: one row per admitted request (a sliding log). A caller (`key:<key id>` or
-- `addr:<client address>`) is admitted while it has fewer rows than the limit in the last window. Rows older than
-- the window are deleted by a periodic purge (each API process, once a minute).
CREATE TABLE impact_api_rate_hits (
    caller  TEXT NOT NULL,
    at_ms   BIGINT NOT NULL
);

CREATE INDEX ix_impact_api_rate_hits_caller ON impact_api_rate_hits (caller, at_ms);

CREATE INDEX ix_impact_api_rate_hits_at ON impact_api_rate_hits (at_ms);

-- Bulk work the API runs outside the request (`retry-all-failed` over many rows): progress and the outcome
-- summary, readable by every replica (`GET /v1/impact-in/jobs/{id}`). `heartbeat_at` moves while the worker
-- lives; a running job whose heartbeat stopped is reported abandoned (its rows stay failed or retrying, replayable).
CREATE TABLE impact_api_jobs (
    job_id        TEXT PRIMARY KEY,
    kind          TEXT NOT NULL,
    status        TEXT NOT NULL,
    company_id    TEXT NOT NULL,
    provider      TEXT,
    key_id        TEXT NOT NULL,
    total         INTEGER NOT NULL DEFAULT 0,
    processed     INTEGER NOT NULL DEFAULT 0,
    succeeded     INTEGER NOT NULL DEFAULT 0,
    failed        INTEGER NOT NULL DEFAULT 0,
    summary       TEXT,
    error         TEXT,
    created_at    TIMESTAMP WITH TIME ZONE NOT NULL,
    started_at    TIMESTAMP WITH TIME ZONE,
    finished_at   TIMESTAMP WITH TIME ZONE,
    heartbeat_at  TIMESTAMP WITH TIME ZONE,
    CONSTRAINT ck_impact_api_jobs_status CHECK (status IN ('queued', 'running', 'succeeded', 'failed'))
);

CREATE INDEX ix_impact_api_jobs_company ON impact_api_jobs (company_id, created_at);
