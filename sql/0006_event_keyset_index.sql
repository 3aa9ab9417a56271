-- 0006: staging reads a company's events in pages by event id (keyset pagination). This index hands over each
-- page in order and stops after it, however many events other companies have. Portable DDL.
CREATE INDEX ix_impact_events_company_event ON impact_events (company_id, event_id);
