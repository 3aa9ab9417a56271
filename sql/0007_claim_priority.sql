-- 0007: delivery priority, and claim indexes that follow it. Portable DDL (PostgreSQL and SQLite).
--
-- priority: 1 = urgent, 0 = normal (the event's metadata.priority, domain/events.Priority). Claims take the highest
-- first, then the oldest, so an urgent row goes out in the next batch of whatever run is delivering its provider.
ALTER TABLE impact_deliveries ADD COLUMN priority INTEGER NOT NULL DEFAULT 0;
--
-- The claim indexes of 0005 again, in the claim's new order (priority first). Still partial: only claimable rows.
DROP INDEX ix_impact_deliveries_claim_company;
DROP INDEX ix_impact_deliveries_claim_order;
CREATE INDEX ix_impact_deliveries_claim_company
    ON impact_deliveries (provider, company_id, priority DESC, created_at, id)
    WHERE status IN ('pending', 'retrying');
CREATE INDEX ix_impact_deliveries_claim_order ON impact_deliveries (provider, priority DESC, created_at, id)
    WHERE status IN ('pending', 'retrying');
--
-- Rows held by a claimant (heartbeats, releases, dead-claimant checks look them up by claimant). Only held rows are
-- indexed: a million pending rows cost this index nothing, and staging writes no entry for them.
DROP INDEX ix_impact_deliveries_claim;
CREATE INDEX ix_impact_deliveries_claim ON impact_deliveries (claimed_by) WHERE claimed_by IS NOT NULL;
