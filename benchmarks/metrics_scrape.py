"""The cost of one `/metrics` scrape with a large ledger on PostgreSQL.

A million outbox rows over three providers (most delivered, some pending, retrying and failed) and an attempt per
request (a tenth of the rows retried once). Measured: the whole exposition (every query, formatting included),
median of repeated scrapes; the baseline, in the same database, is one `count(*)` over the outbox (the least a
figure over every row can cost).
"""

import argparse
import statistics
import time

from sqlalchemy.engine import Engine

from benchmarks.pg import run_sql, scratch_postgres, vacuum
from impactin_pipelines.services.metrics import MetricsExposition

SEED_ROWS = """
INSERT INTO impact_deliveries (id, company_id, provider, event_id, delivery_id, payload, payload_hash, status,
                               error_kind, attempt_count, run_count, created_at, updated_at)
SELECT 'row' || g, 'co' || lpad((g %% 500)::text, 3, '0'),
       (ARRAY['benevity', 'goodera', 'workday'])[1 + g %% 3], 'evt_' || g, 'dlv' || g, '{}', md5(g::text),
       CASE WHEN g %% 100 = 0 THEN 'pending' WHEN g %% 100 = 1 THEN 'retrying' WHEN g %% 100 = 2 THEN 'failed'
            ELSE 'success' END,
       CASE WHEN g %% 100 = 2 THEN 'rejected' WHEN g %% 100 = 1 THEN 'transient' END,
       CASE WHEN g %% 100 = 0 THEN 0 WHEN g %% 10 = 3 THEN 2 ELSE 1 END, 1,
       now() - interval '30 days' + g * interval '2 s', now()
FROM generate_series(1, %(n)s) AS g
"""
SEED_ATTEMPTS = """
INSERT INTO impact_delivery_attempts (delivery_id, attempt_number, run_id, started_at, finished_at, duration_ms,
                                      outcome, http_status)
SELECT delivery_id, n, 'bench', created_at, created_at + (g_ms * interval '1 ms'), g_ms,
       CASE WHEN status = 'success' AND n = attempt_count THEN 'success' ELSE 'retryable' END,
       CASE WHEN status = 'success' AND n = attempt_count THEN 200 ELSE 503 END
FROM (SELECT d.*, n, (abs(hashtext(d.id)) %% 3000) AS g_ms
      FROM impact_deliveries d, generate_series(1, d.attempt_count) AS n) AS rows
"""


def _scrape_ms(metrics: MetricsExposition, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        body = metrics.render()
        times.append((time.perf_counter() - started) * 1000)
        assert b"impact_in_deliveries_total" in body
    return statistics.median(times)


def _count_ms(engine: Engine, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        with engine.connect() as conn:
            conn.exec_driver_sql("SELECT count(*) FROM impact_deliveries").scalar()
        times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)
    with scratch_postgres() as (engine, _url):
        started = time.perf_counter()
        run_sql(engine, SEED_ROWS, n=args.rows)
        attempts = run_sql(engine, SEED_ATTEMPTS)
        vacuum(engine)
        print(
            f"metrics scrape: {args.rows:,} rows, {attempts:,} attempts seeded in {time.perf_counter() - started:.1f} s"
        )
        baseline = _count_ms(engine, args.repeats)
        metrics = MetricsExposition(engine)
        first = _scrape_ms(metrics, 1)  # reads the whole attempt log once
        scrape = _scrape_ms(metrics, args.repeats)
        print(f"  count(*) baseline  {baseline:8.1f} ms")
        print(f"  first scrape       {first:8.1f} ms  ({first / baseline:.1f}x the baseline)")
        print(f"  later scrapes      {scrape:8.1f} ms  ({scrape / baseline:.1f}x the baseline)")


if __name__ == "__main__":
    main()
