"""Claims: the fencing token checked at send and at settle, and claimant identities that prove death only inside
their own boot and PID namespace. Storage tests run on SQLite and PostgreSQL; the namespace tests use `unshare`."""

import subprocess
import sys
import time
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from impactin_pipelines.connectors.base import AttemptResult
from impactin_pipelines.domain.statuses import AttemptOutcome, DeliveryStatus, RowOutcome
from impactin_pipelines.services.deliver import LOST_AT_SEND
from impactin_pipelines.services.replay import BUSY, ReplayRefused, replay_one
from impactin_pipelines.store.claimants import Claimant, is_provably_dead
from impactin_pipelines.store.outbox import Outbox, Settlement, utcnow
from tests.reliability.ledger import when
from tests.support import (
    add_events,
    add_integration,
    attempts,
    deliver,
    event,
    events,
    factory_for,
    own_pid_namespace,
    rows,
)

INTRUDER = "otherhost/1/1/boot/ns/intruder"
LEASE_S = 2.0  # a run waits up to one lease for rows another claimant holds before it ends
PRINT_CLAIMANT = "from impactin_pipelines.store.claimants import Claimant; print(Claimant.new(), flush=True)"


def _seed(engine, n: int) -> None:
    from impactin_pipelines.domain.providers import Provider
    from impactin_pipelines.services.extract import extract

    add_integration(engine, "acme", "benevity")
    add_events(engine, events("acme", n))
    assert extract(engine, "acme", Provider.BENEVITY).new_rows == n


def _take_over(engine, row_ids: list[str]) -> list[str]:
    """Another run claims these rows as it would once their lease had lapsed; it holds them from then on."""
    taken = Outbox(engine).claim(
        claimant=INTRUDER,
        provider="benevity",
        company_ids=None,
        limit=len(row_ids),
        lease_s=3600,
        now=utcnow() + timedelta(hours=1),
        ids=row_ids,
        due_only=False,
    )
    return [r.id for r in taken]


def _sends(sandbox) -> list[str]:
    return [r["idempotency_key"] for r in sandbox.providers["benevity"].snapshot()["requests"]]


# -- the fencing token in the store ----------------------------------------------------------------------------
def test_a_claim_taken_over_can_neither_confirm_nor_settle(engine) -> None:
    _seed(engine, 1)
    outbox = Outbox(engine)
    (mine,) = outbox.claim(claimant="a", provider="benevity", company_ids=None, limit=1, lease_s=30)
    assert outbox.confirm("a", mine.id, mine.claim_version, 30)
    assert _take_over(engine, [mine.id]) == [mine.id]
    (theirs,) = rows(engine)
    assert theirs["claim_version"] == mine.claim_version + 1

    assert not outbox.confirm("a", mine.id, mine.claim_version, 30), "a claim taken over must stop the send"
    now = utcnow()
    attempt = AttemptResult(AttemptOutcome.SUCCESS, now, now, http_status=200)
    _, settled = outbox.record(
        claimant="a",
        claim_version=mine.claim_version,
        delivery_id=mine.delivery_id,
        run_id=None,
        attempt=attempt,
        settlement=Settlement(DeliveryStatus.SUCCESS),
    )
    assert not settled
    (row,) = rows(engine)
    assert (row["status"], row["claimed_by"], row["attempt_count"]) == ("pending", INTRUDER, 1)  # the attempt is a fact
    assert outbox.confirm(INTRUDER, mine.id, theirs["claim_version"], 30)


def test_an_old_claim_of_the_same_claimant_is_fenced_by_its_version(engine) -> None:
    _seed(engine, 1)
    outbox = Outbox(engine)
    (first,) = outbox.claim(claimant="a", provider="benevity", company_ids=None, limit=1, lease_s=30)
    outbox.release_all("a")
    (second,) = outbox.claim(claimant="a", provider="benevity", company_ids=None, limit=1, lease_s=30)
    assert second.claim_version == first.claim_version + 1
    assert not outbox.confirm("a", first.id, first.claim_version, 30)
    assert outbox.confirm("a", second.id, second.claim_version, 30)


def test_a_lapsed_lease_stops_the_send_but_its_outcome_still_settles(engine) -> None:
    """Lapsed and taken by nobody: no new request goes out under it, but a request that went out is settled, since
    no other claimant can have sent the row meanwhile (that would have needed a new claim)."""
    _seed(engine, 1)
    outbox = Outbox(engine)
    start = utcnow()
    (mine,) = outbox.claim(claimant="a", provider="benevity", company_ids=None, limit=1, lease_s=5, now=start)
    later = start + timedelta(seconds=6)
    assert not outbox.confirm("a", mine.id, mine.claim_version, 5, now=later)
    _, settled = outbox.record(
        claimant="a",
        claim_version=mine.claim_version,
        delivery_id=mine.delivery_id,
        run_id=None,
        attempt=None,
        settlement=Settlement(DeliveryStatus.SUCCESS),
        now=later,
    )
    assert settled and rows(engine)[0]["status"] == "success"


def test_confirming_pushes_the_lease(engine) -> None:
    """A confirmed claim cannot lapse between the check and the request."""
    _seed(engine, 1)
    outbox = Outbox(engine)
    start = utcnow()
    (mine,) = outbox.claim(claimant="a", provider="benevity", company_ids=None, limit=1, lease_s=5, now=start)
    assert outbox.confirm("a", mine.id, mine.claim_version, 5, now=start + timedelta(seconds=4))
    later = start + timedelta(seconds=7)  # past the first lease, within the pushed one
    assert _take_over_at(engine, mine.id, later) == []
    assert outbox.confirm("a", mine.id, mine.claim_version, 5, now=later)


def _take_over_at(engine, row_id: str, now) -> list[str]:
    taken = Outbox(engine).claim(
        claimant=INTRUDER, provider="benevity", company_ids=None, limit=1, lease_s=60, now=now, ids=[row_id]
    )
    return [r.id for r in taken]


def test_a_claim_knows_when_its_lease_began_by_the_clocks_of_its_process(engine) -> None:
    _seed(engine, 2)
    outbox = Outbox(engine)
    before = time.monotonic()
    fresh = outbox.claim(claimant="a", provider="benevity", company_ids=None, limit=1, lease_s=30)
    assert fresh.lease_start is not None and before <= fresh.lease_start.monotonic <= time.monotonic()
    assert fresh.lease_start.holds(30)
    given = outbox.claim(claimant="a", provider="benevity", company_ids=None, limit=1, lease_s=30, now=utcnow())
    assert len(given) == 1 and given.lease_start is None, "a caller's own `now` says nothing of this process's clocks"


@pytest.mark.parametrize(
    ("monotonic", "wall", "holds"),
    [
        (100.9, 1000.9, True),  # both clocks: 0.9 s of a 2 s lease
        (101.1, 1000.5, False),  # the monotonic clock says more (the wall clock slewed back)
        (100.5, 1010.0, False),  # the wall clock says more (the machine slept; the monotonic clock stopped)
        (100.5, 999.0, False),  # the wall clock was set back: the age is unknown
    ],
)
def test_a_lease_start_ages_by_whichever_clock_says_more(monkeypatch, monotonic, wall, holds) -> None:
    from types import SimpleNamespace

    from impactin_pipelines.store import outbox as outbox_module
    from impactin_pipelines.store.outbox import LeaseStart

    start = LeaseStart(monotonic=100.0, wall=1000.0)
    monkeypatch.setattr(outbox_module, "time", SimpleNamespace(monotonic=lambda: monotonic, time=lambda: wall))
    assert start.holds(2.0) is holds


# -- the send path ---------------------------------------------------------------------------------------------
def test_rows_taken_over_while_queued_in_the_pool_are_not_sent(engine, sandbox) -> None:
    """One worker, five rows claimed at once: while the first row waits out its retry backoff, for more than half a
    lease, another run takes over the four rows still queued in the pool. Their claims are old enough to be
    confirmed in the store before sending: they are left to it, not sent, not settled, and the run does not fail."""
    _seed(engine, 5)
    sandbox.providers["benevity"].configure({"fail_next": {"status": 503, "count": 1}})
    factory = factory_for(engine, sandbox, concurrency=1, claim_batch=10, lease_s=LEASE_S)
    stolen: list[str] = []

    def sleep(seconds: float) -> None:
        if not stolen:
            stolen.extend(_take_over(engine, [r["id"] for r in rows(engine) if r["attempt_count"] == 0]))
        time.sleep(max(seconds, LEASE_S / 2 + 0.1))

    try:
        report = deliver(engine, factory, "benevity", sleep=sleep)
    finally:
        factory.close()
    assert len(stolen) == 4
    first = next(r for r in rows(engine) if r["id"] not in stolen)
    assert _sends(sandbox) == [first["delivery_id"]] * 2, "only the first row went out (503, then delivered)"
    assert first["status"] == "success"
    outcomes = report.totals.outcomes
    assert outcomes[RowOutcome.CLAIM_LOST] == 4 and outcomes[RowOutcome.SUCCESS] == 1 and not report.errors
    assert {report.rows[i].error for i in stolen} == {LOST_AT_SEND}
    for row in rows(engine):
        if row["id"] in stolen:
            assert (row["status"], row["claimed_by"], row["attempt_count"]) == ("pending", INTRUDER, 0)


def test_first_sends_of_a_fresh_claim_skip_the_confirm_round_trip_and_later_ones_do_not(
    engine, sandbox, monkeypatch
) -> None:
    """A claim younger than half a lease holds by the run's own clocks: its first sends ask the store nothing. A
    retry confirms in the store, and so does a first send once the claim is older than half a lease."""
    _seed(engine, 6)
    confirmed: list[str] = []
    real_confirm = Outbox.confirm

    def counting_confirm(self, claimant, row_id, *args, **kwargs):
        confirmed.append(row_id)
        return real_confirm(self, claimant, row_id, *args, **kwargs)

    monkeypatch.setattr(Outbox, "confirm", counting_confirm)
    sandbox.providers["benevity"].configure({"fail_next": {"status": 503, "count": 1}})
    factory = factory_for(engine, sandbox, concurrency=1, claim_batch=10, lease_s=LEASE_S)
    slept: list[float] = []

    def sleep(seconds: float) -> None:  # the first row's backoff outlasts half the lease of the rows queued behind it
        slept.append(seconds)
        time.sleep(max(seconds, LEASE_S / 2 + 0.1))

    try:
        report = deliver(engine, factory, "benevity", sleep=sleep)
    finally:
        factory.close()
    assert report.totals.outcomes[RowOutcome.SUCCESS] == 6 and len(slept) == 1
    first = next(r for r in rows(engine) if r["attempt_count"] == 2)
    assert confirmed[0] == first["id"], "the first send of the first row asked nothing; its retry confirmed"
    assert sorted(confirmed) == sorted(r["id"] for r in rows(engine)), "then every row queued behind it confirmed"


def test_a_takeover_behind_the_clocks_of_a_fresh_claim_is_caught_when_settling(engine, sandbox) -> None:
    """Nobody takes over an unlapsed claim of a live run; a store that does anyway (here: a claim at a time an hour
    ahead) is caught by the settlement's check: the rows went out, their attempts are recorded, and the rows are
    left, unsettled, to the claimant that holds them now."""
    _seed(engine, 3)
    factory = factory_for(engine, sandbox, concurrency=1, claim_batch=10, lease_s=LEASE_S)
    stolen: list[str] = []
    real_claim = Outbox.claim

    def claim_then_steal(self, **kwargs):
        batch = real_claim(self, **kwargs)
        if batch and not stolen:
            stolen.extend(_take_over(engine, [row.id for row in batch]))
        return batch

    try:
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(Outbox, "claim", claim_then_steal)
            report = deliver(engine, factory, "benevity")
    finally:
        factory.close()
    assert len(stolen) == 3 and len(_sends(sandbox)) == 3
    assert report.totals.outcomes[RowOutcome.CLAIM_LOST] == 3
    assert len(attempts(engine)) == 3, "every request that went out is recorded"
    for row in rows(engine):
        assert (row["status"], row["claimed_by"], row["attempt_count"]) == ("pending", INTRUDER, 1)


def test_a_row_taken_over_between_retries_is_not_sent_again(engine, sandbox) -> None:
    _seed(engine, 1)
    sandbox.providers["benevity"].configure({"fail_next": {"status": 503, "count": 1}})
    factory = factory_for(engine, sandbox, lease_s=LEASE_S)
    (row,) = rows(engine)
    taken: list[str] = []
    try:
        report = deliver(engine, factory, "benevity", sleep=lambda _: taken.extend(_take_over(engine, [row["id"]])))
    finally:
        factory.close()
    assert taken == [row["id"]]
    assert len(_sends(sandbox)) == 1, "the new holder sends the retry, not us"
    assert report.rows[row["id"]].status is RowOutcome.CLAIM_LOST and report.rows[row["id"]].attempts == 1
    (after,) = rows(engine)
    assert (after["status"], after["claimed_by"], after["attempt_count"]) == ("retrying", INTRUDER, 1)


def test_a_lapsed_lease_stops_the_retry(engine, sandbox) -> None:
    """The run stalled past its lease between two attempts (nobody took the row yet): it does not send again; the
    row is released at the end of the run for the next one."""
    import sqlalchemy as sa

    from impactin_pipelines.store.schema import impact_deliveries as d

    _seed(engine, 1)
    sandbox.providers["benevity"].configure({"fail_next": {"status": 503, "count": 1}})
    factory = factory_for(engine, sandbox, lease_s=300.0)

    def lapse(_: float) -> None:
        with engine.begin() as conn:
            conn.execute(sa.update(d).values(lease_expires_at=utcnow() - timedelta(seconds=1)))

    try:
        report = deliver(engine, factory, "benevity", sleep=lapse)
    finally:
        factory.close()
    assert len(_sends(sandbox)) == 1
    (after,) = rows(engine)
    assert report.rows[after["id"]].status is RowOutcome.CLAIM_LOST
    assert (after["status"], after["claimed_by"], after["attempt_count"]) == ("retrying", None, 1)


def test_a_replay_whose_claim_is_taken_over_is_refused_as_busy(engine, sandbox) -> None:
    """A replay waiting out a Retry-After loses its claim to a run: it is told the row is busy, and sends no more."""
    _seed(engine, 1)
    (row,) = rows(engine)
    sandbox.providers["benevity"].configure({"fail_next": {"status": 503, "retry_after": "1"}})
    factory = factory_for(engine, sandbox)
    try:
        with (
            when(lambda: bool(attempts(engine)), lambda: _take_over(engine, [row["id"]])) as fired,
            pytest.raises(ReplayRefused, match=BUSY),
        ):
            replay_one(engine, factory, row["id"])
    finally:
        factory.close()
    assert fired and len(_sends(sandbox)) == 1
    assert rows(engine)[0]["claimed_by"] == INTRUDER


# -- identities ------------------------------------------------------------------------------------------------
def _claimant_of_a_finished_process(*wrapper: str) -> str:
    child = subprocess.run(
        [*wrapper, sys.executable, "-c", PRINT_CLAIMANT], capture_output=True, text=True, check=True, timeout=60
    )
    return child.stdout.strip()


def test_a_live_run_in_another_pid_namespace_is_not_taken_for_dead() -> None:
    """Same host, same boot, its own PID namespace (a container with host networking): its pid means nothing
    here, so the lease decides, not our view of that pid."""
    child = subprocess.Popen(
        [*own_pid_namespace(), sys.executable, "-c", PRINT_CLAIMANT + "; import sys; sys.stdin.read()"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert child.stdout is not None and child.stdin is not None
        text = child.stdout.readline().strip()
        theirs, ours = Claimant.parse(text), Claimant.new()
        assert theirs is not None, text
        assert (theirs.host, theirs.boot) == (ours.host, ours.boot) and theirs.pid_ns != ours.pid_ns
        assert not is_provably_dead(text)
    finally:
        if child.stdin:
            child.stdin.close()
        child.wait(timeout=30)
    assert not is_provably_dead(text), "nor once it is gone: from here, that cannot be proved"


def test_only_a_claimant_of_our_boot_and_pid_namespace_can_be_proved_dead() -> None:
    text = _claimant_of_a_finished_process()
    dead = Claimant.parse(text)
    assert dead is not None and dead.boot and dead.pid_ns
    assert is_provably_dead(text), "a finished process of our own namespace is dead at once"
    assert not is_provably_dead(str(replace(dead, boot="0b0e1d00-0000-4000-8000-000000000000")))
    assert not is_provably_dead(str(replace(dead, pid_ns=str(int(dead.pid_ns) + 1))))
    assert not is_provably_dead(str(replace(dead, boot="", pid_ns="")))


def test_claimant_ids_in_the_older_format_parse_and_wait_for_the_lease() -> None:
    dead = Claimant.parse(_claimant_of_a_finished_process())
    assert dead is not None
    old = f"{dead.host}/{dead.pid}/{dead.started}/{dead.token}"
    parsed = Claimant.parse(old)
    assert parsed is not None and (parsed.pid, parsed.boot, parsed.pid_ns) == (dead.pid, "", "")
    assert not is_provably_dead(old)
    for garbage in ("", "garbage", "a/b/c/d", "h/1/2/3/4/5/6", "h/x/1/boot/ns/t"):
        assert not is_provably_dead(garbage)


def test_without_a_proc_of_its_own_pid_namespace_nothing_is_proved_dead() -> None:
    """A process in its own PID namespace that still sees the host's /proc (no --mount-proc) cannot read its pids'
    start times there: it must not take even itself for dead."""
    script = (
        "from impactin_pipelines.store.claimants import Claimant, is_provably_dead; "
        "print(is_provably_dead(str(Claimant.new())))"
    )
    child = subprocess.run(
        [*own_pid_namespace(mount_proc=False), sys.executable, "-c", script],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    assert child.stdout.strip() == "False"


def test_confirming_a_lease_with_most_of_it_left_reads_and_one_close_to_lapsing_is_pushed(engine) -> None:
    """Confirm writes only a lease that has run down to half its length: the heartbeat keeps leases above that, so
    a confirm is a read (on PostgreSQL no new row version); a lease closer to lapsing is pushed to a whole one,
    and a claim taken over is refused either way."""
    _seed(engine, 2)
    outbox = Outbox(engine)
    start = utcnow()
    mine, other = outbox.claim(claimant="a", provider="benevity", company_ids=None, limit=2, lease_s=10, now=start)

    def lease_and_version(row_id: str) -> tuple[Any, Any]:
        (row,) = [r for r in rows(engine) if r["id"] == row_id]
        if engine.dialect.name != "postgresql":
            return row["lease_expires_at"], None
        with engine.connect() as conn:
            xmin = conn.exec_driver_sql("SELECT xmin::text FROM impact_deliveries WHERE id = %(id)s", {"id": row_id})
            return row["lease_expires_at"], xmin.scalar_one()

    claimed = lease_and_version(mine.id)
    assert outbox.confirm("a", mine.id, mine.claim_version, 10, now=start + timedelta(seconds=4))  # 6 s of 10 left
    if engine.dialect.name == "postgresql":
        assert lease_and_version(mine.id) == claimed  # not written: same lease, same row version
    assert outbox.confirm("a", mine.id, mine.claim_version, 10, now=start + timedelta(seconds=6))  # 4 s left
    pushed, _ = lease_and_version(mine.id)
    assert _aware(pushed) == start + timedelta(seconds=16)
    assert _take_over_at(engine, mine.id, start + timedelta(seconds=12)) == []  # within the pushed lease

    assert _take_over(engine, [other.id]) == [other.id]
    assert not outbox.confirm("a", other.id, other.claim_version, 10, now=start + timedelta(seconds=1))
    assert not outbox.confirm("a", other.id, other.claim_version, 10, now=start + timedelta(seconds=8))


def _aware(moment: datetime) -> datetime:
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


# -- claims that start where the last one ended ------------------------------------------------------------------
def _claim_after(engine, after, limit: int = 4, claimant: str = "a"):
    return Outbox(engine).claim(
        claimant=claimant, provider="benevity", company_ids=["acme"], limit=limit, lease_s=60, after=after
    )


def test_a_claim_after_a_position_starts_there_yet_takes_an_urgent_row_staged_meanwhile(engine) -> None:
    from impactin_pipelines.domain.providers import Provider
    from impactin_pipelines.services.extract import extract

    _seed(engine, 10)
    in_order = [r["id"] for r in sorted(rows(engine), key=lambda r: (r["created_at"], r["id"]))]
    first = _claim_after(engine, None)
    assert sorted(r.id for r in first) == sorted(in_order[:4]) and first.end is not None
    assert first.end.id == in_order[3]  # the last of the batch in claim order
    Outbox(engine).release_all("a")  # the first four are claimable again, behind the position
    add_events(engine, [event("urgent_1", metadata={"priority": "urgent"})])
    extract(engine, "acme", Provider.BENEVITY)
    [urgent] = [r["id"] for r in rows(engine) if r["event_id"] == "urgent_1"]

    second = _claim_after(engine, first.end)
    assert sorted(r.id for r in second) == sorted([urgent, *in_order[4:7]])
    third = _claim_after(engine, second.end)
    assert sorted(r.id for r in third) == sorted(in_order[7:10]) and third.end is None  # short: the pass ends
    from_the_top = _claim_after(engine, None)
    assert sorted(r.id for r in from_the_top) == sorted(in_order[:4])  # what was freed behind the position


def test_a_run_that_claims_after_positions_still_delivers_rows_freed_behind_them(engine, sandbox) -> None:
    _seed(engine, 30)
    in_order = [r["id"] for r in sorted(rows(engine), key=lambda r: (r["created_at"], r["id"]))]
    # another run holds the oldest five and gives them back while this run is past them
    Outbox(engine).claim(
        claimant=INTRUDER, provider="benevity", company_ids=None, limit=5, lease_s=3600, ids=in_order[:5]
    )
    sent = lambda: len(_sends(sandbox))  # noqa: E731
    with when(lambda: sent() >= 10, lambda: Outbox(engine).release_all(INTRUDER)) as fired:
        report = deliver(engine, factory_for(engine, sandbox, claim_batch=5, concurrency=2), "benevity")
    assert fired and report.totals.outcomes == {RowOutcome.SUCCESS: 30}
    assert sorted(_sends(sandbox)) == sorted(r["delivery_id"] for r in rows(engine))  # each once
