"""Goodera end to end over loopback on both backends: extract -> claim -> token -> quota slot -> send -> settle.
The guide's payload example is the golden test; tokens, 401s, 429s and broken configuration go through the real
delivery loop and the fake Goodera."""

import json
import time

import pytest
from sqlalchemy import event as sa_event

from impactin_pipelines.connectors.base import OutboundDelivery
from impactin_pipelines.connectors.registry import ConnectorFactory
from impactin_pipelines.domain.providers import Provider
from impactin_pipelines.domain.statuses import RowOutcome
from impactin_pipelines.providers.env import ProviderEnv
from impactin_pipelines.providers.goodera.connector import GooderaConnector
from impactin_pipelines.providers.goodera.fake import CLIENT_SECRET, ENDPOINT
from impactin_pipelines.security.crypto import generate_key, load_keyring
from impactin_pipelines.services.extract import extract
from tests.spec_examples import GOODERA_EXAMPLE
from tests.support import (
    SPEC_EVENT,
    add_events,
    add_integration,
    attempts,
    deliver,
    event,
    events,
    fast_settings,
    rows,
    statuses,
)

GOODERA = Provider.GOODERA


@pytest.fixture(autouse=True)
def _env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("IMPACTIN_ENCRYPTION_KEY", generate_key())


@pytest.fixture
def fake(sandbox):
    """The fake Goodera with a roomy quota: these tests are about behaviour, test_rate_limit is about the quota."""
    goodera = sandbox.providers["goodera"]
    goodera.configure({"rate_limit": {"limit": 1000, "window_s": 60}})
    return goodera


def factory(engine, sandbox, *, settings=None, **env: str | None) -> ConnectorFactory:
    merged = {**sandbox.env(), "GOODERA_RATE_LIMIT": "1000/minute", **env}
    return ConnectorFactory(
        engine,
        env=ProviderEnv.from_env({k: v for k, v in merged.items() if v}),
        settings=settings or fast_settings(),
    )


def setup(engine, company: str = "acme", rows_: list | None = None, settings=None) -> None:
    add_integration(engine, company, "goodera", settings=settings)
    add_events(engine, rows_ if rows_ is not None else events(company, 1))
    extract(engine, company, GOODERA)


def api_requests(fake) -> list[dict]:
    return [r for r in fake.snapshot()["requests"] if r["path"] == ENDPOINT]


def encrypted(value: str) -> dict[str, str]:
    return {"encrypted": load_keyring().encrypt(value)}


# -- the golden payload -------------------------------------------------------------------------------------------
def test_the_spec_event_arrives_as_the_guides_example(engine, sandbox, fake) -> None:
    setup(engine, "company_789", [SPEC_EVENT])
    report = deliver(engine, factory(engine, sandbox), "goodera")
    assert report.totals.outcomes[RowOutcome.SUCCESS] == 1
    [row] = rows(engine)
    assert json.loads(row["payload"]) == GOODERA_EXAMPLE  # what we stored is the guide's example ...
    [accepted] = fake.snapshot()["accepted"]
    assert accepted["body"] == GOODERA_EXAMPLE  # ... and what Goodera received, with our idempotency key
    assert accepted["idempotency_key"] == row["delivery_id"]
    assert row["status"] == "success" and row["attempt_count"] == 1
    [attempt] = attempts(engine, row["delivery_id"])
    assert attempt["http_status"] == 201 and attempt["outcome"] == "success"
    assert fake.oauth.stats()["token_requests"] == 1


def test_scores_are_validated_and_bad_events_never_sent(engine, sandbox, fake) -> None:
    setup(
        engine,
        "acme",
        [
            event("evt_too_high", outcome_scores={"community_engagement": 7.5}),
            event("evt_text", outcome_scores={"community_engagement": "high"}),
            event("evt_none", outcome_scores={}),
        ],
    )
    deliver(engine, factory(engine, sandbox), "goodera")
    by_event = {r["event_id"]: r for r in rows(engine)}
    for bad in ("evt_too_high", "evt_text"):
        assert by_event[bad]["status"] == "failed" and by_event[bad]["error_kind"] == "invalid_event"
        assert "outcome_scores.community_engagement" in by_event[bad]["last_error"]
    assert by_event["evt_none"]["status"] == "success"
    [accepted] = fake.snapshot()["accepted"]
    assert accepted["event_id"] == "evt_none" and accepted["body"]["event"]["impact"]["dimensions"] == []
    assert len(api_requests(fake)) == 1


def test_a_second_send_of_the_same_delivery_is_deduplicated(engine, sandbox, fake) -> None:
    setup(engine)
    [row] = rows(engine)
    connector = factory(engine, sandbox).connector("acme", GOODERA)
    outbound = OutboundDelivery(row["delivery_id"], "acme", "goodera", row["event_id"], row["payload"])
    first, second = connector.send(outbound), connector.send(outbound)
    assert (first.http_status, second.http_status) == (201, 200) and second.response_body is not None
    assert json.loads(second.response_body)["duplicate"] is True and len(fake.snapshot()["accepted"]) == 1


def test_the_dry_run_request_never_shows_the_token(engine, sandbox, fake) -> None:
    setup(engine)
    [row] = rows(engine)
    connector = factory(engine, sandbox).connector("acme", GOODERA)
    assert isinstance(connector, GooderaConnector)
    outbound = OutboundDelivery(row["delivery_id"], "acme", "goodera", row["event_id"], row["payload"])
    token = connector.oauth.bearer()
    shown = connector.prepare(outbound, token).masked()
    headers, url = shown["headers"], shown["url"]
    assert isinstance(headers, dict) and isinstance(url, str)
    assert token not in json.dumps(shown) and headers["Authorization"] == "***"
    assert headers["X-Idempotency-Key"] == row["delivery_id"]
    assert url.endswith("/goodera/v2/events/impact")


# -- tokens in the delivery loop ------------------------------------------------------------------------------------
def test_a_401_refetches_the_token_and_does_not_burn_an_attempt(engine, sandbox, fake) -> None:
    setup(engine, rows_=events("acme", 1, prefix="warm"))
    settings = fast_settings(retry={"max_attempts": 1})
    deliver(engine, factory(engine, sandbox, settings=settings), "goodera")  # fetches and stores a token
    add_events(engine, [event("evt_after_expiry")])
    extract(engine, "acme", GOODERA)
    fake.configure({"expire_tokens": True})  # Goodera forgets the token: the stored one now gets 401
    deliver(engine, factory(engine, sandbox, settings=settings), "goodera")
    [row] = rows(engine, event_id="evt_after_expiry")
    assert row["status"] == "success"  # with one attempt allowed: the 401 did not count
    outcomes = [(a["outcome"], a["http_status"]) for a in attempts(engine, row["delivery_id"])]
    assert outcomes == [("auth_expired", 401), ("success", 201)]
    assert fake.oauth.stats()["token_requests"] == 2


def test_short_lived_tokens_are_fresh_when_the_request_leaves_not_when_it_queued(engine, sandbox, fake) -> None:
    """The default quota (100/minute: one request every 0.6 s) makes rows queue for their slot longer than a token
    lives: each request must still leave with a token that has not expired."""
    n = 10
    fake.configure({"token_expires_in": 1, "rate_limit": {"limit": 100, "window_s": 60}})
    setup(engine, rows_=events("acme", n))
    started = time.monotonic()
    deliver(engine, factory(engine, sandbox, GOODERA_RATE_LIMIT=None), "goodera")  # the default 100/minute
    elapsed = time.monotonic() - started
    assert statuses(engine) == {"success": n}
    assert [a["outcome"] for a in attempts(engine)] == ["success"] * n  # not one 401 on the way
    oauth = fake.oauth.stats()
    assert oauth["bearer_refusals"] == {"missing": 0, "expired": 0, "unknown": 0, "refused": 0}
    assert [r["status"] for r in api_requests(fake)] == [201] * n
    assert elapsed > (n - 1) * 0.6 * 0.9  # the quota really held the rows back for longer than a token lives
    # a token is re-fetched only once half its life (0.5 s) has passed: at most one per half-second, never per retry
    assert 2 <= oauth["token_requests"] <= elapsed / 0.5 + 1


def test_a_current_token_the_api_refuses_after_a_refresh_fails_as_config(engine, sandbox, fake) -> None:
    setup(engine)
    fake.configure({"api_refuses_tokens": True})  # the token endpoint issues tokens the API will not take
    deliver(engine, factory(engine, sandbox), "goodera")
    [row] = rows(engine)
    assert (row["status"], row["error_kind"], row["attempt_count"]) == ("failed", "config", 2)
    assert [a["outcome"] for a in attempts(engine, row["delivery_id"])] == ["auth_expired", "auth_expired"]
    assert "refused a current access token" in row["last_error"]
    assert fake.oauth.stats()["token_requests"] == 2  # the first 401 fetched one new token, for free


def test_token_endpoint_down_leaves_the_row_retrying(engine, sandbox, fake) -> None:
    setup(engine)
    fake.configure({"token_fail_next": {"status": 503, "count": 10}})
    deliver(engine, factory(engine, sandbox), "goodera")
    [row] = rows(engine)
    assert (row["status"], row["error_kind"]) == ("retrying", "transient")
    assert "token endpoint unavailable (HTTP 503)" in row["last_error"]
    assert [a["outcome"] for a in attempts(engine, row["delivery_id"])] == ["retryable"] * 3
    assert api_requests(fake) == []  # nothing reached the API without a token


def test_refused_credentials_fail_only_that_company_as_config(engine, sandbox, fake) -> None:
    wrong = "acme-has-a-wrong-goodera-secret"
    setup(engine, "acme", events("acme", 2), settings={"client_secret": encrypted(wrong)})
    setup(engine, "globex", events("globex", 2))
    deliver(engine, factory(engine, sandbox), "goodera")
    for row in rows(engine, company_id="acme"):
        assert (row["status"], row["error_kind"]) == ("failed", "config")
        assert "refused the client credentials" in row["last_error"]
        stored = json.dumps([row, attempts(engine, row["delivery_id"])], default=str)
        assert wrong not in stored and CLIENT_SECRET not in stored
    assert {r["status"] for r in rows(engine, company_id="globex")} == {"success"}
    assert fake.oauth.stats()["token_requests"] == 2  # acme's refused credentials were offered once, not per row


def test_refused_environment_credentials_are_offered_once_for_every_company(engine, sandbox, fake) -> None:
    """Every company on the environment's credentials: refused once, that refusal answers the others (a night of a
    thousand companies must not offer a refused secret a thousand times: providers lock such accounts)."""
    wrong = "the-environments-wrong-goodera-secret"
    companies = [f"co{i}" for i in range(6)]
    for company in companies:
        setup(engine, company, events(company, 2))
    deliver(engine, factory(engine, sandbox, GOODERA_CLIENT_SECRET=wrong), "goodera")
    assert fake.oauth.stats()["token_requests"] == 1
    for company in companies:
        for row in rows(engine, company_id=company):
            assert (row["status"], row["error_kind"]) == ("failed", "config"), row
            assert "refused the client credentials of the environment" in row["last_error"], row
            assert wrong not in row["last_error"]
    assert api_requests(fake) == []


def test_incomplete_configuration_names_what_is_missing(engine, sandbox, fake) -> None:
    setup(engine)
    deliver(engine, factory(engine, sandbox, GOODERA_TOKEN_URL=None, GOODERA_CLIENT_SECRET=None), "goodera")
    [row] = rows(engine)
    assert (row["status"], row["error_kind"]) == ("failed", "config")
    assert "GOODERA_TOKEN_URL" in row["last_error"] and "GOODERA_CLIENT_SECRET" in row["last_error"]
    assert fake.snapshot()["requests"] == []


@pytest.mark.parametrize(
    ("settings", "env", "expected"),
    [
        (None, {"GOODERA_RATE_LIMIT": "lots"}, "GOODERA_RATE_LIMIT='lots' is not a rate"),
        ({"rate_limit": "0/minute"}, {}, "settings.rate_limit for acme/goodera='0/minute'"),
        ({"client_secret": "plain-text"}, {}, "must be stored encrypted"),
        (None, {"GOODERA_API_URL": "http://goodera.example.com"}, "must use https"),
        (None, {"GOODERA_TOKEN_URL": "http://goodera.example.com/oauth/token"}, "GOODERA_TOKEN_URL='http://"),
    ],
)
def test_bad_settings_are_config_errors_naming_the_field(engine, sandbox, fake, settings, env, expected) -> None:
    setup(engine, settings=settings)
    deliver(engine, factory(engine, sandbox, **env), "goodera")
    [row] = rows(engine)
    assert (row["status"], row["error_kind"]) == ("failed", "config")
    assert expected in row["last_error"]


def test_per_company_settings_override_the_environment(engine, sandbox, fake) -> None:
    goodera_url = sandbox.provider_url("goodera")
    settings = {
        "api_url": goodera_url,
        "token_url": goodera_url + "/oauth/token",
        "client_id": fake.client_id,
        "client_secret": encrypted(fake.client_secret),
    }
    setup(engine, settings=settings)
    env = {
        name: None for name in ("GOODERA_API_URL", "GOODERA_TOKEN_URL", "GOODERA_CLIENT_ID", "GOODERA_CLIENT_SECRET")
    }
    deliver(engine, factory(engine, sandbox, **env), "goodera")
    assert statuses(engine) == {"success": 1}


# -- the provider says slow down --------------------------------------------------------------------------------------
def test_429_pauses_every_sender_and_costs_no_attempt(engine, sandbox, fake) -> None:
    # stricter than what we were told (600/minute), and silent until it refuses
    fake.configure({"rate_limit": {"limit": 3, "window_s": 1.5}, "rate_limit_headers": False})
    setup(engine, rows_=events("acme", 6))
    settings = fast_settings(retry={"max_attempts": 1})
    deliver(engine, factory(engine, sandbox, settings=settings, GOODERA_RATE_LIMIT="600/minute"), "goodera")
    assert statuses(engine) == {"success": 6}  # every 429 was waited out for free
    snapshot = fake.snapshot()
    assert snapshot["rate_limited"] >= 1
    waits = [a for a in attempts(engine) if a["outcome"] == "rate_limited"]
    assert waits and all(a["http_status"] == 429 for a in waits)


def test_remaining_zero_pauses_before_the_provider_has_to_refuse(engine, sandbox, fake) -> None:
    fake.configure({"rate_limit": {"limit": 2, "window_s": 1.2}})
    setup(engine, rows_=events("acme", 4))
    settings = fast_settings(concurrency=1)
    deliver(engine, factory(engine, sandbox, settings=settings, GOODERA_RATE_LIMIT="600/minute"), "goodera")
    assert statuses(engine) == {"success": 4}
    snapshot = fake.snapshot()
    assert snapshot["rate_limited"] == 0  # our limiter alone (600/minute) would have been refused
    assert len(snapshot["admitted_at"]) == 4


# -- connectivity check ---------------------------------------------------------------------------------------------
def test_check_fetches_a_token_and_sends_no_impact_data(engine, sandbox, fake) -> None:
    add_integration(engine, "acme", "goodera")
    good = factory(engine, sandbox).connector("acme", GOODERA).check()
    wrong = "a-rotated-goodera-secret"
    bad = factory(engine, sandbox, GOODERA_CLIENT_SECRET=wrong).connector("acme", GOODERA).check()
    assert good.ok and "token issued" in good.detail
    assert not bad.ok and "refused the client credentials" in bad.detail and wrong not in bad.detail
    assert fake.oauth.stats()["token_requests"] == 2  # the bad check asked, rather than reusing the stored token
    assert api_requests(fake) == [] and fake.snapshot()["accepted"] == []


def test_settings_read_ahead_build_each_company_its_own_connector_without_reading_them_again(engine, sandbox) -> None:
    """A run reads the settings of a claim batch's companies in one query (`preload`); building their connectors
    then reads nothing more, each still gets its own settings, and a company without an integration gets what it
    would get without the read-ahead (the environment's settings)."""
    add_integration(engine, "alpha", "goodera", settings={"client_id": "alpha-client", "rate_limit": "10/minute"})
    add_integration(engine, "beta", "goodera", settings={"client_id": "beta-client", "rate_limit": "20/minute"})
    built = factory(engine, sandbox)
    built.preload(GOODERA, ["alpha", "beta", "nobody"])
    reads: list[str] = []

    def count(conn, cursor, statement, parameters, context, executemany) -> None:
        if "company_integrations" in statement:
            reads.append(statement)

    sa_event.listen(engine, "before_cursor_execute", count)
    try:
        alpha, beta = built.connector("alpha", GOODERA), built.connector("beta", GOODERA)
        without_preload = factory(engine, sandbox).connector("nobody", GOODERA)
        reads_without_preload = len(reads)
        nobody = built.connector("nobody", GOODERA)
    finally:
        sa_event.remove(engine, "before_cursor_execute", count)
    assert isinstance(alpha, GooderaConnector) and isinstance(beta, GooderaConnector)
    assert isinstance(nobody, GooderaConnector) and isinstance(without_preload, GooderaConnector)
    assert nobody.config == without_preload.config  # no integration: the environment's settings, either way
    assert (alpha.config.client_id, alpha.config.rate.limit) == ("alpha-client", 10)
    assert (beta.config.client_id, beta.config.rate.limit) == ("beta-client", 20)
    assert reads_without_preload == 1 and len(reads) == 1  # only the factory without the read-ahead read them
    built.preload(GOODERA, ["alpha", "nobody"])  # built already: nothing to read
    assert len(reads) == 1
