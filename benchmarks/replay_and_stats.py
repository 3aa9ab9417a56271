"""Issue 4's benchmarks, each against a baseline measured in the same run.

Replay: N failed Benevity rows replayed with `replay_all_failed` (pages of 100, each a claimed DeliveryRun,
attempts recorded), against the same stored payloads sent one request at a time by the same connector with
nothing recorded. The sandbox adds latency, so the ratio shows what claimed, concurrent pages buy.

Stats: the analyst's tables on pandas (`services.analytics.analyse`: one read of the rows, every table, p50/p95) over
100,000 deliveries on SQLite and on PostgreSQL, against one `SELECT status, count(*) ... GROUP BY status` over the
same rows (the cheapest full pass the database can make) and the spec's `/stats` query (`delivery_stats`). Goal:
the analyst's tables in under a second.
"""

import argparse
import logging
import time
import uuid
from datetime import UTC, datetime, timedelta

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from benchmarks.common import SandboxProcess, scratch_warehouse, seed, send_sequentially
from benchmarks.pg import scratch_postgres, vacuum
from impactin_pipelines.connectors.registry import ConnectorFactory
from impactin_pipelines.domain.providers import Provider
from impactin_pipelines.providers.env import ProviderEnv
from impactin_pipelines.services.analytics import analyse
from impactin_pipelines.services.extract import extract
from impactin_pipelines.services.replay import replay_all_failed
from impactin_pipelines.services.stats import delivery_stats
from impactin_pipelines.settings import DeliverySettings
from impactin_pipelines.store.schema import impact_deliveries as d


def _best_of(n: int, fn) -> float:  # type: ignore[no-untyped-def]
    times = []
    for _ in range(n):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return min(times)


def _replay(failed: int, latency_ms: float) -> dict[str, float]:
    with scratch_warehouse() as (engine, _), SandboxProcess() as sandbox:
        seed(engine, "benevity", ["acme"], failed)
        extract(engine, "acme", Provider.BENEVITY)
        with engine.begin() as conn:
            conn.execute(sa.update(d).values(status="failed", error_kind="rejected", last_error="HTTP 422"))
            payloads = [dict(r._mapping) for r in conn.execute(sa.select(d)).all()]
        sandbox.configure("benevity", {"latency_ms": latency_ms})
        factory = ConnectorFactory(engine, env=ProviderEnv.from_env(sandbox.env), settings=DeliverySettings())
        baseline_s = send_sequentially(factory.connector("acme", Provider.BENEVITY), payloads)
        started = time.perf_counter()
        results = replay_all_failed(engine, factory, company_id="acme")
        replay_s = time.perf_counter() - started
        factory.close()
        assert len(results) == len(payloads) and all(r.success for r in results)
    replay_rate, baseline_rate = len(results) / replay_s, len(payloads) / baseline_s
    print(f"replay_and_stats: {len(results)} failed rows replayed, {latency_ms:g} ms sandbox latency")
    print(f"  sequential baseline:            {baseline_rate:8.1f} rows/s  ({baseline_s:.2f} s)")
    print(f"  replay_all_failed:              {replay_rate:8.1f} rows/s  ({replay_s:.2f} s)")
    print(f"  ratio replay / baseline:        {replay_rate / baseline_rate:8.2f}x")
    return {"replay_ratio": replay_rate / baseline_rate}


def _stats_rows(engine: Engine, n: int) -> None:
    """n deliveries over 30 days, 200 companies, 3 providers: 90 % delivered with latencies up to ~17 min, the rest
    failed, retrying or pending with their error kinds."""
    start = datetime(2026, 1, 1, tzinfo=UTC)
    providers = ("benevity", "goodera", "workday")
    kinds = ("rejected", "exhausted", "config", "invalid_event")
    batch = []
    with engine.begin() as conn:
        for i in range(n):
            created = start + timedelta(seconds=i * 2_592_000 // n)
            row = {
                "id": str(uuid.UUID(int=i)),
                "company_id": f"c{i % 200:03d}",
                "provider": providers[i % 3],
                "event_id": f"evt_{i:07d}",
                "delivery_id": str(uuid.UUID(int=n + i)),
                "status": "success",
                "error_kind": None,
                "attempt_count": 1 + i % 3,
                "delivered_at": created + timedelta(seconds=i % 997),
                "created_at": created,
                "updated_at": created,
            }
            if i % 10 == 0:
                row.update(status="failed", error_kind=kinds[i // 10 % 4], delivered_at=None)
            elif i % 50 == 1:
                row.update(status="retrying", error_kind="transient", delivered_at=None)
            elif i % 50 == 3:
                row.update(status="pending", attempt_count=0, delivered_at=None)
            batch.append(row)
            if len(batch) == 10_000:
                conn.execute(d.insert(), batch)
                batch = []
        if batch:
            conn.execute(d.insert(), batch)


def _stats_timings(engine: Engine, n: int) -> tuple[float, float, float]:
    """(count GROUP BY, /stats, pandas tables) in seconds, best of 3 each."""
    _stats_rows(engine, n)
    if engine.dialect.name == "postgresql":
        vacuum(engine)

    def count_by_status() -> None:
        with engine.connect() as conn:
            conn.execute(sa.select(d.c.status, sa.func.count()).group_by(d.c.status)).all()

    count_s = _best_of(3, count_by_status)
    basic_s = _best_of(3, lambda: delivery_stats(engine))
    tables_s = _best_of(3, lambda: analyse(engine))
    return count_s, basic_s, tables_s


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--failed", type=int, default=500)
    parser.add_argument("--latency-ms", type=float, default=20)
    parser.add_argument("--stats-rows", type=int, default=100_000)
    parser.add_argument("--stats-only", action="store_true", help="Leave out the replay benchmark.")
    args = parser.parse_args(argv)
    logging.getLogger("impactin").setLevel(logging.ERROR)

    figures: dict[str, float] = {}
    if not args.stats_only:
        figures.update(_replay(args.failed, args.latency_ms))
    timings = {}
    with scratch_warehouse() as (engine, _):
        timings["SQLite"] = _stats_timings(engine, args.stats_rows)
    with scratch_postgres() as (engine, _):
        timings["PostgreSQL"] = _stats_timings(engine, args.stats_rows)

    for backend, (count_s, basic_s, tables_s) in timings.items():
        verdict = "under" if tables_s < 1 else "OVER"
        print(
            f"  stats over {args.stats_rows} rows ({backend}): count GROUP BY {count_s * 1000:.0f} ms, /stats "
            f"{basic_s * 1000:.0f} ms, pandas tables {tables_s * 1000:.0f} ms ({verdict} 1 s); "
            f"ratio tables / count {tables_s / count_s:.1f}x"
        )
        figures[f"stats_{backend.lower()}_s"] = tables_s
        figures[f"stats_{backend.lower()}_ratio"] = tables_s / count_s
    return figures


if __name__ == "__main__":
    main()
