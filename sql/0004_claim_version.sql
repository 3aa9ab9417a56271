-- 0004: a fencing token for claims. Every claim of a row increments claim_version; the holder confirms
-- (claimed_by, claim_version) right before each request and when it settles the row, so a run whose claim was
-- taken over (or whose lease lapsed) neither sends the row nor settles it. Portable DDL (PostgreSQL and SQLite).

ALTER TABLE impact_deliveries ADD COLUMN claim_version INTEGER NOT NULL DEFAULT 0;
