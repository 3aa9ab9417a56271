-- 0010: what the providers say after the send. A provider's webhook callback (confirmed, rejected, deleted) is
-- recorded on the delivery (`confirmation`, `confirmed_at`: when the latest verdict arrived) and kept, whatever it
-- matched, in impact_delivery_callbacks: one row per distinct callback, written in the transaction that applies it,
-- so a repeated callback is recognised by (provider, callback_id) and changes nothing. `delivery_id` is NULL for a
-- callback that matched no delivery of ours: kept and reported, never dropped. No foreign key: an audit row outlives
-- whatever happens to the delivery. Portable DDL (PostgreSQL and SQLite).

ALTER TABLE impact_deliveries ADD COLUMN confirmed_at TIMESTAMP WITH TIME ZONE;

ALTER TABLE impact_deliveries ADD COLUMN confirmation TEXT;

CREATE TABLE impact_delivery_callbacks (
    id                TEXT PRIMARY KEY,
    provider          TEXT NOT NULL,
    callback_id       TEXT NOT NULL,
    kind              TEXT NOT NULL,
    delivery_id       TEXT,
    company_id        TEXT,
    idempotency_key   TEXT,
    event_id          TEXT,
    provider_reference TEXT,
    reason            TEXT,
    effect            TEXT NOT NULL,
    signed_at         TIMESTAMP WITH TIME ZONE NOT NULL,
    received_at       TIMESTAMP WITH TIME ZONE NOT NULL,
    body              TEXT NOT NULL,
    CONSTRAINT uq_impact_delivery_callbacks_callback UNIQUE (provider, callback_id),
    CONSTRAINT ck_impact_delivery_callbacks_kind CHECK (kind IN ('confirmed', 'rejected', 'deleted'))
);

CREATE INDEX ix_impact_delivery_callbacks_delivery ON impact_delivery_callbacks (delivery_id);
CREATE INDEX ix_impact_delivery_callbacks_unmatched ON impact_delivery_callbacks (provider, received_at);

-- Reconciliation (services/reconcile): the latest comparison of each company x provider with what the provider
-- holds, and the differences it found (replaced on every run of that pair). `ref` is our delivery_id for a row of
-- ours, else the provider's idempotency key or event id.
CREATE TABLE impact_reconciliations (
    company_id     TEXT NOT NULL,
    provider       TEXT NOT NULL,
    period_start   TIMESTAMP WITH TIME ZONE NOT NULL,
    period_end     TIMESTAMP WITH TIME ZONE NOT NULL,
    ours           INTEGER NOT NULL,
    held           INTEGER NOT NULL,
    differences    INTEGER NOT NULL,
    error          TEXT,
    reconciled_at  TIMESTAMP WITH TIME ZONE NOT NULL,
    PRIMARY KEY (company_id, provider)
);

CREATE TABLE impact_reconciliation_differences (
    company_id   TEXT NOT NULL,
    provider     TEXT NOT NULL,
    problem      TEXT NOT NULL,
    ref          TEXT NOT NULL,
    row_id       TEXT,
    event_id     TEXT,
    detail       TEXT,
    found_at     TIMESTAMP WITH TIME ZONE NOT NULL,
    PRIMARY KEY (company_id, provider, problem, ref)
);
