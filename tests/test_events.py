"""The gate between raw rows and mappers: each bad field is named with its value."""

import pytest

from impactin_pipelines.domain.errors import InvalidEvent
from impactin_pipelines.domain.events import parse_event
from tests.support import SPEC_EVENT


@pytest.mark.parametrize(
    ("field", "value", "reason"),
    [
        ("user_id", None, "missing or blank"),
        ("user_id", "   ", "missing or blank"),
        ("user_id", 456, "must be a string"),
        ("event_type", "", "missing or blank"),
        ("value", "five", "must be a number"),
        ("value", -1, "must not be negative"),
        ("value", "NaN", "finite"),
        ("value", float("inf"), "finite"),
        ("value", True, "must be a number"),
        ("occurred_at", "yesterday", "ISO 8601"),
        ("occurred_at", "2025-11-14T10:00:00", "no timezone offset"),
        ("occurred_at", None, "missing"),
        ("unit", None, "missing or blank"),
        ("metadata", "{not json", "not valid JSON"),
        ("metadata", "[1, 2]", "must be a JSON object"),
        ("metadata", {"x": float("nan")}, "JSON-serialisable"),
        ("metadata", {"blob": "x" * 70_000}, "larger than"),
        ("outcome_scores", '{"a": NaN}', "not valid JSON"),
        ("company_id", "acme|evil", "partition key"),
        ("event_id", "", "missing or blank"),
        ("user_id", "bad\udcffbyte", "UTF-8"),
    ],
)
def test_invalid_field_is_named_with_its_value(field: str, value: object, reason: str) -> None:
    with pytest.raises(InvalidEvent) as err:
        parse_event({**SPEC_EVENT, field: value})
    assert err.value.field == field
    assert reason in str(err.value)
    assert str(err.value).startswith(f"{field}=")


def test_valid_variants_are_accepted() -> None:
    event = parse_event(
        {
            **SPEC_EVENT,
            "occurred_at": "2025-11-14T11:30:00.250+01:00",
            "value": "7",
            "metadata": '{"program": "x"}',
            "outcome_scores": None,
            "user_id": "  user_456  ",
        }
    )
    assert event.timestamp == "2025-11-14T10:30:00.250Z"
    assert float(event.value) == 7.0
    assert event.metadata == {"program": "x"}
    assert event.outcome_scores == {}
    assert event.user_id == "user_456"


def test_huge_value_is_shown_cut_short_in_the_message() -> None:
    with pytest.raises(InvalidEvent) as err:
        parse_event({**SPEC_EVENT, "event_type": "x" * 5000})
    assert len(str(err.value)) < 200
