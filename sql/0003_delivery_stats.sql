-- 0003: delivery statistics for analysts, one snapshot per computation (the delivery_stats asset), long format:
-- one row per (snapshot, dimension, dimension value, metric), so new sections never need new columns.
-- Portable DDL (PostgreSQL and SQLite). Latest snapshot:
--   SELECT * FROM impact_delivery_stats
--   WHERE computed_at = (SELECT max(computed_at) FROM impact_delivery_stats) ORDER BY dimension, dimension_value;
-- dimension: overall | provider_status | company | day | error_kind; dimension_value: '' for overall,
-- 'benevity/success', a company id, a UTC day 'YYYY-MM-DD', an error kind.
-- metric: total, successful, failed, pending, retrying, success_rate, count, avg_attempts, latency_p50_s,
-- latency_p95_s, latency_samples. Period bounds are on created_at; NULL means unbounded.

CREATE TABLE impact_delivery_stats (
    computed_at      TIMESTAMP WITH TIME ZONE NOT NULL,
    period_start     TIMESTAMP WITH TIME ZONE,
    period_end       TIMESTAMP WITH TIME ZONE,
    dimension        TEXT NOT NULL,
    dimension_value  TEXT NOT NULL,
    metric           TEXT NOT NULL,
    value            DOUBLE PRECISION NOT NULL,
    PRIMARY KEY (computed_at, dimension, dimension_value, metric)
);

CREATE INDEX ix_impact_delivery_stats_metric ON impact_delivery_stats (dimension, metric, computed_at);
