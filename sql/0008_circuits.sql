-- 0008: the circuit breaker per provider credential, and operators' pauses (a provider's maintenance window).
-- One row per (provider, scope); `scope` is `credential:<rate-limit key>` for a breaker (the key is a short hash,
-- never the credential), `company:<id>` or `*` for a pause. Rows are written only when a state changes or a
-- transient failure is counted; senders read the table at most every IMPACTIN_CIRCUIT_REFRESH_S. Portable DDL.
CREATE TABLE impactin_circuits (
    provider     TEXT NOT NULL,
    scope        TEXT NOT NULL,
    state        TEXT NOT NULL DEFAULT 'closed',
    failures     INTEGER NOT NULL DEFAULT 0,
    trips        INTEGER NOT NULL DEFAULT 0,
    open_until   TIMESTAMP WITH TIME ZONE,
    probe_until  TIMESTAMP WITH TIME ZONE,
    company_id   TEXT,
    last_error   TEXT,
    updated_at   TIMESTAMP WITH TIME ZONE NOT NULL,
    PRIMARY KEY (provider, scope),
    CONSTRAINT ck_impactin_circuits_state CHECK (state IN ('closed', 'open', 'half_open', 'paused'))
);
