-- 0012: the events' metadata kept parsed, so the metadata.KEY=VALUE filter reads a stored value. 0009 indexed the
-- expression impactin_jsonb_or_null(metadata), but every match the GIN index found was rechecked by calling that
-- plpgsql function again (a subtransaction per row, and no parallel plan): a third of a million events took seconds.
-- `metadata_doc` is a generated column, so every writer (the platform's own loads included) fills it without knowing
-- it exists; the landing column may hold malformed JSON, which the same safe cast turns into NULL (no match) instead
-- of refusing the row the gate must quarantine. ADD COLUMN ... STORED fills the existing rows (a table rewrite).
-- postgresql:
ALTER TABLE impact_events ADD COLUMN metadata_doc jsonb GENERATED ALWAYS AS (impactin_jsonb_or_null(metadata)) STORED;
-- postgresql:
CREATE INDEX ix_impact_events_metadata_doc ON impact_events USING gin (metadata_doc jsonb_path_ops);
-- postgresql:
DROP INDEX ix_impact_events_metadata;
-- SQLite computes the column when read (ALTER TABLE can add only VIRTUAL ones); its filter keeps json_extract.
-- sqlite:
ALTER TABLE impact_events ADD COLUMN metadata_doc TEXT GENERATED ALWAYS AS (CASE WHEN json_valid(metadata) THEN metadata END) VIRTUAL;
