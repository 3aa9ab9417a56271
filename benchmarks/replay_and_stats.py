"""Issue 4's benchmarks, each against a baseline measured in the same run.

Replay: N failed Benevity rows replayed with `replay_all_failed` (pages of 100, each a claimed DeliveryRun,
attempts recorded), against the same stored payloads sent one request at a time by the same connector with
nothing recorded. The sandbox adds latency, so the ratio shows what claimed, concurrent pages buy.

Stats: `full_stats` (every section, portable p50/p95) against the spec's `/stats` query (`delivery_stats`) over
the same rows, so the ratio is the price of the analyst's view.
"""

import argparse
import logging
import time
from datetime import UTC, datetime, timedelta

import sqlalchemy as sa

from benchmarks.common import SandboxProcess, scratch_warehouse, seed, send_sequentially
from impactin_pipelines.connectors.registry import ConnectorFactory
from impactin_pipelines.domain.providers import Provider
from impactin_pipelines.providers.env import ProviderEnv
from impactin_pipelines.services.extract import extract
from impactin_pipelines.services.replay import replay_all_failed
from impactin_pipelines.services.stats import delivery_stats, full_stats
from impactin_pipelines.settings import DeliverySettings
from impactin_pipelines.store.schema import impact_deliveries as d


def _best_of(n: int, fn) -> float:  # type: ignore[no-untyped-def]
    times = []
    for _ in range(n):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return min(times)


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--failed", type=int, default=500)
    parser.add_argument("--latency-ms", type=float, default=20)
    parser.add_argument("--stats-rows", type=int, default=50_000)
    args = parser.parse_args(argv)
    logging.getLogger("impactin").setLevel(logging.ERROR)

    with scratch_warehouse() as (engine, _), SandboxProcess() as sandbox:
        seed(engine, "benevity", ["acme"], args.failed)
        extract(engine, "acme", Provider.BENEVITY)
        with engine.begin() as conn:
            conn.execute(sa.update(d).values(status="failed", error_kind="rejected", last_error="HTTP 422"))
            payloads = [dict(r._mapping) for r in conn.execute(sa.select(d)).all()]
        sandbox.configure("benevity", {"latency_ms": args.latency_ms})
        factory = ConnectorFactory(engine, env=ProviderEnv.from_env(sandbox.env), settings=DeliverySettings())
        baseline_s = send_sequentially(factory.connector("acme", Provider.BENEVITY), payloads)
        started = time.perf_counter()
        results = replay_all_failed(engine, factory, company_id="acme")
        replay_s = time.perf_counter() - started
        factory.close()
        assert len(results) == len(payloads) and all(r.success for r in results)

    with scratch_warehouse() as (engine, _):
        seed(engine, "benevity", [f"c{i:03d}" for i in range(100)], args.stats_rows // 100)
        for i in range(100):
            extract(engine, f"c{i:03d}", Provider.BENEVITY)
        start = datetime(2026, 1, 1, tzinfo=UTC)
        with engine.begin() as conn:  # spread over 30 days, 90 % delivered with varied latency
            ids = conn.execute(sa.select(d.c.id).order_by(d.c.id)).scalars().all()
            for n, ident in enumerate(ids):
                created = start + timedelta(minutes=n * 43200 // len(ids))
                values = {"created_at": created}
                if n % 10:
                    values.update(status="success", delivered_at=created + timedelta(seconds=n % 997))
                else:
                    values.update(status="failed", error_kind="rejected")
                conn.execute(sa.update(d).where(d.c.id == ident).values(**values))
        basic_s = _best_of(3, lambda: delivery_stats(engine))
        full_s = _best_of(3, lambda: full_stats(engine))

    replay_rate, baseline_rate = len(results) / replay_s, len(payloads) / baseline_s
    print(f"replay_and_stats: {len(results)} failed rows replayed, {args.latency_ms:g} ms sandbox latency")
    print(f"  sequential baseline:            {baseline_rate:8.1f} rows/s  ({baseline_s:.2f} s)")
    print(f"  replay_all_failed:              {replay_rate:8.1f} rows/s  ({replay_s:.2f} s)")
    print(f"  ratio replay / baseline:        {replay_rate / baseline_rate:8.2f}x")
    print(f"  stats over {args.stats_rows} rows (SQLite): /stats {basic_s * 1000:.0f} ms, full {full_s * 1000:.0f} ms")
    print(f"  ratio full_stats / delivery_stats: {full_s / basic_s:6.2f}x")
    return {"replay_ratio": replay_rate / baseline_rate, "stats_ratio": full_s / basic_s}


if __name__ == "__main__":
    main()
