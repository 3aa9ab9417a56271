"""A run's settlements are written in batches by one thread: each row's answer is its own, a row that is not there
does not sink the batch, a deadlock is written again, and a run commits far fewer times than it has rows."""

import threading
import time
from datetime import timedelta

import pytest
import sqlalchemy as sa

from impactin_pipelines.connectors.base import AttemptResult
from impactin_pipelines.domain.providers import Provider
from impactin_pipelines.domain.statuses import AttemptOutcome, DeliveryStatus, RowOutcome
from impactin_pipelines.services.extract import extract
from impactin_pipelines.services.settlement_writer import SettlementWriter
from impactin_pipelines.store.outbox import Outbox, Recording, Settlement, utcnow
from tests.support import add_events, add_integration, attempts, deliver, events, factory_for, rows


def _claimed(engine, n: int, claimant: str = "writer-test"):
    add_integration(engine, "acme", "benevity")
    add_events(engine, events("acme", n))
    extract(engine, "acme", Provider.BENEVITY)
    return Outbox(engine).claim(claimant=claimant, provider="benevity", company_ids=None, limit=n, lease_s=60)


def _recording(row, claimant: str = "writer-test", *, delivery_id: str | None = None) -> Recording:
    started = utcnow()
    attempt = AttemptResult(AttemptOutcome.SUCCESS, started, started + timedelta(milliseconds=5), http_status=201)
    return Recording(
        claimant,
        row.claim_version,
        delivery_id or row.delivery_id,
        "run-1",
        attempt,
        Settlement(DeliveryStatus.SUCCESS),
        utcnow(),
    )


def test_a_batch_answers_each_row_in_the_order_given_and_a_missing_row_sinks_only_itself(engine) -> None:
    claimed = sorted(_claimed(engine, 3), key=lambda r: r.delivery_id, reverse=True)  # not the order rows lock in
    lost = claimed[1]
    recordings = [
        _recording(claimed[0]),
        _recording(lost, claimant="somebody-else"),  # its claim is not ours: attempt recorded, row not settled
        _recording(claimed[2], delivery_id="no-such-delivery"),
        _recording(claimed[2]),
    ]
    results = Outbox(engine).record_many(recordings)

    assert results[0] == (1, True) and results[1] == (-1, False) and results[3] == (1, True)
    assert isinstance(results[2], LookupError) and "'no-such-delivery'" in str(results[2])
    stored = {r["delivery_id"]: r for r in rows(engine)}
    assert (
        stored[claimed[0].delivery_id]["status"] == "success" and stored[claimed[2].delivery_id]["status"] == "success"
    )
    assert stored[lost.delivery_id]["status"] == "pending" and stored[lost.delivery_id]["attempt_count"] == 1
    assert len(attempts(engine)) == 3


def test_a_batch_stores_every_text_and_time_exactly_as_given(engine) -> None:
    """Request bodies, provider replies and errors go into the batch's one parameter and come out unchanged, whatever
    they hold (quotes, backslashes, escapes, line separators, characters outside the BMP), and so do times."""
    first, second = _claimed(engine, 2)
    odd = 'caf\u00e9 "quoted" \\ back\\slash \\u0041 \n\t\r \u2028 \U0001f600 <x a="1">&amp;</x> \' end'
    started = utcnow().replace(microsecond=123456)
    attempt = AttemptResult(
        AttemptOutcome.PERMANENT,
        started,
        started + timedelta(microseconds=4321),
        http_status=422,
        error=odd + " error",
        response_body=odd + " reply",
        request_body=odd + " request",
    )
    failed = Settlement(DeliveryStatus.FAILED, last_error=odd + " last", provider_response=odd + " response")
    plain = _recording(second)
    assert Outbox(engine).record_many(
        [Recording("writer-test", first.claim_version, first.delivery_id, "run-1", attempt, failed, started), plain]
    ) == [(1, True), (1, True)]
    stored = {r["delivery_id"]: r for r in rows(engine)}[first.delivery_id]
    assert (stored["last_error"], stored["provider_response"]) == (odd + " last", odd + " response")
    [written] = attempts(engine, first.delivery_id)
    assert (written["error"], written["response_excerpt"], written["request_body"]) == (
        odd + " error",
        odd + " reply",
        odd + " request",
    )
    assert written["started_at"].replace(tzinfo=None) == started.replace(tzinfo=None)
    assert written["duration_ms"] == 4


def test_the_writer_batches_what_arrives_together_and_answers_every_thread(engine) -> None:
    claimed = _claimed(engine, 40)
    answers: dict[str, tuple[int, bool]] = {}
    with SettlementWriter(Outbox(engine), linger_s=0.05) as writer:
        barrier = threading.Barrier(len(claimed))

        def settle(row) -> None:
            barrier.wait()
            answers[row.delivery_id] = writer.submit(_recording(row)).result(timeout=30)

        threads = [threading.Thread(target=settle, args=(row,)) for row in claimed]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=30)
    assert answers == {row.delivery_id: (1, True) for row in claimed}
    assert writer.batches < len(claimed) / 4, writer.batches
    assert {r["status"] for r in rows(engine)} == {"success"}


def test_a_write_that_fails_answers_each_row_of_its_batch_with_the_error(sqlite_engine) -> None:
    claimed = _claimed(sqlite_engine, 2)
    with sqlite_engine.begin() as conn:
        conn.exec_driver_sql("DROP TABLE impact_delivery_attempts")
    with SettlementWriter(Outbox(sqlite_engine), linger_s=0.05) as writer:
        pending = [writer.submit(_recording(row)) for row in claimed]
        for written in pending:
            with pytest.raises(sa.exc.OperationalError, match="impact_delivery_attempts"):
                written.result(timeout=30)
    assert {r["status"] for r in rows(sqlite_engine)} == {"pending"}  # the batch rolled back whole


def test_a_batch_a_deadlock_rolled_back_is_written_again(pg_engine) -> None:
    first, second = sorted(_claimed(pg_engine, 2), key=lambda r: r.id)  # the order a batch locks rows in
    with SettlementWriter(Outbox(pg_engine), linger_s=0.2) as writer, pg_engine.connect() as other:
        # PostgreSQL aborts whichever waiter's deadlock check finds the cycle first: this one checks late, so the
        # writer (waiting first, checking after the default second) is the one that gives way, however loaded
        other.exec_driver_sql("SET deadlock_timeout = '30s'")
        other.exec_driver_sql(
            "SELECT 1 FROM impact_deliveries WHERE delivery_id = %(d)s FOR UPDATE", {"d": second.delivery_id}
        )
        pending = [writer.submit(_recording(first)), writer.submit(_recording(second))]
        # the writer locks `first` and waits for `second`; now `other` asks for `first`: a cycle
        deadline = time.monotonic() + 20
        while not _someone_waits_for_a_lock(pg_engine):
            assert time.monotonic() < deadline, "the writer never waited for the row held by the other transaction"
            time.sleep(0.01)
        other.exec_driver_sql(
            "SELECT 1 FROM impact_deliveries WHERE delivery_id = %(d)s FOR UPDATE", {"d": first.delivery_id}
        )  # the writer, waiting first, finds the cycle and gives way: this does not fail
        other.commit()
        assert [w.result(timeout=30) for w in pending] == [(1, True), (1, True)]
    assert [r["status"] for r in rows(pg_engine)] == ["success", "success"]
    assert len(attempts(pg_engine)) == 2  # the rolled-back batch left nothing behind


def _someone_waits_for_a_lock(engine) -> bool:
    with engine.connect() as conn:
        return bool(
            conn.exec_driver_sql(
                "SELECT count(*) FROM pg_locks AS l JOIN pg_stat_activity AS a ON a.pid = l.pid "
                "WHERE NOT l.granted AND a.datname = current_database()"
            ).scalar()
        )


def test_a_run_writes_its_attempts_in_fewer_statements_than_rows(pg_engine, sandbox) -> None:
    add_integration(pg_engine, "acme", "benevity")
    add_events(pg_engine, events("acme", 120))
    extract(pg_engine, "acme", Provider.BENEVITY)
    writes = 0

    def count(_conn, _cursor, statement: str, *_: object) -> None:
        nonlocal writes
        writes += "INSERT INTO impact_delivery_attempts" in statement

    sa.event.listen(pg_engine, "before_cursor_execute", count)
    report = deliver(pg_engine, factory_for(pg_engine, sandbox, concurrency=8), "benevity")
    sa.event.remove(pg_engine, "before_cursor_execute", count)

    assert report.totals.outcomes == {RowOutcome.SUCCESS: 120}
    assert len(attempts(pg_engine)) == 120
    assert writes < 120 * 0.75, writes  # one statement per row when each send thread wrote its own


def test_a_writer_that_stalls_stops_the_sends_at_twice_the_concurrency_and_loses_nothing(
    engine, sandbox, monkeypatch
) -> None:
    """Rows sent and not yet written are what a crash sends again, so they are bounded: the run's concurrency in
    flight and as many again waiting for their write. A writer that stalls therefore stops the sending at exactly
    twice the concurrency (not before: the network does not wait for the warehouse); once it writes again, every
    row goes out once."""
    add_integration(engine, "acme", "benevity")
    add_events(engine, events("acme", 60))
    extract(engine, "acme", Provider.BENEVITY)
    resume = threading.Event()
    record_many = Outbox.record_many

    def stalled(self, recordings):
        resume.wait(timeout=60)
        return record_many(self, recordings)

    monkeypatch.setattr(Outbox, "record_many", stalled)
    fake = sandbox.providers["benevity"]

    def sent() -> int:
        return len(fake.snapshot()["accepted"])

    reports: list = []
    run = threading.Thread(
        target=lambda: reports.append(deliver(engine, factory_for(engine, sandbox, concurrency=3), "benevity"))
    )
    run.start()
    try:
        deadline = time.monotonic() + 30
        while sent() < 6 and time.monotonic() < deadline:
            time.sleep(0.02)
        time.sleep(0.5)  # room for any send beyond the bound to show
        assert sent() == 6, f"{sent()} requests went out while nothing could be written"
    finally:
        resume.set()
        run.join(timeout=60)
    [report] = reports
    assert report.totals.outcomes == {RowOutcome.SUCCESS: 60}
    assert sent() == 60 and len(attempts(engine)) == 60
