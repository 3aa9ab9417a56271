-- 0007: delivery priority, and claim indexes that follow it and cost a claim less. Portable DDL (PostgreSQL and
-- SQLite).
--
-- priority: 1 = urgent, 0 = normal (the event's metadata.priority, domain/events.Priority). Claims take the highest
-- first, then the oldest, so an urgent row goes out in the next batch of whatever run is delivering its provider.
ALTER TABLE impact_deliveries ADD COLUMN priority INTEGER NOT NULL DEFAULT 0;
--
-- The claim indexes of 0005 again, in the claim's order (priority first), over claimable rows nobody holds. A
-- claim's new row version is not added to them (it is held), and a claim never walks past rows in flight.
DROP INDEX ix_impact_deliveries_claim_company;
DROP INDEX ix_impact_deliveries_claim_order;
CREATE INDEX ix_impact_deliveries_claim_company
    ON impact_deliveries (provider, company_id, priority DESC, created_at, id)
    WHERE status IN ('pending', 'retrying') AND claimed_by IS NULL;
CREATE INDEX ix_impact_deliveries_claim_order ON impact_deliveries (provider, priority DESC, created_at, id)
    WHERE status IN ('pending', 'retrying') AND claimed_by IS NULL;
--
-- Held rows only (a million pending rows cost these nothing, and staging writes no entry for them): by claimant
-- (heartbeats, releases, dead claimants) and by lease expiry (claims taking back rows whose lease lapsed).
DROP INDEX ix_impact_deliveries_claim;
CREATE INDEX ix_impact_deliveries_claim ON impact_deliveries (claimed_by) WHERE claimed_by IS NOT NULL;
CREATE INDEX ix_impact_deliveries_lease ON impact_deliveries (provider, lease_expires_at)
    WHERE claimed_by IS NOT NULL;
