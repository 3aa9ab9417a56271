"""Workday over REST, end to end over loopback: OAuth2 client credentials from the shared token store, the golden
body, 401 refresh, token endpoint trouble, per-company protocol/tenant overrides, on both backends."""

import json

import sqlalchemy as sa

from impactin_pipelines.connectors.base import OutboundDelivery
from impactin_pipelines.connectors.registry import ConnectorFactory
from impactin_pipelines.domain.events import parse_event
from impactin_pipelines.domain.providers import Provider
from impactin_pipelines.domain.statuses import RowOutcome
from impactin_pipelines.mapping.encoding import encode_json
from impactin_pipelines.providers.env import ProviderEnv
from impactin_pipelines.providers.workday import fake
from impactin_pipelines.providers.workday.mapping import workday_rest_payload
from impactin_pipelines.security.crypto import load_keyring
from impactin_pipelines.services.extract import extract
from impactin_pipelines.store.schema import company_integrations
from tests.spec_examples import WORKDAY_REST_EXAMPLE
from tests.support import (
    SPEC_EVENT,
    add_events,
    add_integration,
    attempts,
    deliver,
    events,
    fast_settings,
    rows,
    statuses,
)

WORKDAY = Provider.WORKDAY


def _factory(engine, sandbox, **env: str) -> ConnectorFactory:
    merged = {k: v for k, v in {**sandbox.env(), "WORKDAY_PROTOCOL": "rest", **env}.items() if v}
    return ConnectorFactory(engine, env=ProviderEnv.from_env(merged), settings=fast_settings())


def _setup(engine, company: str, n: int = 1, settings=None, protocol: str = "rest") -> None:
    add_integration(engine, company, "workday", settings=settings)
    add_events(engine, events(company, n))
    extract(engine, company, WORKDAY, env=ProviderEnv(WORKDAY_PROTOCOL=protocol))


def _encrypted(value: str) -> dict[str, str]:
    return {"encrypted": load_keyring().encrypt(value)}


def _workday(sandbox):
    return sandbox.providers["workday"]


# -- golden body -------------------------------------------------------------------------------------------------
def test_the_rest_payload_equals_the_guides_example() -> None:
    assert workday_rest_payload(parse_event(SPEC_EVENT)) == WORKDAY_REST_EXAMPLE
    assert json.loads(encode_json(workday_rest_payload(parse_event(SPEC_EVENT)))) == WORKDAY_REST_EXAMPLE


def test_spec_event_arrives_with_bearer_and_idempotency_key(engine, sandbox) -> None:
    add_integration(engine, "company_789", "workday", settings={"protocol": "rest"})
    add_events(engine, [SPEC_EVENT])
    extract(engine, "company_789", WORKDAY)  # the company's settings pick the REST payload
    report = deliver(engine, _factory(engine, sandbox, WORKDAY_PROTOCOL=""), "workday")
    assert report.totals.outcomes[RowOutcome.SUCCESS] == 1
    [row] = rows(engine)
    assert json.loads(row["payload"]) == WORKDAY_REST_EXAMPLE
    [accepted] = _workday(sandbox).snapshot()["accepted"]
    assert accepted["protocol"] == "rest" and accepted["tenant"] == fake.TENANT_ID
    assert accepted["body"] == WORKDAY_REST_EXAMPLE and accepted["idempotency_key"] == row["delivery_id"]
    [attempt] = attempts(engine, row["delivery_id"])
    assert (attempt["http_status"], attempt["outcome"]) == (201, "success")
    assert attempt["request_body"] is None  # the body is the stored payload itself
    log = _workday(sandbox).snapshot()["requests"]
    assert [r["path"] for r in log] == [fake.TOKEN_PATH, f"/api/v1/{fake.TENANT_ID}/csr-impact-reports"]


# -- tokens ------------------------------------------------------------------------------------------------------
def test_one_token_serves_many_events_and_runs_and_is_stored_encrypted(engine, sandbox) -> None:
    _setup(engine, "umbrella", n=6)
    deliver(engine, _factory(engine, sandbox), "workday")
    add_events(engine, events("umbrella", 9)[6:])
    extract(engine, "umbrella", WORKDAY, env=ProviderEnv(WORKDAY_PROTOCOL="rest"))
    deliver(engine, _factory(engine, sandbox), "workday")  # a new run (new factory): the stored token is reused
    assert statuses(engine) == {"success": 9}
    oauth = _workday(sandbox).snapshot()["oauth"]
    assert (oauth["token_requests"], oauth["tokens_issued"]) == (1, 1)
    issued = list(_workday(sandbox).oauth.tokens)
    stored: list[str] = []
    with engine.connect() as conn:
        for table in sa.inspect(engine).get_table_names():
            stored.extend(str(value) for row in conn.execute(sa.text(f'SELECT * FROM "{table}"')) for value in row)
    text = "\n".join(stored)
    assert issued and not any(token in text for token in issued)
    assert fake.CLIENT_SECRET not in text
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT count(*) FROM impact_provider_tokens")).scalar_one() == 1


def test_a_401_refreshes_the_token_once_and_retries(engine, sandbox) -> None:
    _setup(engine, "umbrella", n=1)
    factory = _factory(engine, sandbox)
    deliver(engine, factory, "workday")
    add_events(engine, events("umbrella", 2)[1:])
    extract(engine, "umbrella", WORKDAY, env=ProviderEnv(WORKDAY_PROTOCOL="rest"))
    _workday(sandbox).configure({"expire_tokens": True})  # the provider revokes every token it issued
    deliver(engine, factory, "workday")
    [_, row] = rows(engine)
    assert row["status"] == "success"
    assert [(a["http_status"], a["outcome"]) for a in attempts(engine, row["delivery_id"])] == [
        (401, "auth_expired"),
        (201, "success"),
    ]
    assert _workday(sandbox).snapshot()["oauth"]["tokens_issued"] == 2


def test_an_api_that_refuses_the_token_fetched_after_a_401_fails_as_config(engine, sandbox) -> None:
    _setup(engine, "umbrella", n=1)
    _workday(sandbox).configure({"api_refuses_tokens": True})  # valid tokens, but the API does not take them
    deliver(engine, _factory(engine, sandbox), "workday")
    [row] = rows(engine)
    assert (row["status"], row["error_kind"]) == ("failed", "config")
    # the first 401 fetched a new token for free; that current token refused too means the credentials are refused
    assert [a["outcome"] for a in attempts(engine, row["delivery_id"])] == ["auth_expired", "auth_expired"]
    assert row["attempt_count"] == 2
    assert "HTTP 401" in row["last_error"] and "refused a current access token" in row["last_error"]
    assert _workday(sandbox).snapshot()["oauth"]["tokens_issued"] == 2


def test_token_endpoint_down_is_retryable(engine, sandbox) -> None:
    _setup(engine, "umbrella", n=1)
    _workday(sandbox).configure({"token_fail_next": {"status": 503, "count": 1}})
    deliver(engine, _factory(engine, sandbox), "workday")
    [row] = rows(engine)
    first, second = attempts(engine, row["delivery_id"])
    assert (first["outcome"], first["http_status"]) == ("retryable", 503) and "token endpoint" in first["error"]
    assert row["status"] == "success" and second["outcome"] == "success"


def test_refused_client_credentials_are_a_config_error_without_the_secret(engine, sandbox) -> None:
    _setup(engine, "umbrella", n=2)
    deliver(engine, _factory(engine, sandbox, WORKDAY_CLIENT_SECRET="wrong-client-secret"), "workday")
    for row in rows(engine):
        assert (row["status"], row["error_kind"]) == ("failed", "config")
        assert "refused the client credentials" in row["last_error"] and "wrong-client-secret" not in row["last_error"]
    assert _workday(sandbox).snapshot()["accepted"] == []


# -- configuration -----------------------------------------------------------------------------------------------
def test_per_company_protocol_override_both_ways(engine, sandbox) -> None:
    env = ProviderEnv.from_env(sandbox.env())  # WORKDAY_PROTOCOL unset: SOAP by default
    add_integration(engine, "initech", "workday")
    add_integration(engine, "umbrella", "workday", settings={"protocol": "rest"})
    add_events(engine, events("initech", 2) + events("umbrella", 2))
    extract(engine, "initech", WORKDAY, env=env)
    extract(engine, "umbrella", WORKDAY, env=env)
    deliver(engine, ConnectorFactory(engine, env=env, settings=fast_settings()), "workday")
    assert statuses(engine) == {"success": 4}
    by_event = {a["event_id"]: a["protocol"] for a in _workday(sandbox).snapshot()["accepted"]}
    assert by_event == {
        "evt_initech_00000": "soap",
        "evt_initech_00001": "soap",
        "evt_umbrella_00000": "rest",
        "evt_umbrella_00001": "rest",
    }

    # And the other way round: REST by default, one company on SOAP.
    rest_env = ProviderEnv.from_env({**sandbox.env(), "WORKDAY_PROTOCOL": "rest"})
    add_integration(engine, "acme", "workday", settings={"protocol": "soap"})
    add_integration(engine, "globex", "workday")
    add_events(engine, events("acme", 1) + events("globex", 1))
    extract(engine, "acme", WORKDAY, env=rest_env)
    extract(engine, "globex", WORKDAY, env=rest_env)
    deliver(engine, ConnectorFactory(engine, env=rest_env, settings=fast_settings()), "workday", ["acme", "globex"])
    by_event = {a["event_id"]: a["protocol"] for a in _workday(sandbox).snapshot()["accepted"]}
    assert (by_event["evt_acme_00000"], by_event["evt_globex_00000"]) == ("soap", "rest")


def test_per_company_tenant_and_encrypted_client_secret(engine, sandbox) -> None:
    _workday(sandbox).configure({"tenants": ["umbrella_prod"]})
    settings = {"tenant_id": "umbrella_prod", "client_secret": _encrypted(fake.CLIENT_SECRET)}
    _setup(engine, "umbrella", n=2, settings=settings)
    deliver(engine, _factory(engine, sandbox, WORKDAY_CLIENT_SECRET="not-this-one"), "workday")
    assert statuses(engine) == {"success": 2}
    assert {a["tenant"] for a in _workday(sandbox).snapshot()["accepted"]} == {"umbrella_prod"}


def test_missing_rest_config_names_the_variables_and_fails_only_that_company(engine, sandbox) -> None:
    _setup(engine, "acme", n=2)
    own = {"client_secret": _encrypted(fake.CLIENT_SECRET), "token_url": sandbox.env()["WORKDAY_TOKEN_URL"]}
    _setup(engine, "umbrella", n=1, settings=own)
    deliver(engine, _factory(engine, sandbox, WORKDAY_CLIENT_SECRET="", WORKDAY_TOKEN_URL=""), "workday")
    assert [r["status"] for r in rows(engine, company_id="umbrella")] == ["success"]
    for row in rows(engine, company_id="acme"):
        assert (row["status"], row["error_kind"], row["attempt_count"]) == ("failed", "config", 0)
        assert "missing WORKDAY_CLIENT_SECRET, WORKDAY_TOKEN_URL" in row["last_error"]


def test_a_soap_payload_left_over_from_a_protocol_switch_is_a_config_error(engine, sandbox) -> None:
    _setup(engine, "acme", n=1, protocol="soap")
    with engine.begin() as conn:
        conn.execute(sa.update(company_integrations).values(settings={"protocol": "rest"}))
    deliver(engine, _factory(engine, sandbox), "workday")
    [row] = rows(engine)
    assert (row["status"], row["error_kind"]) == ("failed", "config")
    assert "SOAP report but the company now uses REST" in row["last_error"]
    assert _workday(sandbox).snapshot()["requests"] == []


# -- connectivity check and dry run ------------------------------------------------------------------------------
def test_check_fetches_a_token_and_sends_no_impact_data(engine, sandbox) -> None:
    add_integration(engine, "umbrella", "workday")
    good = _factory(engine, sandbox).connector("umbrella", WORKDAY).check()
    bad = _factory(engine, sandbox, WORKDAY_CLIENT_SECRET="bad-secret").connector("umbrella", WORKDAY).check()
    assert good.ok and good.extra == {"protocol": "rest", "token_auth_method": "client_secret_post"}
    assert not bad.ok and "refused the client credentials" in bad.detail and "bad-secret" not in bad.detail
    log = _workday(sandbox).snapshot()["requests"]
    assert {r["path"] for r in log} == {fake.TOKEN_PATH}


def test_dry_run_masks_the_bearer_and_fetches_nothing(engine, sandbox) -> None:
    add_integration(engine, "umbrella", "workday")
    connector = _factory(engine, sandbox).connector("umbrella", WORKDAY)
    payload = encode_json(workday_rest_payload(parse_event(SPEC_EVENT))).decode()
    masked = connector.prepare(OutboundDelivery("d-1", "umbrella", "workday", "evt_123", payload)).masked()
    headers, url, body = masked["headers"], masked["url"], masked["body"]
    assert isinstance(headers, dict) and isinstance(url, str) and isinstance(body, str)
    assert headers["Authorization"] == "***" and headers["X-Idempotency-Key"] == "d-1"
    assert url.endswith(f"/api/v1/{fake.TENANT_ID}/csr-impact-reports")
    assert json.loads(body) == WORKDAY_REST_EXAMPLE
    assert _workday(sandbox).snapshot()["requests"] == []
