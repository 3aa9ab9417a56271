"""Issue 3 item 11: Goodera quota use. Deliver 3x the limit's worth of events at a scaled-down limit (default 20 per
5 s) with two concurrent `impactin run`s (each its own process, through Dagster), against the fake Goodera in its own
process. Measured on the provider's side, from the fake's arrival log:

- achieved rate / allowed rate, over the span from the first to the last admitted request (goal >= 0.95);
- 429 responses (goal 0) and the most requests any sliding window held (must not exceed the limit).

`--postgres` puts the warehouse, and so the shared bucket, in a throwaway PostgreSQL database instead of SQLite.
"""

import argparse
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import sqlalchemy as sa
from sqlalchemy.engine.url import make_url

from benchmarks.common import SandboxProcess, scratch_warehouse, seed
from impactin_pipelines.providers.goodera.fake import max_in_window
from impactin_pipelines.security.crypto import generate_key
from impactin_pipelines.store import migrations
from impactin_pipelines.store.engine import make_engine

ADMIN_URL = os.environ.get("IMPACTIN_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres")
RUN_TIMEOUT_S = 300


@contextmanager
def postgres_warehouse() -> Iterator[str]:
    admin = sa.create_engine(make_url(ADMIN_URL), isolation_level="AUTOCOMMIT")
    name = f"impactin_bench_{uuid.uuid4().hex[:8]}"
    with admin.connect() as conn:
        conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
    try:
        yield make_url(ADMIN_URL).set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.dispose()


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--limit", type=int, default=20, help="requests per window (scaled down from 100)")
    parser.add_argument("--window-s", type=float, default=5.0, help="window in seconds (scaled down from 60)")
    parser.add_argument("--multiple", type=int, default=3, help="events to deliver, as a multiple of the limit")
    parser.add_argument("--runs", type=int, default=2, help="concurrent `impactin run` processes")
    parser.add_argument("--postgres", action="store_true", help="PostgreSQL warehouse and bucket (default SQLite)")
    args = parser.parse_args(argv)

    companies = [f"quota{c:02d}" for c in range(args.runs)]
    total = args.limit * args.multiple
    per_company = -(-total // len(companies))
    with (
        scratch_warehouse() as (sqlite_engine, state),
        SandboxProcess() as sandbox,
        postgres_warehouse() if args.postgres else _nothing() as pg_url,
    ):
        url = pg_url or sqlite_engine.url.render_as_string(hide_password=False)
        engine = make_engine(url)
        migrations.upgrade(engine)
        seeded = seed(engine, "goodera", companies, per_company)
        sandbox.configure("goodera", {"rate_limit": {"limit": args.limit, "window_s": args.window_s}})
        env = {k: v for k, v in os.environ.items() if not k.startswith(("BENEVITY_", "GOODERA_", "WORKDAY_"))}
        env.update(sandbox.env)
        env.update(
            IMPACTIN_WAREHOUSE_URL=url,
            IMPACTIN_STATE_DIR=str(state),
            IMPACTIN_ENCRYPTION_KEY=generate_key(),
            GOODERA_RATE_LIMIT=f"{args.limit}/{args.window_s:g}s",
        )
        started = time.perf_counter()
        runs = [
            subprocess.Popen(
                [sys.executable, "-m", "impactin_pipelines.cli", "run", "--provider", "goodera", "--company", c],
                env={**env, "DAGSTER_HOME": str(state / f"dagster_home_{c}")},
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                text=True,
            )
            for c in companies
        ]
        failures = []
        for run in runs:
            _, err = run.communicate(timeout=RUN_TIMEOUT_S)
            if run.returncode != 0:
                failures.append(err[-2000:])
        wall_s = time.perf_counter() - started
        seen = sandbox.requests_seen("goodera")
        engine.dispose()

    admitted = sorted(seen["admitted_at"])
    rate_limited = int(seen["rate_limited"])
    accepted = len(seen["accepted"])
    span = admitted[-1] - admitted[0] if len(admitted) > 1 else float("nan")
    achieved = (len(admitted) - 1) / span if span and span == span else 0.0
    allowed = args.limit / args.window_s
    ratio = achieved / allowed
    busiest = max_in_window(admitted, args.window_s)
    backend = "PostgreSQL" if args.postgres else "SQLite"
    print(
        f"Goodera quota: {args.runs} concurrent `impactin run`s, {seeded} events "
        f"({args.multiple} x {args.limit}/{args.window_s:g}s), bucket in {backend}"
    )
    print(f"  accepted by the fake: {accepted}/{seeded}   wall time incl. process start-up: {wall_s:.1f} s")
    print(f"  achieved rate: {achieved:.3f}/s   allowed: {allowed:.3f}/s   ratio: {ratio:.3f}   (goal >= 0.95)")
    print(f"  429 responses: {rate_limited}   (goal 0)")
    print(f"  busiest {args.window_s:g} s window: {busiest} requests   (limit {args.limit})")
    for failure in failures:
        print(f"  a run failed:\n{failure}", file=sys.stderr)
    ok = not failures and accepted == seeded and rate_limited == 0 and busiest <= args.limit and ratio >= 0.95
    print(f"  {'all goals met' if ok else 'GOAL MISSED'}")
    return {"ratio": ratio, "rate_limited": rate_limited, "busiest_window": busiest, "accepted": accepted}


@contextmanager
def _nothing() -> Iterator[None]:
    yield None


if __name__ == "__main__":
    result = main()
    sys.exit(0 if result["rate_limited"] == 0 and result["ratio"] >= 0.95 else 1)
