"""The bad-input catalogue: malformed events and settings, each with its expected outcome, through the real pipeline
(extract + DeliveryRun over loopback to the sandbox, `impactin run` for what only Dagster can get wrong) on SQLite
and PostgreSQL.

Policy: an event that cannot be delivered as it is becomes `failed/invalid_event` with the field and its value in
`last_error`, and is never sent; an event that is in fact valid (an offset timestamp, a number written as text,
Unicode) is delivered; the good events around either kind are delivered exactly once. Broken settings fail only
their own integration, as `config`.

The whole catalogue lands in one warehouse per backend and runs once (every bad event among all the others, so
one bad row stopping the rest would show); each case is then one parametrised test reading its own outcome.
(Per-field messages of the gate itself are tests/test_events.py; the API's 400s and 409s are tests/api/.)
"""

import dataclasses
import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from impactin_pipelines.connectors.ratelimit import close_shared_limiters
from impactin_pipelines.connectors.registry import ConnectorFactory
from impactin_pipelines.domain.providers import PROVIDERS, Provider
from impactin_pipelines.providers.env import ProviderEnv
from impactin_pipelines.sandbox.server import SandboxServer
from impactin_pipelines.security.crypto import KeyRing, generate_key
from impactin_pipelines.services.deliver import DeliveryRun
from impactin_pipelines.services.extract import extract
from impactin_pipelines.store.schema import company_integrations, impact_events
from impactin_pipelines.store.source import work_by_provider
from tests.cli_support import cli_env, run_cli
from tests.conftest import BACKENDS, _migrated, fresh_postgres_url
from tests.support import SPEC_EVENT, add_events, add_integration, event, fast_settings, rows

QUARANTINED = "quarantined"  # failed/invalid_event, last_error names field and value, never sent
DELIVERED = "delivered"  # in fact valid: success, accepted once by the provider


@dataclass(frozen=True)
class NotUtf8:
    """Raw bytes written into a TEXT column as another system would (`{c}` is the case's company id)."""

    data: bytes


@dataclass(frozen=True)
class Case:
    id: str
    fields: dict[str, Any]  # overrides of a good event; str values may use {c} for the company id
    outcome: str
    field: str | None = None  # the field the error names
    shows: str | None = None  # how the value appears in last_error
    reason: str | None = None
    providers: tuple[str, ...] = ("benevity",)
    sent: dict[str, Any] = dataclasses.field(default_factory=dict)  # in the first provider's payload: path -> value
    twin: bool = False  # also a good event with the bad one's id, stripped (must go out exactly once)
    postgres_refuses: str | None = None  # PostgreSQL refuses the write itself; the message says why
    workday_rest: bool = False  # the company's Workday integration uses REST (default: SOAP)


ALL = tuple(PROVIDERS)
DIGITS_5000 = "1" * 5000
CASES = [
    # -- missing fields and wrong types (the warehouse holds text, so a "type" is what the text says) -------------
    Case("missing_user_id", {"user_id": None}, QUARANTINED, "user_id", "None", "is missing or blank"),
    Case("blank_event_type", {"event_type": "   "}, QUARANTINED, "event_type", "'   '", "is missing or blank"),
    Case("missing_timestamp", {"occurred_at": None}, QUARANTINED, "occurred_at", "None", "missing"),
    Case("value_is_a_word", {"value": "five"}, QUARANTINED, "value", "'five'", "must be a number"),
    Case("value_is_a_json_list", {"value": "[5]"}, QUARANTINED, "value", "'[5]'", "must be a number"),
    Case("metadata_is_an_array", {"metadata": "[1, 2]"}, QUARANTINED, "metadata", "metadata=[1, 2]", "a JSON object"),
    Case(
        "scores_are_a_string",
        {"outcome_scores": '"high"'},
        QUARANTINED,
        "outcome_scores",
        "outcome_scores='high'",
        "object",
    ),
    Case("numeric_user_id", {"user_id": "456"}, DELIVERED, providers=ALL, sent={"event.user.external_id": "456"}),
    Case("value_as_padded_text", {"value": " 7.5 "}, DELIVERED, providers=ALL, sent={"event.impact.value": 7.5}),
    # -- NaN, infinity and numbers no provider can carry ------------------------------------------------------------
    Case("nan_value", {"value": "NaN"}, QUARANTINED, "value", "'NaN'", "must be a finite number"),
    Case("infinite_value", {"value": "Infinity"}, QUARANTINED, "value", "'Infinity'", "must be a finite number"),
    Case("negative_value", {"value": "-3"}, QUARANTINED, "value", "'-3'", "must not be negative"),
    Case("value_beyond_a_float", {"value": "1e400"}, QUARANTINED, "value", "'1e400'", "must not be larger than 1e+15"),
    Case(
        "value_with_a_billion_decimals",  # would print a billion zeros into the SOAP envelope
        {"value": "1E-999999999"},
        QUARANTINED,
        "value",
        "'1E-999999999'",
        "has more than 30 decimal places",
        providers=("workday",),
    ),
    Case("nan_in_metadata", {"metadata": '{"x": NaN}'}, QUARANTINED, "metadata", "NaN", "NaN is not allowed"),
    Case("infinity_in_scores", {"outcome_scores": '{"a": Infinity}'}, QUARANTINED, "outcome_scores", None, "JSON"),
    Case(
        "int_too_long_in_metadata",
        {"metadata": '{"n": ' + DIGITS_5000 + "}"},
        QUARANTINED,
        "metadata",
        '\'{"n": 1111',  # shown cut short, never 5000 digits in a column
        "not valid JSON",
    ),
    # -- huge and hostile documents ---------------------------------------------------------------------------------
    Case(
        "huge_metadata",
        {"metadata": json.dumps({"blob": "x" * 70_000})},
        QUARANTINED,
        "metadata",
        " characters>",  # its size, not its content
        "is larger than 65536 bytes",
    ),
    Case(
        "deeply_nested_metadata", {"metadata": '{"a":' * 5000 + "1" + "}" * 5000}, QUARANTINED, "metadata", None, "JSON"
    ),
    Case("metadata_not_json", {"metadata": "{not json"}, QUARANTINED, "metadata", "'{not json'", "not valid JSON"),
    Case("long_event_type", {"event_type": "x" * 300}, QUARANTINED, "event_type", "'xxx", "longer than 256"),
    Case("control_character", {"unit": "hours\x07"}, QUARANTINED, "unit", "'hours\\x07'", "control characters"),
    Case(
        "nul_character",
        {"unit": "hours\x00"},
        QUARANTINED,
        "unit",
        "'hours\\x00'",
        "control characters",
        postgres_refuses="NUL",
    ),
    Case(
        "unicode_everywhere",
        {"user_id": "użytkownik-🙂", "metadata": '{"program": "نادي البرمجة", "emoji": "🌍"}'},
        DELIVERED,
        providers=ALL,
        sent={"event.user.external_id": "użytkownik-🙂", "event.impact.metadata.emoji": "🌍"},
    ),
    Case("empty_documents", {"metadata": "", "outcome_scores": None}, DELIVERED, sent={"event.impact.metadata": {}}),
    # -- invalid UTF-8 (SQLite keeps any bytes; PostgreSQL validates every text value on write) --------------------
    Case(
        "not_utf8_user_id",
        {"user_id": NotUtf8(b"user_\xff\xfe")},
        QUARANTINED,
        "user_id",
        "'user_\\udcff\\udcfe'",
        "is not valid UTF-8",
        postgres_refuses="invalid byte sequence",
    ),
    Case(
        "not_utf8_event_id",  # the id itself: once crashed extraction for the whole company
        {"event_id": NotUtf8(b"{c}-m\xc3\x28")},
        QUARANTINED,
        "event_id",
        "\\udcc3(",
        "is not valid UTF-8",
        postgres_refuses="invalid byte sequence",
    ),
    Case(
        "not_utf8_metadata",
        {"metadata": NotUtf8(b'{"program": "caf\xe9"}')},
        QUARANTINED,
        "metadata",
        None,
        "is not valid UTF-8",
        postgres_refuses="invalid byte sequence",
    ),
    # -- timestamps -------------------------------------------------------------------------------------------------
    Case(
        "naive_timestamp",
        {"occurred_at": "2025-11-14T10:00:00"},
        QUARANTINED,
        "occurred_at",
        "'2025-11-14T10:00:00'",
        "has no timezone offset",
    ),
    Case(
        "offset_timestamp",
        {"occurred_at": "2025-11-14T11:30:00+01:30"},
        DELIVERED,
        providers=ALL,
        sent={"event.timestamp": "2025-11-14T10:00:00Z"},
    ),
    Case(
        "timestamp_before_year_one_in_utc",
        {"occurred_at": "0001-01-01T00:00:00+01:00"},
        QUARANTINED,
        "occurred_at",
        "'0001-01-01T00:00:00+01:00'",
        "is out of range in UTC",
    ),
    Case("timestamp_is_a_word", {"occurred_at": "yesterday"}, QUARANTINED, "occurred_at", "'yesterday'", "ISO 8601"),
    # -- identities -------------------------------------------------------------------------------------------------
    Case(
        "padded_duplicate_event_id",  # ' x' and 'x' are two rows; trimmed, they would be one id sent twice
        {"event_id": " {c}-m"},
        QUARANTINED,
        "event_id",
        "-m'",
        "leading or trailing whitespace",
        twin=True,
    ),
    Case("event_id_too_long", {"event_id": "{c}-m" + "x" * 300}, QUARANTINED, "event_id", None, "longer than 256"),
    # -- Goodera's outcome scores -----------------------------------------------------------------------------------
    Case(
        "score_out_of_range",
        {"outcome_scores": '{"engagement": 7.5}'},
        QUARANTINED,
        "outcome_scores.engagement",
        "7.5",
        "must be between 0 and 1",
        providers=("goodera",),
    ),
    Case(
        "negative_score",
        {"outcome_scores": '{"engagement": -0.1}'},
        QUARANTINED,
        "outcome_scores.engagement",
        "-0.1",
        "must be between 0 and 1",
        providers=("goodera",),
    ),
    Case(
        "score_is_a_huge_int",  # once an OverflowError that stopped the company's extraction
        {"outcome_scores": '{"engagement": 1' + "0" * 400 + "}"},
        QUARANTINED,
        "outcome_scores.engagement",
        "1000",
        "must be between 0 and 1",
        providers=("goodera",),
    ),
    Case(
        "score_is_a_boolean",
        {"outcome_scores": '{"engagement": true}'},
        QUARANTINED,
        "outcome_scores.engagement",
        "True",
        "must be a number between 0 and 1",
        providers=("goodera",),
    ),
    Case(
        "scores_at_the_bounds",
        {"outcome_scores": '{"low": 0, "high": 1}'},
        DELIVERED,
        providers=("goodera",),
        sent={
            "event.impact.dimensions": [
                {"dimension_name": "low", "score": 0.0, "scale": "normalized_0_1"},
                {"dimension_name": "high", "score": 1.0, "scale": "normalized_0_1"},
            ]
        },
    ),
    Case(
        "score_with_a_blank_name",
        {"outcome_scores": '{" ": 0.5}'},
        QUARANTINED,
        "outcome_scores",
        "' '",
        "dimension names must be non-blank",
        providers=("goodera",),
    ),
    Case(
        "score_is_negative_zero",
        {"outcome_scores": '{"engagement": -0.0}'},
        DELIVERED,
        providers=("goodera",),
        sent={"event.impact.dimensions": [{"dimension_name": "engagement", "score": 0.0, "scale": "normalized_0_1"}]},
    ),
    # -- what the platform never writes, though Python's parsers accept it ------------------------------------------
    Case("value_with_an_underscore", {"value": "1_5"}, QUARANTINED, "value", "'1_5'", "must be a plain number"),
    Case("value_in_fullwidth_digits", {"value": "\uff15"}, QUARANTINED, "value", "'\uff15'", "must be a plain number"),
    Case(
        "value_in_arabic_indic_digits",
        {"value": "\u0661\u0662"},
        QUARANTINED,
        "value",
        "'\u0661\u0662'",
        "must be a plain number",
    ),
    Case(
        "value_is_negative_zero",  # zero, sent as 0.0 (never -0.0) and as Workday's 0.0
        {"value": "-0"},
        DELIVERED,
        providers=ALL,
        sent={"event.impact.value": 0.0},
    ),
    Case(
        "duplicate_key_in_metadata",  # which value wins differs between parsers: none is guessed
        {"metadata": '{"program": "a", "program": "b"}'},
        QUARANTINED,
        "metadata",
        '\'{"program": "a", "program": "b"}\'',
        "has the key 'program' more than once",
        providers=ALL,
    ),
    Case(
        "duplicate_key_in_scores",
        {"outcome_scores": '{"engagement": 0.1, "engagement": 0.9}'},
        QUARANTINED,
        "outcome_scores",
        None,
        "has the key 'engagement' more than once",
        providers=ALL,
    ),
    Case(
        "duplicate_key_in_nested_metadata",
        {"metadata": '{"team": {"lead": "a", "lead": "b"}}'},
        QUARANTINED,
        "metadata",
        None,
        "has the key 'lead' more than once",
    ),
    # -- ids and codes that look fine and are not --------------------------------------------------------------------
    Case(
        "padded_user_id",  # trimmed, it would silently become another worker's id
        {"user_id": " user_456 "},
        QUARANTINED,
        "user_id",
        "' user_456 '",
        "leading or trailing whitespace",
        providers=ALL,
    ),
    Case(
        "user_id_ending_in_a_zero_width_space",
        {"user_id": "user_456\u200b"},
        QUARANTINED,
        "user_id",
        "'user_456\\u200b'",
        "invisible characters",
        providers=ALL,
    ),
    Case(
        "user_id_with_del", {"user_id": "user\x7f456"}, QUARANTINED, "user_id", "'user\\x7f456'", "control characters"
    ),
    Case(
        "user_id_with_a_c1_control",
        {"user_id": "user\x85456"},
        QUARANTINED,
        "user_id",
        "'user\\x85456'",
        "control characters",
    ),
    Case(
        "user_id_of_zero_width_characters",
        {"user_id": "\u200b\u200d\ufeff"},
        QUARANTINED,
        "user_id",
        "'\\u200b\\u200d\\ufeff'",
        "has no visible characters",
        providers=ALL,
    ),
    Case(
        "user_id_with_a_noncharacter",  # U+FFFF cannot be written into the SOAP envelope at all
        {"user_id": "user_456\uffff"},
        QUARANTINED,
        "user_id",
        "'user_456\\uffff'",
        "contains a Unicode noncharacter",
        providers=ALL,
    ),
    Case(
        "user_id_of_a_hangul_filler",  # a letter that renders blank
        {"user_id": "\u3164"},
        QUARANTINED,
        "user_id",
        "'\u3164'",
        "has no visible characters",
    ),
    Case(
        "event_type_of_a_soft_hyphen",
        {"event_type": "\u00ad"},
        QUARANTINED,
        "event_type",
        "'\\xad'",
        "has no visible characters",
    ),
    Case(
        "user_id_with_inner_joiners",  # emoji sequences and Persian names need them: valid
        {"user_id": "\u0645\u06cc\u200c\u0631\u0648-\U0001f469\u200d\U0001f4bb"},
        DELIVERED,
        providers=ALL,
        sent={"event.user.external_id": "\u0645\u06cc\u200c\u0631\u0648-\U0001f469\u200d\U0001f4bb"},
    ),
    Case(
        "event_type_without_a_workday_activity_type",  # Activity_Type would be empty: Workday refuses it
        {"event_type": "___"},
        QUARANTINED,
        "event_type",
        "'___'",
        "maps to an empty Workday Activity_Type",
        providers=("workday",),
    ),
    Case(
        "unit_without_a_workday_unit_of_measure",
        {"unit": "-"},
        QUARANTINED,
        "unit",
        "'-'",
        "maps to an empty Workday Unit_of_Measure",
        providers=("workday",),
    ),
    Case(
        "unit_without_a_workday_unit_of_measure_over_rest",
        {"unit": "_ _"},
        QUARANTINED,
        "unit",
        "'_ _'",
        "maps to an empty Workday Unit_of_Measure",
        providers=("workday",),
        workday_rest=True,
    ),
    Case(
        "event_type_without_workday_letters_over_rest",  # REST sends the code as it is, so it goes out
        {"event_type": "___"},
        DELIVERED,
        providers=("workday",),
        sent={"impact_report.csr_activity.activity_type": "___"},
        workday_rest=True,
    ),
    # -- dates that xsd:date cannot carry as stored ----------------------------------------------------------------
    Case(
        "zero_date_timestamp",  # other systems' "no date": zeep would print 1-01-01
        {"occurred_at": "0001-01-01T00:00:00Z"},
        QUARANTINED,
        "occurred_at",
        "'0001-01-01T00:00:00Z'",
        "is before the year 1000",
        providers=ALL,
    ),
    Case(
        "timestamp_in_year_999",
        {"occurred_at": "0999-12-31T23:59:59+00:00"},
        QUARANTINED,
        "occurred_at",
        "'0999-12-31T23:59:59+00:00'",
        "is before the year 1000",
        providers=("workday",),
    ),
    Case(
        "timestamp_in_year_1000",  # the first year sent, and the date Workday got is the one stored
        {"occurred_at": "1000-01-01T00:00:00Z"},
        DELIVERED,
        providers=("workday", "benevity"),
        sent={"CSR_Impact_Report.Report_Date": "1000-01-01"},
    ),
]
assert len({c.id for c in CASES}) == len(CASES)


# -- the run ---------------------------------------------------------------------------------------------------------
@dataclass
class CatalogueRun:
    backend: str
    engine: Engine
    sandbox: SandboxServer
    refused: dict[str, str]  # case id -> why PostgreSQL refused its write


def _value(engine: Engine, company: str, raw: Any) -> Any:
    if isinstance(raw, NotUtf8):
        data = raw.data.replace(b"{c}", company.encode())
        blob = sa.literal(data, sa.LargeBinary)
        if engine.dialect.name == "sqlite":
            return sa.cast(blob, sa.Text)  # the bytes as they are, as TEXT
        return sa.func.convert_from(blob, "UTF8")  # what a client sending these bytes as text gets
    return raw.replace("{c}", company) if isinstance(raw, str) else raw


def _seed(engine: Engine, case: Case) -> str | None:
    """Good events around the bad one (ids sort before and after it); returns why PostgreSQL refused, if it did."""
    company = case.id
    for provider in case.providers:
        rest = provider == "workday" and case.workday_rest
        add_integration(engine, company, provider, settings={"protocol": "rest"} if rest else None)
    good = [event(f"{company}-a", company), event(f"{company}-z", company)]
    if case.twin:
        good.append(event(f"{company}-m", company))
    add_events(engine, good)
    bad = {**event(f"{company}-m", company), **case.fields}
    values = {name: _value(engine, company, value) for name, value in bad.items()}
    try:
        with engine.begin() as conn:
            conn.execute(impact_events.insert().values(**values))
    except (sa.exc.DBAPIError, ValueError) as exc:
        if engine.dialect.name == "postgresql" and case.postgres_refuses:
            return str(getattr(exc, "orig", exc))
        raise
    return None


@pytest.fixture(scope="module", params=BACKENDS)
def catalogue(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[CatalogueRun]:
    backend = request.param
    if backend == "sqlite":
        url = f"sqlite:///{tmp_path_factory.mktemp('catalogue') / 'warehouse.db'}"
    else:
        url = fresh_postgres_url(request.getfixturevalue("postgres_database"))
    with pytest.MonkeyPatch.context() as env, SandboxServer() as sandbox:
        env.setenv("IMPACTIN_STATE_DIR", str(tmp_path_factory.mktemp("state")))
        engine = next(_migrated(url))
        refused = {c.id: why for c in CASES if (why := _seed(engine, c)) is not None}
        keyring = KeyRing([generate_key()])
        factory = ConnectorFactory(
            engine,
            env=ProviderEnv.from_env({**sandbox.env(), "GOODERA_RATE_LIMIT": "6000/minute"}),  # no spacing needed here
            settings=fast_settings(),
            keyring=lambda: keyring,
        )
        try:
            for case in CASES:
                for provider in case.providers:
                    report = extract(engine, case.id, Provider(provider), batch_size=2)  # pages past the bad row
                    assert report.error is None, report.error
            for provider in PROVIDERS:
                DeliveryRun(engine, factory, provider=Provider(provider), company_ids=None).run()
            yield CatalogueRun(backend, engine, sandbox, refused)
        finally:
            factory.close()
            close_shared_limiters()
            engine.dispose()


def _path(doc: Any, dotted: str) -> Any:
    for part in dotted.split("."):
        doc = doc[part]
    return doc


def _accepted(sandbox: SandboxServer, provider: str) -> list[str]:
    return [record["event_id"] for record in sandbox.providers[provider].snapshot()["accepted"]]


def _received(sandbox: SandboxServer, provider: str, event_id: str) -> Any:
    """The document the provider stored for the event: JSON as parsed, a SOAP report as read from the envelope."""
    [body] = [r["body"] for r in sandbox.providers[provider].snapshot()["accepted"] if r["event_id"] == event_id]
    return body


def _json(value: Any) -> str:
    """Compared as JSON text, where -0.0 and 0.0 differ."""
    return json.dumps(value, sort_keys=True, ensure_ascii=False)


def _requested(sandbox: SandboxServer) -> list[str | None]:
    return [r["event_id"] for p in sandbox.providers.values() for r in p.snapshot()["requests"]]


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input(catalogue: CatalogueRun, case: Case) -> None:
    company = case.id
    good_ids = {f"{company}-a", f"{company}-z"} | ({f"{company}-m"} if case.twin else set())
    for provider in case.providers:
        found = rows(catalogue.engine, company_id=company, provider=provider)
        good = [r for r in found if r["event_id"] in good_ids]
        assert sorted(r["event_id"] for r in good) == sorted(good_ids), "the good events around it were extracted"
        assert all(r["status"] == "success" for r in good), [(r["event_id"], r["last_error"]) for r in good]
        accepted = _accepted(catalogue.sandbox, provider)
        assert all(accepted.count(i) == 1 for i in good_ids), "each good event was accepted exactly once"
        bad = [r for r in found if r["event_id"] not in good_ids]

        if catalogue.backend == "postgres" and case.postgres_refuses:
            assert case.postgres_refuses in catalogue.refused[case.id]  # nothing malformed ever reaches us
            assert bad == []
            continue

        [row] = bad
        if case.outcome == DELIVERED:
            assert (row["status"], row["error_kind"], row["attempt_count"]) == ("success", None, 1)
            assert accepted.count(row["event_id"]) == 1
            payload = json.loads(row["payload"])
            for dotted, expected in case.sent.items() if provider == case.providers[0] else ():
                assert _json(_path(payload, dotted)) == _json(expected)
            received = _received(catalogue.sandbox, provider, row["event_id"])
            stored = payload.get("CSR_Impact_Report", payload)  # SOAP: the report, as the envelope carried it
            assert _json(received) == _json(stored), "the provider got exactly the stored payload"
            continue

        assert (row["status"], row["error_kind"], row["attempt_count"]) == ("failed", "invalid_event", 0)
        assert row["payload"] is None and row["claimed_by"] is None
        error = row["last_error"]
        assert f"{case.field}=" in error and case.reason in error, error
        if case.shows:
            assert case.shows in error, error
        assert len(error) < 600  # a huge value is shown cut short
        assert row["event_id"] not in _requested(catalogue.sandbox), "a quarantined event is never sent"


def test_each_case_left_every_row_settled(catalogue: CatalogueRun) -> None:
    """Nothing stays pending or claimed, and extraction has nothing left to do."""
    every = rows(catalogue.engine)
    assert every and all(r["status"] in ("success", "failed") and r["claimed_by"] is None for r in every)
    from datetime import UTC, datetime

    work = work_by_provider(catalogue.engine, datetime.now(UTC))
    leftover = {c for companies in work.values() for c in companies}
    # An id that is not UTF-8 cannot be written back as itself, so its source row is read (and skipped) again.
    assert leftover <= ({"not_utf8_event_id"} if catalogue.backend == "sqlite" else set())


# -- duplicates the warehouse itself refuses --------------------------------------------------------------------------
def test_a_duplicate_event_id_is_refused_by_the_warehouse_and_the_first_is_delivered_once(engine, sandbox) -> None:
    """`impact_events.event_id` is the primary key: the same id again, or under another company, is the writer's
    error and never reaches us. (Via the API, the same eventId answers 200 or 409: tests/api/test_deliver_api.py.)"""
    from tests.support import deliver, factory_for

    add_integration(engine, "acme", "benevity")
    add_integration(engine, "globex", "benevity")
    add_events(engine, [event("evt_dup", "acme")])
    for again in (event("evt_dup", "acme"), event("evt_dup", "globex", value=9)):
        with pytest.raises(sa.exc.IntegrityError):
            add_events(engine, [again])
    for company in ("acme", "globex"):
        extract(engine, company, Provider.BENEVITY)
    deliver(engine, factory_for(engine, sandbox), "benevity")
    assert [(r["company_id"], r["event_id"], r["status"]) for r in rows(engine)] == [("acme", "evt_dup", "success")]
    assert _accepted(sandbox, "benevity") == ["evt_dup"]


# -- settings ---------------------------------------------------------------------------------------------------------
SETTINGS_CASES = [
    (
        "broken_json",
        "{not json",
        "benevity",
        "company_integrations.settings for broken_json/benevity is not valid JSON",
    ),
    ("json_array", "[1, 2]", "benevity", "company_integrations.settings for json_array/benevity must be a JSON object"),
    ("plain_text_secret", {"api_key": "hunter2-plain"}, "benevity", "must be stored encrypted"),
    ("wrong_type", {"api_url": ["https://a", "https://b"]}, "benevity", "settings.api_url for wrong_type/benevity"),
    ("bad_url", {"api_url": "ftp://benevity.example"}, "benevity", "BENEVITY_API_URL='ftp://benevity.example'"),
    ("unknown_protocol", {"protocol": "carrier-pigeon"}, "workday", "WORKDAY_PROTOCOL='carrier-pigeon'"),
    ("workday_broken_json", "{", "workday", "company_integrations.settings for workday_broken_json/workday"),
]


def test_broken_settings_fail_only_their_own_integration(engine, sandbox) -> None:
    """Each broken `company_integrations.settings` fails its integration as `config`, naming the company, the
    provider and the setting; a healthy company next to them is delivered. Workday cannot even choose a payload
    format without its settings: its events stay unextracted (no row), the run reports why, and they go out once
    the settings are fixed."""
    from tests.support import deliver, factory_for

    add_integration(engine, "healthy", "benevity")
    add_integration(engine, "healthy", "workday")
    add_events(engine, [event("healthy-1", "healthy")])
    for company, settings, provider, _ in SETTINGS_CASES:
        add_integration(engine, company, provider, settings=settings)
        add_events(engine, [event(f"{company}-1", company)])
    reports = {}
    for company in ["healthy", *(c for c, *_ in SETTINGS_CASES)]:
        for provider in ("benevity", "workday"):
            reports[company, provider] = extract(engine, company, Provider(provider))
    factory = factory_for(engine, sandbox)
    for provider in ("benevity", "workday"):
        deliver(engine, factory, provider)
    factory.close()

    assert {(r["provider"], r["status"]) for r in rows(engine, company_id="healthy")} == {
        ("benevity", "success"),
        ("workday", "success"),
    }
    for company, _, provider, message in SETTINGS_CASES:
        if provider == "workday":
            assert message in (reports[company, "workday"].error or "")
            assert rows(engine, company_id=company) == []
            continue
        [row] = rows(engine, company_id=company)
        assert (row["status"], row["error_kind"], row["attempt_count"]) == ("failed", "config", 0)
        assert message in row["last_error"], row["last_error"]
        assert "hunter2-plain" not in row["last_error"]
    assert _accepted(sandbox, "benevity") == ["healthy-1"] and len(_accepted(sandbox, "workday")) == 1


def test_unknown_providers_and_unpartitionable_companies_through_impactin_run(
    engine, warehouse_url, sandbox, tmp_path
) -> None:
    """What only the Dagster path can get wrong: a company id that cannot be a partition key ('|' joins Dagster's
    multi-partition keys; such a key is silently dropped) gets no partition, so its events are quarantined as
    `failed/invalid_event` naming `company_id` and show where operators look (`deliveries list`, `stats`); a
    provider name we do not know is skipped with a warning and reported once by the ledger check (never as
    missing rows); every other integration is delivered, and a malformed event inside a Dagster run is quarantined
    like anywhere else."""
    add_integration(engine, "acme", "benevity")
    add_integration(engine, "acme", "salesforce")  # unknown provider
    add_integration(engine, "acme", "Goodera")  # providers are lower-case names; this one is unknown too
    add_integration(engine, "acme|evil", "benevity")
    add_integration(engine, "acme|evil", "goodera")
    if engine.dialect.name == "sqlite":  # an id that is not even UTF-8 must not stop the others
        with engine.begin() as conn:
            bad_id = sa.cast(sa.literal(b"bad\xff|co", sa.LargeBinary), sa.Text)
            conn.execute(sa.insert(company_integrations).values(company_id=bad_id, provider="benevity", enabled=True))
    add_events(
        engine,
        [
            event("acme-1", "acme"),
            event("acme-2", "acme", value="NaN"),
            event("acme-3", "acme"),
            event("evil-1", "acme|evil"),
            event("evil-2", "acme|evil"),
        ],
    )
    from datetime import UTC, datetime, timedelta

    assert work_by_provider(engine, datetime.now(UTC)) == {"benevity": {"acme", "acme|evil"}, "goodera": {"acme|evil"}}
    env = cli_env(tmp_path, warehouse_url, sandbox)
    done = run_cli(["run", "--json"], env)
    assert done.returncode == 0, done.stderr[-2000:]
    assert (
        "company_id 'acme|evil' cannot be a Dagster partition key; skipped: its events are quarantined as "
        "failed/invalid_event, never delivered"
    ) in done.stderr
    assert "provider 'salesforce', which is not one of benevity, goodera, workday; ignored" in done.stderr
    assert "provider 'Goodera', which is not one of" in done.stderr
    summary = json.loads(done.stdout)
    assert all(r["success"] for r in summary["runs"]) and summary["runs"]
    found = {(r["company_id"], r["provider"], r["event_id"]): r for r in rows(engine)}
    assert set(found) == {
        ("acme", "benevity", "acme-1"),
        ("acme", "benevity", "acme-2"),
        ("acme", "benevity", "acme-3"),
        *((company, provider, f"evil-{i}") for company in ["acme|evil"] for provider in PROVIDERS[:2] for i in (1, 2)),
    }
    assert found["acme", "benevity", "acme-1"]["status"] == found["acme", "benevity", "acme-3"]["status"] == "success"
    bad_value = found["acme", "benevity", "acme-2"]
    assert bad_value["error_kind"] == "invalid_event" and "value='NaN'" in bad_value["last_error"]
    for key, row in found.items():
        if key[0] == "acme|evil":
            assert (row["status"], row["error_kind"], row["attempt_count"]) == ("failed", "invalid_event", 0)
            assert "company_id='acme|evil'" in row["last_error"] and "partition key" in row["last_error"]
    assert sorted(_accepted(sandbox, "benevity")) == ["acme-1", "acme-3"] and _accepted(sandbox, "goodera") == []
    assert not {"evil-1", "evil-2", SPEC_EVENT["event_id"]} & set(_requested(sandbox))

    # where operators look: the delivery list and the statistics count them as invalid events
    listed = run_cli(["deliveries", "list", "--company", "acme|evil", "--json"], env)
    assert listed.returncode == 0, listed.stderr[-2000:]
    data = json.loads(listed.stdout)["data"]
    assert sorted((r["provider"], r["event_id"], r["status"], r["error_kind"]) for r in data) == [
        (provider, f"evil-{i}", "failed", "invalid_event") for provider in PROVIDERS[:2] for i in (1, 2)
    ]
    stats = run_cli(["stats", "--detail", "--json"], env)
    assert stats.returncode == 0, stats.stderr[-2000:]
    detail = json.loads(stats.stdout)["data"]
    assert {r["errorKind"]: r["count"] for r in detail["byErrorKind"]} == {"invalid_event": 5}
    [evil] = [r for r in detail["byCompany"] if r["companyId"] == "acme|evil"]
    assert (evil["total"], evil["failed"]) == (4, 4)

    # the ledger balances; the two unknown providers are reported once each, as a warning
    from impactin_pipelines.services import health
    from impactin_pipelines.settings import CheckSettings

    ledger = health.ledger_balance(engine, CheckSettings(), datetime.now(UTC) + timedelta(hours=30))
    assert (ledger.passed, ledger.severity) == (False, health.WARN), ledger.description
    assert ledger.metrics == {
        "missing_rows": 0,
        "duplicate_rows": 0,
        "double_success": 0,
        "unknown_provider_integrations": 2,
    }
    assert sorted((r["company_id"], r["provider"]) for r in ledger.rows) == [
        ("acme", "Goodera"),
        ("acme", "salesforce"),
    ]
    assert "acme/salesforce" in ledger.description and "acme/Goodera" in ledger.description

    # a second run finds nothing new to quarantine, and sends nothing
    again = run_cli(["run", "--json"], env)
    assert again.returncode == 0, again.stderr[-2000:]
    assert len(rows(engine)) == len(found) and sorted(_accepted(sandbox, "benevity")) == ["acme-1", "acme-3"]


def test_every_delivery_run_quarantines_the_companies_that_cannot_be_partitions(engine, sandbox) -> None:
    """The schedule, backfills and the rerun sensor run the job over partitions, and such a company has none: each
    run's extraction quarantines its events for the run's providers, and the statistics asset shows the company in
    its markdown as one cell ('|' escaped)."""
    import dagster as dg

    from impactin_pipelines.defs.assets.delivery import impact_deliveries, impact_outbox
    from impactin_pipelines.defs.assets.stats import delivery_stats
    from impactin_pipelines.defs.orchestration.partitions import partition_key
    from impactin_pipelines.defs.resources import DeliveryResource, ProvidersResource, WarehouseResource

    add_integration(engine, "acme", "benevity")
    add_integration(engine, "acme|evil", "benevity")
    add_integration(engine, "acme|evil", "workday")  # no workday run below: not quarantined yet
    add_events(engine, [event("acme-1", "acme"), event("evil-1", "acme|evil")])
    resources = {
        "warehouse": WarehouseResource(url=engine.url.render_as_string(hide_password=False)),
        "providers": ProvidersResource(**sandbox.env()),
        "delivery": DeliveryResource(concurrency=2, lease_s=30),
    }
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions("company", ["acme"])
        result = dg.materialize(
            [impact_outbox, impact_deliveries],
            instance=instance,
            partition_key=partition_key("acme", "benevity"),
            resources=resources,
        )
        assert result.success
        stats = dg.materialize([delivery_stats], instance=instance, resources=resources)
        assert stats.success
        summary = stats.asset_materializations_for_node("delivery_stats")[0].metadata["summary"].value
    found = {(r["company_id"], r["provider"], r["event_id"]): r for r in rows(engine)}
    assert set(found) == {("acme", "benevity", "acme-1"), ("acme|evil", "benevity", "evil-1")}
    evil = found["acme|evil", "benevity", "evil-1"]
    assert (evil["status"], evil["error_kind"], evil["attempt_count"]) == ("failed", "invalid_event", 0)
    assert "company_id='acme|evil'" in evil["last_error"]
    assert _accepted(sandbox, "benevity") == ["acme-1"] and "evil-1" not in _requested(sandbox)
    assert isinstance(summary, str)
    lines = summary.splitlines()
    [header] = [line for line in lines if line.startswith("| company |")]
    [company_row] = [line for line in lines if line.startswith("| acme\\|evil |")]
    assert company_row.replace("\\|", "").count("|") == header.count("|")  # one cell, not two
