-- The compose file's PostgreSQL holds Dagster's storage (database "dagster") and the warehouse (database "impactin").
CREATE DATABASE impactin;
