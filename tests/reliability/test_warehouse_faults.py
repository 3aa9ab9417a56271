"""The warehouse goes away in the middle of a run, for every provider, on both backends.

PostgreSQL: another session kills the run's connections with `pg_terminate_backend` at the moment the run records
its 4th attempt, so the kill always lands inside a transaction; every other connection of the run dies with it.
SQLite has no server to drop connections: its equivalent is the database file locked by another writer for longer
than the busy timeout, so every write of the run fails with "database is locked" (the busy timeout, 60 s in
production, is scaled down to 200 ms here like every delay in the tests). In both cases sends already went out
whose records could not be written.

What must hold: the run fails loudly (rows it could not record are reported, or the run raises) and sends nothing
more once it cannot record (it used to send every row it had claimed, unrecorded); no row is lost or stored twice;
the rows it left behind come back when released or when their (short) lease lapses, and a plain re-run settles them;
only requests in flight at the fault go out again, with the same idempotency key.
"""

import sqlite3
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.engine import Engine
from sqlalchemy.engine.url import make_url

from impactin_pipelines.domain.providers import Provider
from impactin_pipelines.domain.statuses import RowOutcome
from impactin_pipelines.services.deliver import DeliveryRun
from impactin_pipelines.store.engine import make_engine
from tests.reliability.ledger import accepted_count, held_rows, make_factory, read, seed, settle, when
from tests.support import deliver, rows

BUSY_TIMEOUT_MS = 200
LOCK_HELD_S = 1.0
KILL_AT_ATTEMPT = 4
CONCURRENCY = 4
LEASE_S = 1.5  # rows the broken run could not record or release come back after this


@dataclass
class Fault:
    """A run's warehouse, and the record of the fault done to it."""

    engine: Engine
    hits: list[str] = field(default_factory=list)


def _postgres_victim(warehouse_url: str) -> Iterator[Fault]:
    app = f"impactin-victim-{uuid.uuid4().hex[:8]}"
    url = make_url(warehouse_url).update_query_dict({"application_name": app})
    victim = make_engine(url.render_as_string(hide_password=False))
    admin = sa.create_engine(make_url(warehouse_url), isolation_level="AUTOCOMMIT")
    fault = Fault(victim)
    lock = threading.Lock()
    recorded = [0]
    kill = sa.text(
        "SELECT count(*) FROM (SELECT pg_terminate_backend(pid, 5000) FROM pg_stat_activity "
        "WHERE application_name = :app) AS killed"
    )

    @event.listens_for(victim, "before_cursor_execute")
    def _terminate(conn, cursor, statement, parameters, context, executemany):
        # the statement that records an attempt (on PostgreSQL one statement settles the row and inserts it)
        if "INSERT INTO IMPACT_DELIVERY_ATTEMPTS" not in statement.upper():
            return
        with lock:
            recorded[0] += 1
            if recorded[0] != KILL_AT_ATTEMPT:
                return
            with admin.connect() as other:
                killed = other.execute(kill, {"app": app}).scalar_one()
            fault.hits.append(f"terminated {killed} connection(s) at attempt record {recorded[0]}")

    yield fault
    victim.dispose()
    admin.dispose()


def _sqlite_victim(warehouse_url: str, sandbox, case) -> Iterator[Fault]:
    victim = make_engine(warehouse_url)

    @event.listens_for(victim, "connect")
    def _short_busy_timeout(dbapi_connection, _record):
        dbapi_connection.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")

    fault = Fault(victim)
    path = make_url(warehouse_url).database
    assert path is not None

    def hold_the_write_lock() -> None:
        other = sqlite3.connect(path, timeout=30, isolation_level=None)
        other.execute("BEGIN IMMEDIATE")
        fault.hits.append(f"another writer holds the database for {LOCK_HELD_S} s")
        time.sleep(LOCK_HELD_S)
        other.execute("COMMIT")
        other.close()

    with when(lambda: accepted_count(sandbox, case) >= 4, hold_the_write_lock):
        yield fault
    victim.dispose()


def test_warehouse_connection_dropped_mid_run(engine, warehouse_url, sandbox, case) -> None:
    n = 16
    seed(engine, case, n, sandbox=sandbox)
    sandbox.providers[case.provider].configure({"latency_ms": 40})
    if warehouse_url.startswith("sqlite"):
        victims = _sqlite_victim(warehouse_url, sandbox, case)
    else:
        victims = _postgres_victim(warehouse_url)
    fault = next(victims)
    factory = make_factory(fault.engine, sandbox, case, lease_s=LEASE_S, concurrency=CONCURRENCY)
    run = DeliveryRun(fault.engine, factory, provider=Provider(case.provider), company_ids=None)
    crashed: Exception | None = None
    try:
        run.run()
    except Exception as exc:  # the warehouse was gone when the run needed it: the run fails
        crashed = exc
    finally:
        factory.close()
        next(victims, None)
    assert fault.hits, "the fault never happened"
    assert crashed is not None or run.report.errors, "the run did not notice it could not record deliveries"
    unsettled = {r["delivery_id"] for r in rows(engine) if r["status"] != "success"} | set(held_rows(engine))
    # rows whose request went out but whose outcome could not be written (the rest were never sent)
    in_flight = {r.row.delivery_id for r in run.report.rows.values() if r.status is RowOutcome.UNRECORDED}
    if crashed is not None:  # the report may not know every row the run had in hand
        in_flight = unsettled
    print(
        f"\nfault: {'; '.join(fault.hits)}; run raised {type(crashed).__name__ if crashed else None}, "
        f"{len(in_flight)} sent but not recorded, {len(unsettled)} rows left unsettled"
    )

    plain = make_factory(engine, sandbox, case, warm=False)
    try:
        runs = 1 + settle(engine, lambda _: deliver(engine, plain, case.provider), max_runs=3)
    finally:
        plain.close()
    ledger = read(engine, sandbox, case, "warehouse dropped mid-run", runs=runs)
    ledger.check(may_repeat=in_flight, unrecorded=unsettled)
    # in flight at the fault, or sent and not yet written: at most twice the concurrency (docs/guarantees.md)
    assert sum(ledger.duplicates.values()) <= 2 * CONCURRENCY, f"more repeats than can be unwritten: {ledger}"
