"""Property-based tests (hypothesis): the validation gate, the mappers, the small parsers and the retry schedule hold
their promises for any input, not just the examples we thought of. Example counts stay modest: seconds, not minutes.
"""

import json
import math
import random
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from impactin_pipelines.connectors.retry import MAX_AUTH_REFRESHES, RetryPolicy, Spent, Step, parse_retry_after
from impactin_pipelines.domain.errors import InvalidEvent
from impactin_pipelines.domain.events import MAX_VALUE, ImpactEvent, parse_event
from impactin_pipelines.domain.periods import parse_bound
from impactin_pipelines.domain.providers import Provider
from impactin_pipelines.domain.statuses import AttemptOutcome
from impactin_pipelines.mapping.encoding import encode_json
from impactin_pipelines.mapping.payloads import build_payload
from impactin_pipelines.providers.goodera.mapping import NORMALIZED_SCALE, goodera_payload
from impactin_pipelines.providers.workday.soap import soap_arguments
from impactin_pipelines.settings import RetrySettings

FAST = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
FIELDS = (
    "event_id",
    "company_id",
    "user_id",
    "event_type",
    "occurred_at",
    "value",
    "unit",
    "outcome_scores",
    "metadata",
)

# -- strategies ----------------------------------------------------------------------------------------------------
_printable = st.characters(blacklist_categories=("Cs", "Cc"))


def _accepted_as(field: str) -> Any:
    """Texts the gate takes for `field` (ids: nothing invisible at either end; codes: something visible)."""

    def accepted(text: str) -> bool:
        try:
            parse_event({**_GOOD, field: text})
        except InvalidEvent:
            return False
        return True

    return accepted


_GOOD = {
    "event_id": "evt_1",
    "company_id": "acme",
    "user_id": "user_1",
    "event_type": "volunteer_hours",
    "occurred_at": "2025-11-14T10:00:00Z",
    "value": "5",
    "unit": "hours",
}
ident = st.text(_printable, min_size=1, max_size=40).filter(_accepted_as("user_id"))
padded_text = st.text(_printable, min_size=1, max_size=40).filter(_accepted_as("event_type"))  # codes are trimmed
company_ids = st.from_regex(r"\A[A-Za-z0-9][A-Za-z0-9_.:@-]{0,30}\Z").filter(lambda c: "..." not in c)
offsets = st.integers(-14 * 60, 14 * 60).map(lambda m: timezone(timedelta(minutes=m)))
moments = st.datetimes(min_value=datetime(1900, 1, 1), max_value=datetime(2200, 1, 1), timezones=offsets)
timestamps = st.one_of(
    moments,
    moments.map(lambda m: m.isoformat()),
    moments.map(lambda m: m.astimezone(UTC).replace(tzinfo=None).isoformat() + "Z"),
)
values = st.one_of(
    st.integers(0, 10**15),
    st.floats(0, 1e15).filter(lambda f: f == 0 or f >= 1e-9),
    st.decimals(0, MAX_VALUE, places=6).map(str),
)
json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(10**12), 10**12),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=12),
)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=12,
)
json_objects = st.dictionaries(st.text(max_size=10), json_values, max_size=5)
scores = st.dictionaries(ident, st.floats(0, 1), max_size=4)


@st.composite
def valid_raw_events(draw: st.DrawFn) -> dict[str, Any]:
    """A raw event as the warehouse (text) or the API (native JSON types) hands it over; every one is valid."""
    outcome_scores = draw(scores)
    metadata = draw(json_objects)
    as_text = draw(st.booleans())
    return {
        "event_id": draw(ident),
        "company_id": draw(company_ids),
        "user_id": draw(ident),
        "event_type": draw(padded_text),
        "occurred_at": draw(timestamps),
        "value": draw(values),
        "unit": draw(padded_text),
        "outcome_scores": json.dumps(outcome_scores) if as_text else outcome_scores,
        "metadata": json.dumps(metadata) if as_text else metadata,
    }


anything = st.one_of(
    json_values,
    st.floats(),
    st.integers(),
    st.decimals(),
    st.binary(max_size=20),
    st.datetimes(),
    st.datetimes(timezones=offsets),
    st.text(),
    st.sampled_from(
        ["NaN", "Infinity", "-1", "1e999", "1E-99999", "0001-01-01T00:00:00+01:00", "9999-12-31T23:59-01:00"]
    ),
    st.sampled_from([10**400, -(10**5000), 10**5000, float("nan"), float("-inf"), Decimal("sNaN")]),
    st.sampled_from(['{"a": NaN}', '{"a": 1e400}', '{"a": ' + "1" * 5000 + "}", "[" * 5000, '{"a": "\\ud800"}']),
)


# -- the gate ------------------------------------------------------------------------------------------------------
@FAST
@given(base=valid_raw_events(), broken=st.dictionaries(st.sampled_from(FIELDS), anything, min_size=1, max_size=4))
def test_parse_event_raises_only_invalid_event_on_any_input(base: dict[str, Any], broken: dict[str, Any]) -> None:
    """Any mix of good and hostile fields: either a valid event or InvalidEvent naming a field, never a crash."""
    raw = {**base, **broken}
    try:
        event = parse_event(raw)
    except InvalidEvent as exc:
        assert exc.field.split(".")[0] in FIELDS
        assert str(exc).startswith(f"{exc.field}=") and len(str(exc)) < 400
        return
    assert event.occurred_at.utcoffset() == timedelta(0)
    assert event.value.is_finite() and 0 <= event.value <= MAX_VALUE


@FAST
@given(st.dictionaries(st.one_of(st.sampled_from(FIELDS), st.text(max_size=5)), anything, max_size=12))
def test_parse_event_on_arbitrary_dicts(raw: dict[str, Any]) -> None:
    try:
        event = parse_event(raw)
    except InvalidEvent as exc:
        assert exc.field.split(".")[0] in FIELDS
        return
    assert isinstance(event, ImpactEvent)


# -- the mappers ---------------------------------------------------------------------------------------------------
@FAST
@given(raw=valid_raw_events(), target=st.sampled_from(["benevity", "goodera", "workday-soap", "workday-rest"]))
def test_any_valid_event_maps_to_a_payload_that_round_trips_as_json_and_keeps_its_ids(
    raw: dict[str, Any], target: str
) -> None:
    event = parse_event(raw)
    provider, _, protocol = target.partition("-")
    try:
        payload = build_payload(Provider(provider), event, settings={"protocol": protocol or "soap"})
    except InvalidEvent as exc:  # Workday's only own rule: a code must leave a label once prettified
        assert provider == "workday" and exc.field in ("event_type", "unit") and "maps to an empty" in exc.reason
        return
    body = encode_json(payload)
    assert json.loads(body) == payload  # what we sign and store is what we meant
    assert event.event_id == raw["event_id"] and event.user_id == raw["user_id"]
    if provider == "benevity":
        e = payload["event"]
        assert (e["id"], e["user"]["external_id"], e["user"]["company_id"]) == (
            event.event_id,
            event.user_id,
            event.company_id,
        )
        assert math.isfinite(e["impact"]["value"]) and e["impact"]["metadata"] == dict(event.metadata)
    elif provider == "goodera":
        e = payload["event"]
        assert (e["external_id"], e["participant"]["external_user_id"]) == (event.event_id, event.user_id)
        assert [d["dimension_name"] for d in e["impact"]["dimensions"]] == list(event.outcome_scores)
    elif protocol == "rest":
        report = payload["impact_report"]
        assert (report["external_reference_id"], report["worker"]["worker_id"]) == (event.event_id, event.user_id)
        assert math.isfinite(report["csr_activity"]["value"])
    else:
        report = payload["CSR_Impact_Report"]
        assert report["External_Reference_ID"] == event.event_id
        assert Decimal(report["CSR_Activity"]["Value"]) == event.value and len(report["CSR_Activity"]["Value"]) <= 40
        arguments = soap_arguments(body.decode())  # the stored payload always becomes a valid SOAP call
        assert arguments["CSR_Impact_Report"]["CSR_Activity"]["Value"] == event.value


@FAST
@given(
    scores=st.dictionaries(
        st.text(max_size=6),
        st.one_of(st.floats(), st.integers(), st.sampled_from([10**400, True, None, "0.5", Decimal("0.5")])),
        max_size=4,
    )
)
def test_goodera_never_labels_an_out_of_range_score_normalized(scores: dict[str, Any]) -> None:
    event = ImpactEvent(
        "evt_1", "acme", "user_1", "volunteer_hours", datetime(2025, 1, 1, tzinfo=UTC), Decimal(1), "hours", scores
    )
    try:
        payload = goodera_payload(event)
    except InvalidEvent as exc:
        assert exc.field.startswith("outcome_scores")
        return
    for dimension in payload["event"]["impact"]["dimensions"]:
        assert dimension["scale"] == NORMALIZED_SCALE
        assert type(dimension["score"]) is float and 0 <= dimension["score"] <= 1


# -- small parsers -------------------------------------------------------------------------------------------------
bound_texts = st.one_of(
    st.text(max_size=40),
    st.dates().map(str),
    st.datetimes(timezones=st.one_of(st.none(), offsets)).map(lambda m: m.isoformat()),
    st.sampled_from(
        ["9999-12-31", "0001-01-01", "9999-12-31T23:59:59-01:00", "0001-01-01T00:00:00+01:00", "2025-13-01"]
    ),
)


@FAST
@given(text=bound_texts, end=st.booleans())
def test_parse_bound_raises_only_value_error_naming_the_field(text: str, end: bool) -> None:
    try:
        moment = parse_bound(text, "endDate", end=end)
    except ValueError as exc:
        assert str(exc).startswith("endDate=")
        return
    assert moment.utcoffset() == timedelta(0)


http_dates = st.datetimes(min_value=datetime(1, 1, 1), max_value=datetime(9999, 12, 31)).map(
    lambda m: m.strftime("%a, %d %b %Y %H:%M:%S GMT")
)


@FAST
@given(
    st.one_of(
        st.none(),
        st.text(max_size=40),
        http_dates,
        st.floats().map(str),
        st.integers().map(str),
        st.sampled_from(["nan", "inf", "-inf", "1e400", "-5", "Wed, 21 Oct 2015 07:28:00 GMT", "Mon, 99 Foo"]),
    )
)
def test_parse_retry_after_never_raises_and_is_a_finite_wait(value: str | None) -> None:
    seconds = parse_retry_after(value, now=datetime(2026, 1, 1, tzinfo=UTC))
    assert seconds is None or (math.isfinite(seconds) and seconds >= 0)


# -- the retry schedule ----------------------------------------------------------------------------------------------
retry_settings = st.builds(
    RetrySettings,
    max_attempts=st.integers(1, 10),
    initial_delay_s=st.floats(0, 60),
    multiplier=st.floats(1, 4),
    max_delay_s=st.floats(0, 600),
    jitter=st.floats(0, 1),
    max_retry_after_s=st.floats(0, 600),
    max_rate_limit_waits=st.integers(0, 20),
)


@FAST
@given(s=retry_settings, attempt=st.integers(1, 2000), seed=st.integers(0, 2**32))
def test_backoff_stays_within_its_jitter_band_and_under_the_cap(s: RetrySettings, attempt: int, seed: int) -> None:
    delay = RetryPolicy(s).backoff(attempt, random.Random(seed))
    try:
        base = min(s.max_delay_s, s.initial_delay_s * s.multiplier ** (attempt - 1))
    except OverflowError:
        base = s.max_delay_s if s.initial_delay_s > 0 else 0.0
    tolerance = 1e-9 * max(1.0, base)
    assert max(0.0, base * (1 - s.jitter)) - tolerance <= delay <= base * (1 + s.jitter) + tolerance
    assert delay <= s.max_delay_s * (1 + s.jitter) + tolerance


outcomes = st.sampled_from(list(AttemptOutcome))
retry_afters = st.one_of(st.none(), st.floats(0, 10_000))


@FAST
@given(s=retry_settings, burned=st.integers(1, 30), retry_after=retry_afters, seed=st.integers(0, 2**32))
def test_a_retryable_outcome_is_never_retried_past_max_attempts(
    s: RetrySettings, burned: int, retry_after: float | None, seed: int
) -> None:
    decision = RetryPolicy(s).decide(
        AttemptOutcome.RETRYABLE, Spent(burned=burned - 1), retry_after_s=retry_after, rng=random.Random(seed)
    )
    assert decision.spent.burned == burned
    if burned >= s.max_attempts:
        assert decision.step is Step.PARK
    if decision.step is Step.RETRY:
        assert burned < s.max_attempts and 0 <= decision.delay_s <= s.max_retry_after_s


@FAST
@given(
    s=retry_settings,
    script=st.lists(st.tuples(outcomes, retry_afters, st.booleans()), min_size=1, max_size=60),
    seed=st.integers(0, 2**32),
)
def test_the_delivery_loop_always_ends_and_its_waits_are_bounded(
    s: RetrySettings, script: list[tuple[AttemptOutcome, float | None, bool]], seed: int
) -> None:
    """Drive decide() the way DeliveryRun does, with any sequence of outcomes (the provider's answers, repeated):
    it ends within max_attempts + max_rate_limit_waits + MAX_AUTH_REFRESHES + 1 exchanges, and never waits longer
    than it may."""
    policy, rng = RetryPolicy(s), random.Random(seed)
    spent, exchanges, waited = Spent(), 0, 0.0
    limit = s.max_attempts + s.max_rate_limit_waits + MAX_AUTH_REFRESHES + 1
    while True:
        outcome, retry_after, stale = script[exchanges % len(script)]
        exchanges += 1
        assert exchanges <= limit, "the loop did not end"
        decision = policy.decide(outcome, spent, token_stale=stale, retry_after_s=retry_after, rng=rng)
        assert decision.spent.burned == spent.burned + (outcome is AttemptOutcome.RETRYABLE)
        spent = decision.spent
        if decision.step is not Step.RETRY:
            break
        assert 0 <= decision.delay_s <= s.max_retry_after_s
        waited += decision.delay_s
    assert spent.burned <= s.max_attempts and spent.free_waits <= s.max_rate_limit_waits
    assert spent.auth_refreshes <= MAX_AUTH_REFRESHES
    assert waited <= (s.max_attempts + s.max_rate_limit_waits) * s.max_retry_after_s


_UTF8_TEXT = st.text(st.characters(exclude_categories=["Cs"]), max_size=40)


@FAST
@given(_UTF8_TEXT, _UTF8_TEXT, _UTF8_TEXT)
def test_delivery_ids_are_the_uuid5_of_company_provider_and_event(company: str, provider: str, event: str) -> None:
    """The idempotency key never changes: the fast path computes exactly `uuid.uuid5` of the joined names."""
    import uuid

    from impactin_pipelines.domain.identity import DELIVERY_NAMESPACE, delivery_id_for

    expected = str(uuid.uuid5(DELIVERY_NAMESPACE, "\x1f".join((company, provider, event))))
    assert delivery_id_for(company, provider, event) == expected
