"""A throwaway PostgreSQL database for the benchmarks that need real scale, dropped however the benchmark ends."""

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import sqlalchemy as sa
from sqlalchemy.engine import Engine
from sqlalchemy.engine.url import make_url

from impactin_pipelines.store import migrations
from impactin_pipelines.store.engine import make_engine

ADMIN_URL = os.environ.get("IMPACTIN_BENCH_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres")

# The events the benchmarks stage, written by the database itself so seeding a million costs seconds.
SEED_EVENTS = """
INSERT INTO impact_events (event_id, company_id, user_id, event_type, occurred_at, value, unit, outcome_scores,
                           metadata)
SELECT 'evt_' || lpad(g::text, 8, '0'), %(company)s, 'user_' || (g %% 97), 'volunteer_hours',
       '2025-11-14T10:00:00+00:00', '2.5', 'hours', '{"community_engagement": 0.5}', '{"program": "bench"}'
FROM generate_series(1, %(n)s) AS g
"""

# `events` events for each of `companies` companies, named PREFIX + the company's number in `digits` digits.
SEED_COMPANY_EVENTS = """
INSERT INTO impact_events (event_id, company_id, user_id, event_type, occurred_at, value, unit, outcome_scores,
                           metadata)
SELECT 'evt_' || c || '_' || lpad(e::text, 4, '0'), %(prefix)s || lpad(c::text, %(digits)s, '0'),
       'user_' || (e %% 97), 'volunteer_hours', '2025-11-14T10:00:00+00:00', '2.5', 'hours',
       '{"community_engagement": 0.5}', '{"program": "bench"}'
FROM generate_series(1, %(companies)s) AS c, generate_series(1, %(events)s) AS e
"""


def company_ids(prefix: str, digits: int, companies: int) -> list[str]:
    """The company ids `SEED_COMPANY_EVENTS` writes, in order."""
    return [f"{prefix}{c:0{digits}d}" for c in range(1, companies + 1)]


@contextmanager
def scratch_postgres() -> Iterator[tuple[Engine, str]]:
    """A migrated, empty database of its own; yields its engine and URL."""
    admin = sa.create_engine(make_url(ADMIN_URL), isolation_level="AUTOCOMMIT")
    name = f"impactin_bench_{uuid.uuid4().hex[:10]}"
    with admin.connect() as conn:
        conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
    url = make_url(ADMIN_URL).set(database=name).render_as_string(hide_password=False)
    engine = make_engine(url)
    try:
        migrations.upgrade(engine)
        yield engine, url
    finally:
        engine.dispose()
        with admin.connect() as conn:
            conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.dispose()


def run_sql(engine: Engine, statement: str, **params: object) -> int:
    """One statement in its own transaction; returns its row count."""
    with engine.begin() as conn:
        return conn.exec_driver_sql(statement, params or None).rowcount  # type: ignore[arg-type]


def vacuum(engine: Engine) -> None:
    with engine.connect() as conn:
        conn.execution_options(isolation_level="AUTOCOMMIT").exec_driver_sql("VACUUM ANALYZE")
