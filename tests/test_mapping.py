"""Golden payloads: for the guide's example event each mapper's output equals the guide's example exactly."""

import json
from decimal import Decimal

import pytest

from impactin_pipelines.domain.errors import InvalidEvent
from impactin_pipelines.domain.events import parse_event
from impactin_pipelines.domain.providers import Provider
from impactin_pipelines.mapping.encoding import encode_json
from impactin_pipelines.mapping.payloads import build_payload
from impactin_pipelines.providers.benevity.mapping import benevity_payload
from impactin_pipelines.providers.goodera.mapping import goodera_payload
from impactin_pipelines.providers.workday.mapping import prettify, unit_label, workday_rest_payload, workday_soap_report
from tests.spec_examples import SPEC_BENEVITY, SPEC_GOODERA, SPEC_WORKDAY_REST
from tests.support import SPEC_EVENT


@pytest.fixture
def spec_event():
    return parse_event(SPEC_EVENT)


def test_benevity_payload_equals_the_guide(spec_event) -> None:
    assert benevity_payload(spec_event) == json.loads(SPEC_BENEVITY)


def test_goodera_payload_equals_the_guide(spec_event) -> None:
    assert goodera_payload(spec_event) == json.loads(SPEC_GOODERA)


def test_workday_rest_payload_equals_the_guide(spec_event) -> None:
    assert workday_rest_payload(spec_event) == json.loads(SPEC_WORKDAY_REST)


def test_workday_soap_values_follow_the_guide_example(spec_event) -> None:
    report = workday_soap_report(spec_event)["CSR_Impact_Report"]
    assert report["External_Reference_ID"] == "evt_123"
    assert report["Report_Date"] == "2025-11-14"
    assert report["CSR_Activity"] == {"Activity_Type": "Volunteer Hours", "Value": "5.0", "Unit_of_Measure": "Hours"}


def test_encoded_body_keeps_the_spec_number_shape_and_key_order(spec_event) -> None:
    body = encode_json(benevity_payload(spec_event))
    assert b'"value":5.0' in body
    assert body.startswith(b'{"schema_version":"v1.0","event":{"id":"evt_123"')
    assert json.loads(body) == json.loads(SPEC_BENEVITY)


def test_goodera_dimensions_keep_the_platform_order() -> None:
    event = parse_event({**SPEC_EVENT, "outcome_scores": {"zeta": 0.1, "alpha": 1, "mid": 0}})
    assert [d["dimension_name"] for d in goodera_payload(event)["event"]["impact"]["dimensions"]] == [
        "zeta",
        "alpha",
        "mid",
    ]


def test_no_outcome_scores_gives_an_empty_dimension_list() -> None:
    event = parse_event({**SPEC_EVENT, "outcome_scores": None})
    assert goodera_payload(event)["event"]["impact"]["dimensions"] == []


@pytest.mark.parametrize(
    ("score", "reason"),
    [(7.5, "between 0 and 1"), (-0.1, "between 0 and 1"), ("high", "a number"), (True, "a number"), (None, "a number")],
)
def test_goodera_refuses_scores_that_are_not_normalised(score, reason) -> None:
    event = parse_event({**SPEC_EVENT, "outcome_scores": {"community_engagement": score}})
    with pytest.raises(InvalidEvent) as err:
        goodera_payload(event)
    assert err.value.field == "outcome_scores.community_engagement"
    assert reason in str(err.value)
    # Benevity does not carry scores: the same event is deliverable there.
    assert build_payload(Provider.BENEVITY, event)["event"]["id"] == "evt_123"


@pytest.mark.parametrize(
    ("raw", "expected"),
    [("volunteer_hours", "Volunteer Hours"), ("course_completion", "Course Completion"), ("donation", "Donation")],
)
def test_activity_types_are_prettified_for_soap(raw: str, expected: str) -> None:
    assert prettify(raw) == expected


@pytest.mark.parametrize(
    ("unit", "label"), [("hours", "Hours"), ("HOURS", "Hours"), ("usd", "USD"), ("trees", "Trees")]
)
def test_units_are_labelled(unit: str, label: str) -> None:
    assert unit_label(unit) == label


@pytest.mark.parametrize(
    ("field", "raw", "element"),
    [
        ("event_type", "___", "Activity_Type"),
        ("event_type", "-_-", "Activity_Type"),
        ("event_type", "_\u200b_", "Activity_Type"),
        ("unit", "___", "Unit_of_Measure"),
        ("unit", "_ _", "Unit_of_Measure"),
    ],
)
def test_workday_refuses_codes_that_prettify_to_nothing(field: str, raw: str, element: str) -> None:
    """Workday requires both elements; an empty one is refused before sending, naming the field and its value.
    REST sends the event type as it is, so only an empty unit label stops it there."""
    event = parse_event({**SPEC_EVENT, field: raw})
    with pytest.raises(InvalidEvent) as err:
        workday_soap_report(event)
    assert (err.value.field, err.value.value) == (field, raw)
    assert f"maps to an empty Workday {element}" in str(err.value)
    if field == "unit":
        with pytest.raises(InvalidEvent):
            workday_rest_payload(event)
    else:
        assert workday_rest_payload(event)["impact_report"]["csr_activity"]["activity_type"] == raw
    assert build_payload(Provider.BENEVITY, event)["event"]["id"] == "evt_123"  # the other providers take it


def test_negative_zero_is_sent_as_zero() -> None:
    event = parse_event({**SPEC_EVENT, "value": "-0", "outcome_scores": '{"community_engagement": -0.0}'})
    assert encode_json(benevity_payload(event)).count(b'"value":0.0') == 1
    assert b"-0" not in encode_json(goodera_payload(event))
    assert workday_soap_report(event)["CSR_Impact_Report"]["CSR_Activity"]["Value"] == "0.0"
    assert b"-0" not in encode_json(workday_rest_payload(event))


def test_workday_soap_value_keeps_a_decimal_place() -> None:
    whole = parse_event({**SPEC_EVENT, "value": 5})
    fractional = parse_event({**SPEC_EVENT, "value": "2.25"})
    assert workday_soap_report(whole)["CSR_Impact_Report"]["CSR_Activity"]["Value"] == "5.0"
    assert workday_soap_report(fractional)["CSR_Impact_Report"]["CSR_Activity"]["Value"] == "2.25"
    assert fractional.value == Decimal("2.25")


def test_offset_timestamps_are_sent_in_utc() -> None:
    event = parse_event({**SPEC_EVENT, "occurred_at": "2025-11-14T12:00:00+02:00"})
    assert benevity_payload(event)["event"]["timestamp"] == "2025-11-14T10:00:00Z"
    assert workday_soap_report(event)["CSR_Impact_Report"]["Report_Date"] == "2025-11-14"
