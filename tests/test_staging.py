"""Staging at scale: events become outbox rows in pages of thousands, one insert statement per page, with the
stored bytes exactly the mapped bytes (whatever characters the event holds) and bad events quarantined among good
ones. On SQLite and PostgreSQL."""

import hashlib
import json

import sqlalchemy as sa
from sqlalchemy import event as sa_event

from impactin_pipelines.domain.providers import Provider
from impactin_pipelines.services.extract import extract, outbox_row
from tests.support import add_events, add_integration, event, events, rows

TRICKY = 'quote " backslash \\ tab\u2028line sep \u00e9 \U0001f331 \ud7ff </x> \\u0041'


def test_staging_writes_one_statement_per_page_of_thousands(engine) -> None:
    add_integration(engine, "acme", "benevity")
    add_events(engine, events("acme", 12_000) + events("other", 50))
    inserts: list[str] = []

    def count(conn, cursor, statement, parameters, context, executemany):
        if statement.lstrip().upper().startswith("INSERT INTO IMPACT_DELIVERIES"):
            inserts.append(statement)

    sa_event.listen(engine, "before_cursor_execute", count)
    try:
        report = extract(engine, "acme", Provider.BENEVITY, workers=1)  # statements of this process only
    finally:
        sa_event.remove(engine, "before_cursor_execute", count)
    assert (report.new_rows, report.invalid) == (12_000, 0)
    # PostgreSQL: one statement per page of 5,000. SQLite: the driver splits a page into statements of 1,000 rows.
    assert len(inserts) == (3 if engine.dialect.name == "postgresql" else 12)
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT count(*) FROM impact_deliveries")).scalar() == 12_000
    assert extract(engine, "acme", Provider.BENEVITY).new_rows == 0


def test_stored_payloads_are_the_mapped_bytes_and_bad_events_are_quarantined(engine) -> None:
    add_integration(engine, "acme", "benevity")
    good = [event(f"evt_{i}", metadata={"note": TRICKY, "n": i}) for i in range(3)]
    bad = event("evt_bad", value="-1")
    add_events(engine, [*good, bad])
    report = extract(engine, "acme", Provider.BENEVITY)
    assert (report.new_rows, report.invalid) == (4, 1)
    stored = {r["event_id"]: r for r in rows(engine)}
    for raw in good:
        row = stored[raw["event_id"]]
        with engine.connect() as conn:
            source = dict(
                conn.execute(sa.text("SELECT * FROM impact_events WHERE event_id = :id"), {"id": raw["event_id"]})
                .one()
                ._mapping
            )
        expected = outbox_row(source, Provider.BENEVITY)
        assert row["status"] == "pending"
        assert row["payload"] == expected.payload
        assert json.loads(row["payload"])["event"]["impact"]["metadata"]["note"] == TRICKY
        assert row["payload_hash"] == hashlib.sha256(row["payload"].encode("utf-8")).hexdigest()
    quarantined = stored["evt_bad"]
    assert (quarantined["status"], quarantined["error_kind"], quarantined["payload"]) == (
        "failed",
        "invalid_event",
        None,
    )
    assert "value" in quarantined["last_error"] and "-1" in quarantined["last_error"]


def test_many_pages_are_mapped_and_written_by_worker_processes_with_the_same_bytes(pg_engine) -> None:
    """More than one page on PostgreSQL: worker processes map and write pages; the rows are those `outbox_row`
    builds in this process, bad events quarantined among them, priorities kept, and nothing is staged twice."""
    add_integration(pg_engine, "acme", "benevity")
    good = [event(f"evt_{i:04d}", metadata={"note": TRICKY, "n": i}) for i in range(230)]
    urgent = [event(f"evt_urgent_{i}", metadata={"priority": "urgent"}) for i in range(5)]
    bad = [event(f"evt_bad_{i}", value="-1") for i in range(7)]
    add_events(pg_engine, good + urgent + bad)
    report = extract(pg_engine, "acme", Provider.BENEVITY, batch_size=40, workers=2)
    assert (report.new_rows, report.invalid) == (242, 7)
    stored = {r["event_id"]: r for r in rows(pg_engine)}
    assert len(stored) == 242
    with pg_engine.connect() as conn:
        sources = [dict(r._mapping) for r in conn.execute(sa.text("SELECT * FROM impact_events"))]
    for source in sources:
        expected = outbox_row(source, Provider.BENEVITY)
        row = stored[source["event_id"]]
        assert (row["payload"], row["payload_hash"], row["delivery_id"]) == (
            expected.payload,
            expected.payload_hash,
            expected.delivery_id,
        )
        assert (row["status"], row["priority"]) == (expected.status.value, expected.priority)
    assert sum(r["priority"] for r in stored.values()) == 5
    assert extract(pg_engine, "acme", Provider.BENEVITY, batch_size=40, workers=2).new_rows == 0
