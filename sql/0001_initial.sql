-- 0001: the source contract (written by the TEEI platform) and our delivery log.
-- Portable DDL: runs unchanged on PostgreSQL and SQLite.
--
-- impact_events and company_integrations are landing tables: values are kept as the platform sent them (TEXT; JSON
-- documents as JSON text, key order intact) so that a malformed event lands, is seen and is quarantined with a
-- clear error by the pipeline instead of being refused at write time and lost to everyone downstream.

CREATE TABLE impact_events (
    event_id        TEXT PRIMARY KEY,
    company_id      TEXT NOT NULL,
    user_id         TEXT,
    event_type      TEXT,
    occurred_at     TEXT,            -- ISO 8601 with an offset
    value           TEXT,            -- a decimal number
    unit            TEXT,
    outcome_scores  TEXT,            -- JSON object: dimension -> score in [0, 1]
    metadata        TEXT,            -- JSON object
    created_at      TIMESTAMP WITH TIME ZONE NOT NULL DEFAULT CURRENT_TIMESTAMP
);

CREATE INDEX ix_impact_events_company ON impact_events (company_id, created_at);

CREATE TABLE company_integrations (
    company_id  TEXT NOT NULL,
    provider    TEXT NOT NULL,
    enabled     BOOLEAN NOT NULL DEFAULT TRUE,
    settings    TEXT,                -- JSON object; secrets only as {"encrypted": "<fernet token>"}
    PRIMARY KEY (company_id, provider)
);

-- The outbox: one row per (event, enabled provider). `delivery_id` is UUIDv5(company, provider, event),
-- the X-Idempotency-Key; `id` is the row id the API and CLI show.
CREATE TABLE impact_deliveries (
    id                 TEXT PRIMARY KEY,
    company_id         TEXT NOT NULL,
    provider           TEXT NOT NULL,
    event_id           TEXT NOT NULL,
    delivery_id        TEXT NOT NULL,
    payload            TEXT,
    payload_hash       TEXT,
    status             TEXT NOT NULL DEFAULT 'pending',
    error_kind         TEXT,
    attempt_count      INTEGER NOT NULL DEFAULT 0,
    run_count          INTEGER NOT NULL DEFAULT 0,
    last_error         TEXT,
    provider_response  TEXT,
    next_attempt_at    TIMESTAMP WITH TIME ZONE,
    claimed_by         TEXT,
    lease_expires_at   TIMESTAMP WITH TIME ZONE,
    delivered_at       TIMESTAMP WITH TIME ZONE,
    created_at         TIMESTAMP WITH TIME ZONE NOT NULL,
    updated_at         TIMESTAMP WITH TIME ZONE NOT NULL,
    CONSTRAINT uq_impact_deliveries_event UNIQUE (company_id, provider, event_id),
    CONSTRAINT uq_impact_deliveries_delivery_id UNIQUE (delivery_id),
    CONSTRAINT ck_impact_deliveries_status CHECK (status IN ('pending', 'success', 'retrying', 'failed')),
    CONSTRAINT ck_impact_deliveries_error_kind CHECK (
        error_kind IS NULL OR error_kind IN ('invalid_event', 'rejected', 'exhausted', 'config', 'transient'))
);

CREATE INDEX ix_impact_deliveries_due ON impact_deliveries (provider, company_id, status, next_attempt_at);
CREATE INDEX ix_impact_deliveries_created ON impact_deliveries (created_at);
CREATE INDEX ix_impact_deliveries_claim ON impact_deliveries (claimed_by);

-- Every request sent to a provider, in order. Never updated after it is written.
CREATE TABLE impact_delivery_attempts (
    delivery_id       TEXT NOT NULL REFERENCES impact_deliveries (delivery_id) ON DELETE CASCADE,
    attempt_number    INTEGER NOT NULL,
    run_id            TEXT,
    started_at        TIMESTAMP WITH TIME ZONE NOT NULL,
    finished_at       TIMESTAMP WITH TIME ZONE NOT NULL,
    duration_ms       INTEGER NOT NULL,
    outcome           TEXT NOT NULL,
    http_status       INTEGER,
    error             TEXT,
    response_excerpt  TEXT,
    request_body      TEXT,
    PRIMARY KEY (delivery_id, attempt_number)
);

CREATE INDEX ix_impact_delivery_attempts_started ON impact_delivery_attempts (started_at);

-- OAuth tokens per (company, provider), encrypted with IMPACTIN_ENCRYPTION_KEY. `credential_key` is a hash of
-- the token URL and client id: new credentials never reuse an old token.
CREATE TABLE impact_provider_tokens (
    company_id               TEXT NOT NULL,
    provider                 TEXT NOT NULL,
    credential_key           TEXT NOT NULL,
    access_token_encrypted   TEXT NOT NULL,
    refresh_token_encrypted  TEXT,
    token_type               TEXT,
    expires_at               TIMESTAMP WITH TIME ZONE NOT NULL,
    created_at               TIMESTAMP WITH TIME ZONE NOT NULL,
    updated_at               TIMESTAMP WITH TIME ZONE NOT NULL,
    PRIMARY KEY (company_id, provider)
);
