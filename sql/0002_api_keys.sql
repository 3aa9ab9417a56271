-- 0002: API keys for the /v1/impact-in HTTP API. Portable DDL (PostgreSQL and SQLite).
-- A key is shown once at creation; only a SHA-256 of its secret part is stored. `key_id` is the public part of
-- the key (it appears in the key itself), so a request finds its row by primary key and compares one hash.
-- A company key is scoped to one company; an admin key (company_id NULL) sees every company.

CREATE TABLE impact_api_keys (
    key_id        TEXT PRIMARY KEY,
    key_hash      TEXT NOT NULL,
    company_id    TEXT,
    is_admin      BOOLEAN NOT NULL DEFAULT FALSE,
    label         TEXT,
    created_at    TIMESTAMP WITH TIME ZONE NOT NULL,
    last_used_at  TIMESTAMP WITH TIME ZONE,
    revoked       BOOLEAN NOT NULL DEFAULT FALSE,
    revoked_at    TIMESTAMP WITH TIME ZONE,
    CONSTRAINT ck_impact_api_keys_scope CHECK (
        (is_admin AND company_id IS NULL) OR (NOT is_admin AND company_id IS NOT NULL))
);

CREATE INDEX ix_impact_api_keys_company ON impact_api_keys (company_id);
