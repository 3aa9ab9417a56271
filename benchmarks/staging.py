"""Staging at scale: N events of one company into the Benevity outbox on PostgreSQL with `extract`, against one
`INSERT … SELECT` that writes the same rows (payload built and hashed by the database) into the same empty,
indexed table. Each extraction runs in a process of its own so its peak RSS is its own, with its worker processes
counted as many times as there are workers (the largest worker's peak each): flat memory means about the same peak
at 100k and at 1M events.
"""

import argparse
import json
import logging
import os
import resource
import subprocess
import sys
import time

import sqlalchemy as sa

from benchmarks.pg import SEED_EVENTS, run_sql, scratch_postgres, vacuum
from impactin_pipelines.domain.providers import Provider
from impactin_pipelines.services.extract import MAX_WORKERS, extract
from impactin_pipelines.store.engine import make_engine
from impactin_pipelines.store.schema import company_integrations

COMPANY = "acme"

# The same rows extract writes, built by the database: the cost of staging without leaving it.
INSERT_SELECT = """
INSERT INTO impact_deliveries (id, company_id, provider, event_id, delivery_id, payload, payload_hash, status,
                               attempt_count, run_count, created_at, updated_at)
SELECT impactin_new_row_id(), company_id, 'benevity', event_id, gen_random_uuid()::text, body,
       encode(sha256(convert_to(body, 'UTF8')), 'hex'), 'pending', 0, 0, now(), now()
FROM (
    SELECT company_id, event_id, json_build_object(
        'schema_version', 'v1.0',
        'event', json_build_object(
            'id', event_id, 'type', event_type, 'timestamp', occurred_at,
            'user', json_build_object('external_id', user_id, 'company_id', company_id),
            'impact', json_build_object('value', value::numeric, 'unit', unit, 'metadata', metadata::json))
    )::text AS body
    FROM impact_events
) AS mapped
ON CONFLICT DO NOTHING
"""


def _child(url: str) -> None:
    """Run one extraction and print its time, rows and peak RSS (this process plus its workers) as JSON."""
    logging.getLogger("impactin").setLevel(logging.ERROR)
    engine = make_engine(url)
    started = time.perf_counter()
    report = extract(engine, COMPANY, Provider.BENEVITY)
    seconds = time.perf_counter() - started
    engine.dispose()
    own_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    worker_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024  # the largest worker's peak
    peak_mb = own_mb + worker_mb * min(MAX_WORKERS, os.cpu_count() or 1)
    print(json.dumps({"seconds": seconds, "rows": report.new_rows, "peak_rss_mb": peak_mb, "main_rss_mb": own_mb}))


def _measure(n: int) -> dict[str, float]:
    with scratch_postgres() as (engine, url):
        with engine.begin() as conn:
            conn.execute(company_integrations.insert().values(company_id=COMPANY, provider="benevity", enabled=True))
        run_sql(engine, SEED_EVENTS, company=COMPANY, n=n)
        vacuum(engine)

        started = time.perf_counter()
        baseline_rows = run_sql(engine, INSERT_SELECT)
        baseline_s = time.perf_counter() - started
        assert baseline_rows == n, baseline_rows
        run_sql(engine, "TRUNCATE impact_deliveries CASCADE")
        vacuum(engine)

        out = subprocess.run(
            [sys.executable, "-m", "benchmarks.staging", "--child", url], check=True, capture_output=True, text=True
        ).stdout
        child = json.loads(out.strip().splitlines()[-1])
        assert child["rows"] == n, child
        with engine.connect() as conn:
            stored = conn.execute(sa.text("SELECT count(*) FROM impact_deliveries WHERE status = 'pending'")).scalar()
        assert stored == n, stored
    return {"baseline_s": baseline_s, **child}


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        _child(args.child)
        return {}

    results: dict[str, float] = {}
    print("staging: events of one company into the Benevity outbox on PostgreSQL")
    for n in args.sizes:
        m = _measure(n)
        ratio = m["seconds"] / m["baseline_s"]
        print(
            f"  {n:>9,} events: extract {m['seconds']:6.1f} s, one INSERT…SELECT {m['baseline_s']:6.1f} s, "
            f"ratio {ratio:.2f}x, extract peak RSS {m['peak_rss_mb']:.0f} MB with its workers "
            f"({m['main_rss_mb']:.0f} MB main process)"
        )
        results.update({f"extract_{n}_s": m["seconds"], f"baseline_{n}_s": m["baseline_s"]})
        results[f"peak_rss_{n}_mb"] = m["peak_rss_mb"]
    return results


if __name__ == "__main__":
    main()
