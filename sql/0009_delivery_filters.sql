-- 0009: indexes for the operators' filters on the delivery log (GET /deliveries, `impactin deliveries list`) and
-- for keyset pagination newest first. Each listing index ends in (created_at, id), the listing order, so a page
-- (and a cursor's seek `(created_at, id) < (:created_at, :id)`) reads only its rows, however deep it is.
-- Statements after a `-- postgresql:` line run on PostgreSQL only; everything else is portable DDL.
--
-- Every delivery, newest first (an admin key with no filter; the cursor's seek): replaces 0001's (created_at).
DROP INDEX ix_impact_deliveries_created;
CREATE INDEX ix_impact_deliveries_created_id ON impact_deliveries (created_at, id);
-- One company's deliveries (a company key's scope, companyId):
CREATE INDEX ix_impact_deliveries_company_created ON impact_deliveries (company_id, created_at, id);
-- status:
CREATE INDEX ix_impact_deliveries_status_created ON impact_deliveries (status, created_at, id);
-- errorKind: only rows that have one (failed and retrying rows), so the index stays small:
CREATE INDEX ix_impact_deliveries_error_kind ON impact_deliveries (error_kind, created_at, id) WHERE error_kind IS NOT NULL;
-- eventId (the unique (company_id, provider, event_id) needs the company first):
CREATE INDEX ix_impact_deliveries_event ON impact_deliveries (event_id);
-- userId: the user's events, then their deliveries through ix_impact_deliveries_event:
CREATE INDEX ix_impact_events_user ON impact_events (user_id);
-- metadata.KEY=VALUE on PostgreSQL: a GIN index over the events' metadata as jsonb. The column is landing text that
-- may hold malformed JSON, so the cast goes through a function that answers NULL instead of failing (an index
-- expression that raised would refuse the malformed rows the gate must quarantine). PARALLEL UNSAFE: the
-- exception block is a subtransaction, which no process may start in parallel mode (not even the leader). SQLite reads json_extract.
-- postgresql:
CREATE FUNCTION impactin_jsonb_or_null(doc text) RETURNS jsonb LANGUAGE plpgsql IMMUTABLE PARALLEL UNSAFE AS $$ BEGIN RETURN doc::jsonb; EXCEPTION WHEN others THEN RETURN NULL; END $$;
-- postgresql:
CREATE INDEX ix_impact_events_metadata ON impact_events USING gin (impactin_jsonb_or_null(metadata) jsonb_path_ops);
-- Free text in last_error on PostgreSQL: a trigram index serves ILIKE '%text%' when the server has pg_trgm. The
-- extension is created in `public` unless the database has it already (wherever it lives: the operator class is
-- named through its schema, so the tables' schema need not be on the search path). If it cannot be had (not
-- available, no privilege), the migration goes on without the index and the search reads the rows the other
-- filters leave (docs/operations.md says how to check). SQLite: LIKE over the same rows.
-- postgresql:
DO $$ DECLARE ext_schema text; BEGIN IF NOT EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'pg_trgm') THEN CREATE EXTENSION pg_trgm SCHEMA public; END IF; SELECT n.nspname INTO ext_schema FROM pg_extension x JOIN pg_namespace n ON n.oid = x.extnamespace WHERE x.extname = 'pg_trgm'; EXECUTE 'CREATE INDEX ix_impact_deliveries_last_error_trgm ON impact_deliveries USING gin (last_error ' || quote_ident(ext_schema) || '.gin_trgm_ops)'; EXCEPTION WHEN others THEN RAISE NOTICE USING MESSAGE = 'pg_trgm unavailable, last_error search reads without an index: ' || SQLERRM; END $$;
