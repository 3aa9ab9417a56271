"""Priority: `metadata.priority` (urgent | normal) is checked at the gate, stored on the outbox row, and urgent rows
are claimed before everything else, also by a run that is already under way. On SQLite and PostgreSQL."""

import threading

import pytest

from impactin_pipelines.domain.errors import InvalidEvent
from impactin_pipelines.domain.events import Priority, parse_event
from impactin_pipelines.domain.providers import Provider
from impactin_pipelines.services.extract import extract
from impactin_pipelines.store.outbox import Outbox
from tests.support import add_events, add_integration, deliver, event, events, factory_for, rows, statuses


def test_priority_comes_from_metadata_and_defaults_to_normal() -> None:
    assert parse_event(event("e1")).priority is Priority.NORMAL
    assert parse_event(event("e2", metadata={"priority": "urgent"})).priority is Priority.URGENT
    assert parse_event(event("e3", metadata={"priority": "normal", "x": 1})).priority is Priority.NORMAL
    assert parse_event(event("e4", metadata='{"priority": "urgent"}')).priority is Priority.URGENT


@pytest.mark.parametrize("value", ["high", "URGENT", "", 1, True, ["urgent"], {"level": "urgent"}])
def test_an_unknown_priority_is_an_invalid_event_naming_field_and_value(value) -> None:
    with pytest.raises(InvalidEvent) as caught:
        parse_event(event("e1", metadata={"priority": value}))
    assert caught.value.field == "metadata.priority"
    assert caught.value.value == value
    assert "urgent" in caught.value.reason and "normal" in caught.value.reason


def test_priority_is_stored_and_a_bad_one_quarantines_only_its_event(engine) -> None:
    add_integration(engine, "acme", "benevity")
    add_events(
        engine,
        [
            event("evt_normal"),
            event("evt_urgent", metadata={"priority": "urgent"}),
            event("evt_bad", metadata={"priority": "asap"}),
        ],
    )
    report = extract(engine, "acme", Provider.BENEVITY)
    assert (report.new_rows, report.invalid) == (3, 1)
    stored = {r["event_id"]: r for r in rows(engine)}
    assert (stored["evt_normal"]["status"], stored["evt_normal"]["priority"]) == ("pending", 0)
    assert (stored["evt_urgent"]["status"], stored["evt_urgent"]["priority"]) == ("pending", 1)
    bad = stored["evt_bad"]
    assert (bad["status"], bad["error_kind"]) == ("failed", "invalid_event")
    assert "metadata.priority='asap'" in bad["last_error"], bad["last_error"]


def test_urgent_rows_are_claimed_before_older_normal_rows(engine) -> None:
    add_integration(engine, "acme", "benevity")
    add_integration(engine, "beta", "benevity")
    add_events(engine, events("acme", 30) + events("beta", 30))
    extract(engine, "acme", Provider.BENEVITY)
    extract(engine, "beta", Provider.BENEVITY)
    # Written after all the normal rows, so oldest-first alone would claim them last.
    add_events(engine, [event(f"late_{i}", "beta", metadata={"priority": "urgent"}) for i in range(3)])
    extract(engine, "beta", Provider.BENEVITY)
    outbox = Outbox(engine)
    for scope in (None, ["beta"], ["acme", "beta"]):
        claimed = outbox.claim(claimant=f"c-{scope}", provider="benevity", company_ids=scope, limit=5, lease_s=60)
        assert {"late_0", "late_1", "late_2"} <= {c.event_id for c in claimed}, [c.event_id for c in claimed]
        outbox.release_all(f"c-{scope}")


def test_an_urgent_event_staged_during_a_run_goes_out_in_its_next_claim_batch(engine, sandbox) -> None:
    """A run of 400 rows, claimed 20 at a time; an urgent event staged once 60 have gone out is sent before the
    run has claimed more than one further batch (plus what was already claimed and in flight)."""
    add_integration(engine, "acme", "benevity")
    add_events(engine, events("acme", 400))
    extract(engine, "acme", Provider.BENEVITY)
    fake = sandbox.providers["benevity"]
    fake.configure({"latency_ms": 5})
    batch, concurrency = 20, 2
    staged_after: list[int] = []

    def stage_urgent_when_busy() -> None:
        while len(fake.snapshot()["accepted"]) < 60:
            threading.Event().wait(0.01)
        add_events(engine, [event("evt_urgent", metadata={"priority": "urgent"})])
        extract(engine, "acme", Provider.BENEVITY)
        # Counted once the row is staged (claimable), not before: on a loaded machine staging itself can take as
        # long as a few dozen sends.
        staged_after.append(len(fake.snapshot()["accepted"]))

    stager = threading.Thread(target=stage_urgent_when_busy)
    stager.start()
    factory = factory_for(engine, sandbox, claim_batch=batch, concurrency=concurrency)
    deliver(engine, factory, "benevity", ["acme"])
    stager.join()
    assert statuses(engine) == {"success": 401}
    order = [r["event_id"] for r in fake.snapshot()["accepted"]]
    position = order.index("evt_urgent")
    # Sent before the run got past the batch it held when the event was staged and the one claimed next.
    assert position - staged_after[0] <= 2 * batch + 2 * concurrency, (position, staged_after)
    assert position < 400 - batch, (position, staged_after)
