-- 0005: indexes for claiming and for finding work with a large outbox. Portable DDL (PostgreSQL and SQLite both
-- support partial indexes). Only claimable rows are indexed, so the indexes stay as small as the backlog while
-- delivered and failed rows pile up. Queries must spell the statuses as literals (not bound parameters) for the
-- planner to prove they fall inside the index.
--
-- Claims of one company (a partition) read its oldest claimable rows in order and stop after the batch:
CREATE INDEX ix_impact_deliveries_claim_company ON impact_deliveries (provider, company_id, created_at, id)
    WHERE status IN ('pending', 'retrying');
-- Claims across many companies (a range run) walk the provider's claimable rows oldest first:
CREATE INDEX ix_impact_deliveries_claim_order ON impact_deliveries (provider, created_at, id)
    WHERE status IN ('pending', 'retrying');
