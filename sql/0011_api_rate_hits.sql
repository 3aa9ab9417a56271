-- 0011: the API's own rate limit, shared by every API process on this warehouse. One row per admitted request
-- (a sliding log): a caller (`key:<key id>` or `addr:<client address>`) is admitted while it has fewer rows than the
-- limit in the last window. Rows older than the window are deleted as callers come back and by a periodic purge.
-- Portable DDL.
CREATE TABLE impact_api_rate_hits (
    caller  TEXT NOT NULL,
    at_ms   BIGINT NOT NULL
);

CREATE INDEX ix_impact_api_rate_hits_caller ON impact_api_rate_hits (caller, at_ms);

CREATE INDEX ix_impact_api_rate_hits_at ON impact_api_rate_hits (at_ms);
