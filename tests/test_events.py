"""The gate between raw rows and mappers: each bad field is named with its value."""

from decimal import Decimal

import pytest

from impactin_pipelines.domain.errors import InvalidEvent
from impactin_pipelines.domain.events import parse_event
from tests.support import SPEC_EVENT


@pytest.mark.parametrize(
    ("field", "value", "reason"),
    [
        ("user_id", None, "missing or blank"),
        ("event_id", "api/beta/evt_1", "another company's API namespace"),
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
        ("metadata", '\ufeff{"program": "x"}', "not valid JSON (it starts with a byte order mark)"),
        ("metadata", '{"x": 1e400}', "JSON-serialisable"),
        ("metadata", "[1, 2]", "must be a JSON object"),
        ("metadata", {"x": float("nan")}, "JSON-serialisable"),
        ("metadata", {"blob": "x" * 70_000}, "larger than"),
        ("outcome_scores", '{"a": NaN}', "not valid JSON"),
        ("company_id", "acme|evil", "partition key"),
        ("event_id", "", "missing or blank"),
        ("user_id", "bad\udcffbyte", "UTF-8"),
        ("user_id", "  user_456  ", "leading or trailing whitespace"),
        ("user_id", "\ufeffuser_456", "invisible characters"),
        ("user_id", "user\x7f", "control characters"),
        ("user_id", "user\x9b", "control characters"),
        ("user_id", "\u2060\u180e", "no visible characters"),
        ("user_id", "\u2800", "no visible characters"),
        ("user_id", "user\ufdd0", "noncharacter"),
        ("event_type", "x\U0010ffff", "noncharacter"),
        ("unit", "\u0301", "no visible characters"),
        ("event_id", "evt_1\u200b", "invisible characters"),
        ("value", "1_000", "plain number"),
        ("value", "\u0967", "plain number"),
        ("value", "0x10", "must be a number"),
        ("occurred_at", "0001-01-01T00:00:00Z", "before the year 1000"),
        ("occurred_at", "1000-01-01T00:30:00+01:00", "before the year 1000"),
        ("metadata", '{"a": 1, "a": 1}', "has the key 'a' more than once"),
        ("outcome_scores", '{"x": 0.5, "x": 0.5}', "has the key 'x' more than once"),
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
            "event_type": "  volunteer_hours ",  # codes are trimmed; ids never are
        }
    )
    assert event.timestamp == "2025-11-14T10:30:00.250Z"
    assert float(event.value) == 7.0
    assert event.metadata == {"program": "x"}
    assert event.outcome_scores == {}
    assert event.event_type == "volunteer_hours"


@pytest.mark.parametrize("text", ["0", "-0", "-0.0", "+0e3", " -0 "])
def test_negative_zero_is_zero(text: str) -> None:
    value = parse_event({**SPEC_EVENT, "value": text}).value
    assert value == 0 and not value.is_signed()


@pytest.mark.parametrize("text", ["5", "5.0", " 7.5 ", ".5", "5.", "+5", "1e3", "1.5E-3"])
def test_plain_ascii_numbers_are_accepted(text: str) -> None:
    assert parse_event({**SPEC_EVENT, "value": text}).value == Decimal(text.strip())


def test_huge_value_is_shown_cut_short_in_the_message() -> None:
    with pytest.raises(InvalidEvent) as err:
        parse_event({**SPEC_EVENT, "event_type": "x" * 5000})
    assert len(str(err.value)) < 200


def test_an_id_in_the_companys_own_api_namespace_is_valid() -> None:
    assert parse_event({**SPEC_EVENT, "event_id": "api/company_789/evt_1"}).event_id == "api/company_789/evt_1"
    with pytest.raises(InvalidEvent, match="another company's API namespace"):
        parse_event({**SPEC_EVENT, "event_id": "api/company_78/evt_1"})  # a prefix of the company id is not it
