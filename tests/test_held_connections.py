"""A delivery run's send threads keep a connection each for the run (PostgreSQL): a row's confirm and record cost
no pool checkout of their own, an idle connection is checked out again (with the pool's pre-ping) before use, and
a connection the server dropped is replaced, never reused."""

import threading
import time

import pytest
import sqlalchemy as sa
from sqlalchemy.exc import DBAPIError

from impactin_pipelines.domain.providers import Provider
from impactin_pipelines.services.extract import extract
from impactin_pipelines.store.held_connections import HeldConnections
from tests.support import add_events, add_integration, attempts, deliver, events, factory_for, statuses


def _backend_pid(conn: sa.Connection) -> int:
    return conn.exec_driver_sql("SELECT pg_backend_pid()").scalar_one()


def _checkouts(engine: sa.Engine) -> list[int]:
    """[all checkouts, those made on a run's send threads]"""
    counted = [0, 0]

    @sa.event.listens_for(engine, "checkout")
    def _count(*_: object) -> None:
        counted[0] += 1
        counted[1] += threading.current_thread().name.startswith("impactin-send")

    return counted


@pytest.mark.parametrize("provider", ["benevity", "goodera"])
def test_a_runs_rows_cost_no_checkout_each(pg_engine, sandbox, provider: str) -> None:
    """Goodera's rows also take a quota slot each: on the send thread's connection too."""
    sandbox.providers["goodera"].configure({"rate_limit": {"limit": 100_000, "window_s": 60}})
    add_integration(pg_engine, "acme", provider)
    add_events(pg_engine, events("acme", 60))
    extract(pg_engine, "acme", Provider(provider))
    counted = _checkouts(pg_engine)
    deliver(pg_engine, factory_for(pg_engine, sandbox, concurrency=3), provider)
    assert statuses(pg_engine, provider) == {"success": 60}
    assert len(attempts(pg_engine)) == 60
    # claims, heartbeats, releases, Goodera's token and one connection per send thread: 10 and 20 here; through the
    # pool, each row would add its own (a record, Goodera's slot), even on a send thread that confirms nothing
    assert counted[0] < 60, f"{counted[0]} checkouts for 60 rows"
    assert counted[1] < 30, f"{counted[1]} checkouts on send threads for 60 rows"  # 1 and 11 here


def test_each_thread_keeps_its_own_connection_in_autocommit(pg_engine) -> None:
    held = HeldConnections(pg_engine)
    seen: dict[str, set[int]] = {}

    def use(name: str) -> None:
        for _ in range(3):
            with held.connection() as conn:
                seen.setdefault(name, set()).add(_backend_pid(conn))
                assert conn.connection.dbapi_connection.autocommit is True  # type: ignore[union-attr]

    threads = [threading.Thread(target=use, args=(n,)) for n in ("a", "b")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(len(pids) == 1 for pids in seen.values()), seen
    assert seen["a"] != seen["b"]
    held.close()
    with pytest.raises(RuntimeError, match="closed"), held.connection():
        pass


def test_an_idle_connection_is_checked_out_again_and_a_dropped_one_replaced(pg_engine) -> None:
    held = HeldConnections(pg_engine, idle_ping_s=0.2)
    counted = _checkouts(pg_engine)
    server = sa.create_engine(pg_engine.url, poolclass=sa.NullPool)  # the administrator's own connections
    with held.connection() as conn:
        first = _backend_pid(conn)
    with held.connection() as conn:  # in use moments ago: no checkout, no ping
        assert _backend_pid(conn) == first
    assert counted[0] == 1

    with server.connect() as admin:  # the server drops it while it sits idle
        assert admin.exec_driver_sql(f"SELECT pg_terminate_backend({first})").scalar_one()
    time.sleep(0.3)
    with held.connection() as conn:  # idle too long: checked out again, and the pool's pre-ping replaces it
        second = _backend_pid(conn)
    assert second != first and counted[0] == 2

    with server.connect() as admin:  # dropped while fresh: the statement fails and the connection is discarded
        admin.exec_driver_sql(f"SELECT pg_terminate_backend({second})")
    with pytest.raises(DBAPIError), held.connection() as conn:
        _backend_pid(conn)
    with held.connection() as conn:
        assert _backend_pid(conn) not in (first, second)
    held.close()
    server.dispose()


def test_a_runs_claims_go_through_its_held_connection_and_commit_at_once(pg_engine) -> None:
    """A delivery run's drain loop claims batch after batch: on its own connection, without a checkout, pre-ping,
    BEGIN and COMMIT each; every claim is visible to the others as soon as it returns (autocommit)."""
    from impactin_pipelines.store.outbox import Outbox

    add_integration(pg_engine, "acme", "benevity")
    add_events(pg_engine, events("acme", 50))
    extract(pg_engine, "acme", Provider.BENEVITY)
    held = HeldConnections(pg_engine)
    outbox = Outbox(pg_engine, held=held)
    counted = _checkouts(pg_engine)
    taken: list[str] = []
    for i in range(5):
        batch = outbox.claim(claimant=f"run-{i}", provider="benevity", company_ids=["acme"], limit=10, lease_s=60)
        assert len(batch) == 10
        taken += [row.id for row in batch]
        with pg_engine.connect() as other:  # committed: another connection sees the claim
            claimed = other.exec_driver_sql(
                "SELECT count(*) FROM impact_deliveries WHERE claimed_by = %(c)s", {"c": f"run-{i}"}
            ).scalar_one()
            assert claimed == 10
    held.close()
    assert len(set(taken)) == 50  # each row went to one claim
    assert counted[0] == 1 + 5, counted  # the held connection once, and the five checks from `other`
