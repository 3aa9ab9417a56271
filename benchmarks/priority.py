"""Priority: an urgent event staged while a night of 10,000 Benevity rows is being delivered (20 ms provider latency)
goes out in the run's next claim batch. Measured: how many rows went out between staging it and sending it, against
the bound of one claim batch plus the rows the run already had in flight (twice the concurrency); as the baseline, the
rows a normal event staged at the same moment waits behind (everything still pending).
"""

import argparse
import logging
import threading
import time
from datetime import UTC, datetime

import sqlalchemy as sa

from benchmarks.common import SandboxProcess, scratch_warehouse, seed
from impactin_pipelines.connectors.registry import ConnectorFactory
from impactin_pipelines.domain.providers import Provider
from impactin_pipelines.providers.env import ProviderEnv
from impactin_pipelines.services.deliver import DeliveryRun
from impactin_pipelines.services.extract import extract
from impactin_pipelines.settings import DeliverySettings
from impactin_pipelines.store.schema import impact_deliveries as d
from impactin_pipelines.store.schema import impact_events

COMPANY = "night"


def _delivered(engine: sa.Engine) -> int:
    with engine.connect() as conn:
        return conn.execute(sa.select(sa.func.count()).where(d.c.status == "success")).scalar_one()


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=10_000)
    parser.add_argument("--latency-ms", type=float, default=20)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--after", type=int, default=2_000, help="stage the urgent event once this many went out")
    args = parser.parse_args(argv)
    logging.getLogger("impactin").setLevel(logging.WARNING)

    with scratch_warehouse() as (engine, _), SandboxProcess() as sandbox:
        seed(engine, "benevity", [COMPANY], args.rows)
        extract(engine, COMPANY, Provider.BENEVITY)
        sandbox.configure("benevity", {"latency_ms": args.latency_ms})
        settings = DeliverySettings(concurrency=args.concurrency)
        factory = ConnectorFactory(engine, env=ProviderEnv.from_env(sandbox.env), settings=settings)
        run = DeliveryRun(engine, factory, provider=Provider.BENEVITY, company_ids=[COMPANY])
        night = threading.Thread(target=run.run)
        night.start()
        while _delivered(engine) < args.after:
            time.sleep(0.05)
        with engine.begin() as conn:
            conn.execute(
                impact_events.insert().values(
                    event_id="evt_urgent",
                    company_id=COMPANY,
                    user_id="user_1",
                    event_type="volunteer_hours",
                    occurred_at="2025-11-14T10:00:00Z",
                    value="1",
                    unit="hours",
                    metadata={"priority": "urgent"},
                )
            )
        staged_at = datetime.now(UTC)
        sent_before = _delivered(engine)
        extract(engine, COMPANY, Provider.BENEVITY)
        night.join()
        factory.close()
        with engine.connect() as conn:
            urgent_at = conn.execute(sa.select(d.c.delivered_at).where(d.c.event_id == "evt_urgent")).scalar_one()
            rank = conn.execute(
                sa.select(sa.func.count()).where(d.c.status == "success", d.c.delivered_at < urgent_at)
            ).scalar_one()
        assert _delivered(engine) == args.rows + 1

    between = rank - sent_before
    bound = settings.claim_batch + 2 * args.concurrency
    normal_wait = args.rows - sent_before
    waited_s = (urgent_at - staged_at).total_seconds()
    print(f"priority: an urgent event staged during a night of {args.rows:,} Benevity rows")
    print(
        f"  sent after {between} more rows ({waited_s:.1f} s); bound: one claim batch + in flight = {bound} "
        f"({between / bound:.2f} of it); a normal event would wait behind {normal_wait:,} rows "
        f"({normal_wait / max(between, 1):.0f}x longer)"
    )
    return {"urgent_rows_between": between, "urgent_bound": bound, "urgent_wait_s": waited_s}


if __name__ == "__main__":
    main()
