-- 0013: outbox row ids drawn in time order (UUID version 7: 48 bits of Unix milliseconds, then random bits), as
-- `store/ids.new_row_id` draws them on SQLite. A batch staged together and claimed together then sits together in
-- the primary key: staging appends to its right edge, and a claim of 200 rows rewrites a few of its pages instead of
-- 200 scattered ones. Existing ids keep their value; ids stay opaque text. Inlined by the planner (SQL function).
-- postgresql:
CREATE FUNCTION impactin_new_row_id() RETURNS text LANGUAGE sql VOLATILE PARALLEL SAFE AS $$ SELECT encode(set_bit(set_bit(overlay(uuid_send(gen_random_uuid()) placing substring(int8send((extract(epoch FROM clock_timestamp()) * 1000)::bigint) FROM 3) FROM 1 FOR 6), 52, 1), 53, 1), 'hex')::uuid::text $$;
