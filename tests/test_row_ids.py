"""Outbox row ids are UUIDv7, drawn in time order on both backends (Python on SQLite, the warehouse's
impactin_new_row_id() on PostgreSQL): rows staged later sort after rows staged earlier, so a batch staged together
sits together in the primary key."""

import time
import uuid
from datetime import UTC, datetime

from impactin_pipelines.domain.providers import Provider
from impactin_pipelines.services.extract import extract
from impactin_pipelines.store.ids import new_row_id
from tests.support import add_events, add_integration, events, rows


def _v7(text: str) -> uuid.UUID:
    value = uuid.UUID(text)
    assert str(value) == text, text  # canonical form
    assert value.version == 7 and value.variant == uuid.RFC_4122, text
    return value


def _moment(value: uuid.UUID) -> datetime:
    return datetime.fromtimestamp((value.int >> 80) / 1000, UTC)


def test_a_row_id_is_a_uuid7_of_now_and_never_repeats() -> None:
    before = datetime.now(UTC)
    drawn = [new_row_id() for _ in range(10_000)]
    after = datetime.now(UTC)
    assert len(set(drawn)) == len(drawn)
    for text in drawn[:: len(drawn) // 50]:
        moment = _moment(_v7(text))
        assert before.replace(microsecond=before.microsecond // 1000 * 1000) <= moment <= after
    first = new_row_id()
    time.sleep(0.002)
    assert new_row_id() > first  # a later millisecond sorts later, as text and as a key


def test_staged_rows_get_time_ordered_uuid7_ids_on_either_backend(engine) -> None:
    add_integration(engine, "acme", "benevity")
    add_events(engine, events("acme", 5))
    extract(engine, "acme", Provider.BENEVITY)
    earlier = [row["id"] for row in rows(engine)]
    time.sleep(0.002)
    add_events(engine, [dict(e, event_id=f"later_{i}") for i, e in enumerate(events("acme", 3))])
    extract(engine, "acme", Provider.BENEVITY)
    later = [row["id"] for row in rows(engine) if row["id"] not in earlier]
    assert len(earlier) == 5 and len(later) == 3
    for text in earlier + later:
        _v7(text)
    assert max(earlier) < min(later)  # the second batch sorts after the first in the primary key
