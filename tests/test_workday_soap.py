"""Workday over SOAP, end to end over loopback: the shipped WSDL, zeep, WS-Security UsernameToken (text and digest),
SOAP faults and HTTP errors, masked audit copies, per-company configuration, on both backends."""

import json
import logging
import re
from datetime import UTC, datetime, timedelta

import pytest
import requests
import sqlalchemy as sa
from lxml import etree
from zeep import Client
from zeep.wsse.username import UsernameToken

from impactin_pipelines.connectors.base import ConnectorContext, OutboundDelivery
from impactin_pipelines.connectors.config import ConfigResolver
from impactin_pipelines.connectors.http import new_session
from impactin_pipelines.connectors.registry import ConnectorFactory
from impactin_pipelines.domain.errors import ConfigError
from impactin_pipelines.domain.events import parse_event
from impactin_pipelines.domain.providers import Provider
from impactin_pipelines.domain.statuses import RowOutcome
from impactin_pipelines.mapping.encoding import encode_json
from impactin_pipelines.providers.env import ProviderEnv
from impactin_pipelines.providers.workday import fake
from impactin_pipelines.providers.workday import soap as workday_soap
from impactin_pipelines.providers.workday.connector import build
from impactin_pipelines.providers.workday.mapping import workday_rest_payload, workday_soap_report
from impactin_pipelines.security.crypto import load_keyring
from impactin_pipelines.services.extract import extract
from impactin_pipelines.settings import DeliverySettings
from impactin_pipelines.store.schema import company_integrations
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

# The guide's SOAP example body, verbatim.
SPEC_BODY = """
<soap:Body xmlns:soap="http://schemas.xmlsoap.org/soap/envelope/" xmlns:wd="urn:com.workday/bsvc">
    <wd:Submit_CSR_Impact_Report>
      <wd:CSR_Impact_Report>
        <wd:External_Reference_ID>evt_123</wd:External_Reference_ID>
        <wd:Report_Date>2025-11-14</wd:Report_Date>
        <wd:Worker_Reference>
          <wd:ID wd:type="Employee_ID">user_456</wd:ID>
        </wd:Worker_Reference>
        <wd:CSR_Activity>
          <wd:Activity_Type>Volunteer Hours</wd:Activity_Type>
          <wd:Value>5.0</wd:Value>
          <wd:Unit_of_Measure>Hours</wd:Unit_of_Measure>
        </wd:CSR_Activity>
      </wd:CSR_Impact_Report>
    </wd:Submit_CSR_Impact_Report>
</soap:Body>
"""
SOAP_ENV = "http://schemas.xmlsoap.org/soap/envelope/"
WSSE = workday_soap.WSSE_NS
PASSWORD_TEXT_TYPE = "oasis-200401-wss-username-token-profile-1.0#PasswordText"


def _canonical_submit(envelope_or_body: etree._Element) -> bytes:
    """Exclusive C14N of wd:Submit_CSR_Impact_Report: prefixes, attributes and text, whitespace aside."""
    submit = envelope_or_body.find(f".//{{{workday_soap.NAMESPACE}}}Submit_CSR_Impact_Report")
    assert submit is not None
    for node in submit.iter():
        if node.text is not None and not node.text.strip():
            node.text = None
        if node.tail is not None and not node.tail.strip():
            node.tail = None
    return etree.tostring(submit, method="c14n", exclusive=True)


GOLDEN_SUBMIT = _canonical_submit(etree.fromstring(SPEC_BODY))


def _spec_payload() -> str:
    return encode_json(workday_soap_report(parse_event(SPEC_EVENT))).decode()


def _connector(env: dict[str, str], company_id: str = "company_789", settings: dict | None = None):
    resolver = ConfigResolver(
        company_id=company_id,
        provider="workday",
        settings=settings or {},
        env=ProviderEnv.from_env(env),
        keyring=load_keyring,
    )
    # no engine: the SOAP connector stores nothing (no token), and a test that reached for one should fail loudly
    ctx = ConnectorContext(company_id, None, DeliverySettings(), new_session(), load_keyring)  # type: ignore[arg-type]
    return build(resolver, ctx)


def _factory(engine, sandbox, **env: str) -> ConnectorFactory:
    merged = {k: v for k, v in {**sandbox.env(), **env}.items() if v}
    return ConnectorFactory(engine, env=ProviderEnv.from_env(merged), settings=fast_settings())


def _setup(engine, company: str, n: int = 1, settings=None) -> None:
    add_integration(engine, company, "workday", settings=settings)
    add_events(engine, events(company, n))
    extract(engine, company, WORKDAY)


def _encrypted(value: str) -> dict[str, str]:
    return {"encrypted": load_keyring().encrypt(value)}


# -- golden envelope ---------------------------------------------------------------------------------------------
def test_golden_envelope_for_the_spec_event(sandbox) -> None:
    connector = _connector(sandbox.env())
    arguments = workday_soap.soap_arguments(_spec_payload())
    envelope = connector.client.create_message(connector.service, workday_soap.OPERATION, **arguments)
    assert _canonical_submit(envelope) == GOLDEN_SUBMIT
    text = etree.tostring(envelope).decode()
    for exact in (
        "<wd:Report_Date>2025-11-14</wd:Report_Date>",
        "<wd:Activity_Type>Volunteer Hours</wd:Activity_Type>",
        "<wd:Unit_of_Measure>Hours</wd:Unit_of_Measure>",
        '<wd:ID wd:type="Employee_ID">user_456</wd:ID>',
        "<wd:Value>5.0</wd:Value>",
    ):
        assert exact in text
    token = envelope.find(f"{{{SOAP_ENV}}}Header/{{{WSSE}}}Security/{{{WSSE}}}UsernameToken")
    assert token.findtext(f"{{{WSSE}}}Username") == fake.USERNAME
    password = token.find(f"{{{WSSE}}}Password")
    assert password.get("Type").endswith(PASSWORD_TEXT_TYPE) and password.text == fake.PASSWORD


def test_the_stored_payload_is_the_soap_report_json() -> None:
    assert json.loads(_spec_payload()) == {
        "schema_version": "v3.0",
        "CSR_Impact_Report": {
            "External_Reference_ID": "evt_123",
            "Report_Date": "2025-11-14",
            "Worker_Reference": {"ID": {"type": "Employee_ID", "value": "user_456"}},
            "CSR_Activity": {"Activity_Type": "Volunteer Hours", "Value": "5.0", "Unit_of_Measure": "Hours"},
        },
    }


def test_spec_event_goes_out_as_the_golden_envelope_with_a_masked_audit_copy(engine, sandbox) -> None:
    add_integration(engine, "company_789", "workday")
    add_events(engine, [SPEC_EVENT])
    extract(engine, "company_789", WORKDAY)
    [row] = rows(engine)
    assert row["payload"] == _spec_payload()

    report = deliver(engine, _factory(engine, sandbox), "workday")
    assert report.totals.outcomes[RowOutcome.SUCCESS] == 1
    [row] = rows(engine)
    assert (row["status"], row["attempt_count"]) == ("success", 1)
    [accepted] = sandbox.providers["workday"].snapshot()["accepted"]
    assert accepted["idempotency_key"] == row["delivery_id"]  # X-Idempotency-Key on SOAP too
    assert accepted["event_id"] == "evt_123" and accepted["tenant"] == fake.TENANT_ID
    assert accepted["password_type"] == "text"
    assert accepted["body"] == json.loads(row["payload"])["CSR_Impact_Report"]
    assert "CSR_Impact_Report_Reference" in row["provider_response"]

    [attempt] = attempts(engine, row["delivery_id"])
    assert attempt["http_status"] == 200 and attempt["outcome"] == "success"
    sent = etree.fromstring(attempt["request_body"].encode())
    assert _canonical_submit(sent) == GOLDEN_SUBMIT
    password = sent.find(f".//{{{WSSE}}}Password")
    assert password is not None and password.text == "***" and fake.PASSWORD not in attempt["request_body"]


# -- WS-Security -------------------------------------------------------------------------------------------------
def test_password_digest_is_accepted_and_its_digest_and_nonce_are_masked(engine, sandbox) -> None:
    _setup(engine, "acme", n=3)
    deliver(engine, _factory(engine, sandbox, WORKDAY_PASSWORD_TYPE="digest"), "workday")
    assert statuses(engine) == {"success": 3}
    accepted = sandbox.providers["workday"].snapshot()["accepted"]
    assert {a["password_type"] for a in accepted} == {"digest"}
    for attempt in attempts(engine):
        sent = etree.fromstring(attempt["request_body"].encode())
        password = sent.find(f".//{{{WSSE}}}Password")
        nonce, username = sent.find(f".//{{{WSSE}}}Nonce"), sent.find(f".//{{{WSSE}}}Username")
        assert password is not None and nonce is not None and username is not None
        assert password.get("Type", "").endswith("#PasswordDigest") and password.text == "***"
        assert nonce.text == "***" and username.text == fake.USERNAME


@pytest.mark.parametrize("password_type", ["text", "digest"])
def test_a_wrong_password_is_refused_as_a_client_fault(engine, sandbox, password_type) -> None:
    _setup(engine, "acme", n=1)
    factory = _factory(engine, sandbox, WORKDAY_PASSWORD="not-the-password", WORKDAY_PASSWORD_TYPE=password_type)
    deliver(engine, factory, "workday")
    [row] = rows(engine)
    assert (row["status"], row["error_kind"], row["attempt_count"]) == ("failed", "rejected", 1)
    assert "Client.authenticationError" in row["last_error"] and "invalid username or password" in row["last_error"]
    assert "not-the-password" not in json.dumps([row, *attempts(engine)], default=str)
    assert sandbox.providers["workday"].snapshot()["accepted"] == []


def _digest_client(sandbox, created: datetime | None = None) -> Client:
    token = UsernameToken(fake.USERNAME, fake.PASSWORD, use_digest=True, created=created, zulu_timestamp=True)
    return Client(workday_soap.wsdl_document(), wsse=token, settings=workday_soap.ZEEP_SETTINGS)


def _post_envelope(sandbox, envelope: etree._Element) -> requests.Response:
    url = workday_soap.endpoint_for(sandbox.provider_url("workday"), fake.TENANT_ID)
    body = etree.tostring(envelope, xml_declaration=True, encoding="utf-8")
    return requests.post(url, data=body, headers={"Content-Type": "text/xml; charset=utf-8"}, timeout=5)


def test_the_fake_refuses_a_replayed_nonce_and_a_stale_digest(sandbox) -> None:
    arguments = workday_soap.soap_arguments(_spec_payload())
    client = _digest_client(sandbox)
    service = client.create_service(workday_soap.BINDING, "http://unused")
    envelope = client.create_message(service, workday_soap.OPERATION, **arguments)
    first = _post_envelope(sandbox, envelope)
    replay = _post_envelope(sandbox, envelope)
    assert first.status_code == 200 and "CSR_Impact_Report_Reference" in first.text
    assert replay.status_code == 500 and "Client.authenticationError" in replay.text

    stale_client = _digest_client(sandbox, created=datetime.now(UTC) - timedelta(minutes=30))
    stale = stale_client.create_message(service, workday_soap.OPERATION, **arguments)
    response = _post_envelope(sandbox, stale)
    assert response.status_code == 500 and "invalid username or password" in response.text
    assert len(sandbox.providers["workday"].snapshot()["accepted"]) == 1


def test_the_fake_refuses_dtds_and_entities(sandbox) -> None:
    url = workday_soap.endpoint_for(sandbox.provider_url("workday"), fake.TENANT_ID)
    evil = (
        b'<?xml version="1.0"?><!DOCTYPE r [<!ENTITY x SYSTEM "file:///etc/passwd">]>'
        b'<soap:Envelope xmlns:soap="http://schemas.xmlsoap.org/soap/envelope/"><soap:Body>&x;</soap:Body>'
        b"</soap:Envelope>"
    )
    response = requests.post(url, data=evil, headers={"Content-Type": "text/xml"}, timeout=5)
    assert response.status_code == 500 and "DTDForbidden" in response.text and "root:" not in response.text


# -- faults and HTTP errors --------------------------------------------------------------------------------------
def test_a_soap_client_fault_is_rejected_with_its_faultstring(engine, sandbox) -> None:
    _setup(engine, "acme", n=3)
    sandbox.providers["workday"].configure({"reject_events": ["evt_acme_00001"]})
    deliver(engine, _factory(engine, sandbox), "workday")
    [rejected] = rows(engine, event_id="evt_acme_00001")
    assert (rejected["status"], rejected["error_kind"], rejected["attempt_count"]) == ("failed", "rejected", 1)
    assert rejected["last_error"] == (
        "HTTP 500 SOAP fault SOAP-ENV:Client.validationError: "
        "Validation error occurred. CSR impact report evt_acme_00001 rejected"
    )
    assert statuses(engine) == {"success": 2, "failed": 1}


def test_a_soap_server_fault_is_retried(engine, sandbox) -> None:
    _setup(engine, "acme", n=1)
    sandbox.providers["workday"].configure({"soap_fault_next": {"kind": "server", "message": "try later"}})
    deliver(engine, _factory(engine, sandbox), "workday")
    [row] = rows(engine)
    assert (row["status"], row["attempt_count"]) == ("success", 2)
    first, second = attempts(engine, row["delivery_id"])
    assert (first["http_status"], first["outcome"]) == (500, "retryable")
    assert "Server.processingError: try later" in first["error"]
    assert second["outcome"] == "success"


def test_http_503_with_an_html_body_keeps_its_status_and_is_retried(engine, sandbox) -> None:
    _setup(engine, "acme", n=1)
    html = "<html><head><title>503</title></head><body>Maintenance<br></body></html>"
    sandbox.providers["workday"].configure(
        {"fail_next": {"status": 503, "count": 2, "body": html, "content_type": "text/html"}}
    )
    deliver(engine, _factory(engine, sandbox), "workday")
    [row] = rows(engine)
    assert (row["status"], row["attempt_count"]) == ("success", 3)
    tried = attempts(engine, row["delivery_id"])
    assert [(a["http_status"], a["outcome"]) for a in tried] == [
        (503, "retryable"),
        (503, "retryable"),
        (200, "success"),
    ]
    assert tried[0]["error"].startswith("HTTP 503") and "Maintenance" in tried[0]["error"]
    assert "Unknown fault" not in tried[0]["error"]
    log = sandbox.providers["workday"].snapshot()["requests"]
    assert {r["idempotency_key"] for r in log} == {row["delivery_id"]}


def test_the_operation_timeout_is_explicit(engine, sandbox) -> None:
    _setup(engine, "acme", n=1)
    sandbox.providers["workday"].configure({"fail_next": {"mode": "hang", "seconds": 1.0}})
    factory = ConnectorFactory(
        engine, env=ProviderEnv.from_env(sandbox.env()), settings=fast_settings(read_timeout_s=0.2)
    )
    deliver(engine, factory, "workday")
    [row] = rows(engine)
    first, second = attempts(engine, row["delivery_id"])
    assert first["outcome"] == "retryable" and "timeout" in first["error"] and first["http_status"] is None
    assert row["status"] == "success" and second["outcome"] == "success"


def test_duplicates_are_deduplicated_by_external_reference_id(engine, sandbox) -> None:
    connector = _connector(sandbox.env())
    payload = _spec_payload()
    first = connector.send(OutboundDelivery("d-1", "company_789", "workday", "evt_123", payload))
    again = connector.send(OutboundDelivery("d-2", "company_789", "workday", "evt_123", payload))
    assert first.outcome == again.outcome == "success"
    snapshot = sandbox.providers["workday"].snapshot()
    assert len(snapshot["accepted"]) == 1 and [r["duplicate"] for r in snapshot["requests"]] == [False, True]


# -- secrets -----------------------------------------------------------------------------------------------------
def test_no_password_digest_or_nonce_in_any_table_or_log(engine, sandbox, caplog) -> None:
    caplog.set_level(logging.DEBUG)
    _setup(engine, "acme", n=2)
    _setup(engine, "globex", n=2, settings={"password_type": "digest"})
    sandbox.providers["workday"].configure({"fail_next": {"status": 503, "body": "<html>x</html>"}})
    deliver(engine, _factory(engine, sandbox), "workday")
    assert statuses(engine) == {"success": 4}
    stored: list[str] = []
    with engine.connect() as conn:
        for table in sa.inspect(engine).get_table_names():
            stored.extend(str(value) for row in conn.exec_driver_sql(f'SELECT * FROM "{table}"') for value in row)
    text = "\n".join(stored)
    assert fake.PASSWORD not in text and fake.PASSWORD not in caplog.text
    passwords = re.findall(r"<wsse:Password[^>]*>([^<]*)</wsse:Password>", text)
    nonces = re.findall(r"<wsse:Nonce[^>]*>([^<]*)</wsse:Nonce>", text)
    assert len(passwords) == 5 and set(passwords) == {"***"}  # 4 deliveries + the 503 attempt
    assert len(nonces) >= 2 and set(nonces) == {"***"}


# -- configuration -----------------------------------------------------------------------------------------------
def test_per_company_tenant_and_encrypted_credentials(engine, sandbox) -> None:
    sandbox.providers["workday"].configure({"tenants": ["initech_prod"]})
    _setup(engine, "acme", n=1)  # the environment's tenant and (wrong) password
    _setup(engine, "initech", n=2, settings={"tenant_id": "initech_prod", "password": _encrypted(fake.PASSWORD)})
    deliver(engine, _factory(engine, sandbox, WORKDAY_PASSWORD="stale-env-password"), "workday")
    assert [r["status"] for r in rows(engine, company_id="initech")] == ["success", "success"]
    [acme] = rows(engine, company_id="acme")
    assert (acme["status"], acme["error_kind"]) == ("failed", "rejected")
    accepted = sandbox.providers["workday"].snapshot()["accepted"]
    assert {(a["tenant"], a["event_id"][:11]) for a in accepted} == {("initech_prod", "evt_initech")}


def test_a_plain_text_password_in_settings_is_refused(engine, sandbox) -> None:
    _setup(engine, "acme", n=1, settings={"password": fake.PASSWORD})
    deliver(engine, _factory(engine, sandbox), "workday")
    [row] = rows(engine)
    assert (row["status"], row["error_kind"]) == ("failed", "config")
    assert "settings.password" in row["last_error"] and fake.PASSWORD not in row["last_error"]


def test_missing_config_names_the_variables_and_fails_only_that_company(engine, sandbox) -> None:
    _setup(engine, "acme", n=2)
    _setup(engine, "globex", n=1, settings={"username": fake.USERNAME, "password": _encrypted(fake.PASSWORD)})
    deliver(engine, _factory(engine, sandbox, WORKDAY_USERNAME="", WORKDAY_PASSWORD=""), "workday")
    assert [r["status"] for r in rows(engine, company_id="globex")] == ["success"]
    for row in rows(engine, company_id="acme"):
        assert (row["status"], row["error_kind"], row["attempt_count"]) == ("failed", "config", 0)
        assert "missing WORKDAY_USERNAME, WORKDAY_PASSWORD" in row["last_error"] and "acme" in row["last_error"]


def test_a_bad_password_type_or_tenant_is_a_config_error_naming_the_value(engine, sandbox) -> None:
    _setup(engine, "acme", n=1, settings={"password_type": "md5"})
    _setup(engine, "globex", n=1, settings={"tenant_id": "../admin"})
    deliver(engine, _factory(engine, sandbox), "workday")
    [acme], [globex] = rows(engine, company_id="acme"), rows(engine, company_id="globex")
    assert acme["error_kind"] == "config" and "WORKDAY_PASSWORD_TYPE='md5'" in acme["last_error"]
    assert globex["error_kind"] == "config" and "WORKDAY_TENANT_ID='../admin'" in globex["last_error"]
    assert sandbox.providers["workday"].snapshot()["requests"] == []


def test_a_rest_payload_left_over_from_a_protocol_switch_is_a_config_error(engine, sandbox) -> None:
    _setup(engine, "acme", n=1, settings={"protocol": "rest"})
    with engine.begin() as conn:
        conn.execute(sa.update(company_integrations).values(settings={"protocol": "soap"}))
    deliver(engine, _factory(engine, sandbox), "workday")
    [row] = rows(engine)
    assert (row["status"], row["error_kind"]) == ("failed", "config")
    assert "REST report but the company now uses SOAP" in row["last_error"]
    assert sandbox.providers["workday"].snapshot()["requests"] == []


# -- connectivity check ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("password_type", ["text", "digest"])
def test_check_authenticates_without_submitting_data(sandbox, password_type) -> None:
    env = {**sandbox.env(), "WORKDAY_PASSWORD_TYPE": password_type}
    good = _connector(env).check()
    assert (good.ok, good.verdict) == (True, "ok")
    assert good.detail == (
        "authenticated: the empty probe was refused with SOAP-ENV:Client.validationError: Validation error occurred. "
        "CSR_Impact_Report is required, while an unknown user is refused with SOAP-ENV:Client.authenticationError: "
        "invalid username or password"
    )
    bad = _connector({**env, "WORKDAY_PASSWORD": "wrong-password"}).check()
    assert (bad.ok, bad.inconclusive, bad.verdict) == (False, False, "failed")
    assert "invalid username or password" in bad.detail and "wrong-password" not in bad.detail
    snapshot = sandbox.providers["workday"].snapshot()
    assert snapshot["accepted"] == []
    # ours, then the same probe as an unknown user to compare; bad credentials are refused at once
    assert [r["status"] for r in snapshot["requests"]] == [500, 500, 500]


@pytest.mark.parametrize("password_type", ["text", "digest"])
def test_check_does_not_claim_authentication_a_body_first_server_cannot_show(sandbox, password_type) -> None:
    """A server that validates the body before the security header (as schema-first SOAP frameworks do) answers the
    empty probe with the same validation fault whatever the password: the check must not say "authenticated"."""
    sandbox.providers["workday"].configure({"validate_before_auth": True})
    env = {**sandbox.env(), "WORKDAY_PASSWORD_TYPE": password_type}
    for password in (fake.PASSWORD, "wrong-password"):
        result = _connector({**env, "WORKDAY_PASSWORD": password}).check()
        assert (result.ok, result.inconclusive, result.verdict) == (False, True, "not proven")
        assert result.detail.startswith("reachable; credentials not proven: ")
        assert "and so is an unknown user" in result.detail and "wrong-password" not in result.detail
    assert sandbox.providers["workday"].snapshot()["accepted"] == []
    # the same credentials are proven once the service checks them before the body
    sandbox.providers["workday"].configure({"validate_before_auth": False})
    assert _connector(env).check().ok


def test_dry_run_request_masks_the_password(sandbox) -> None:
    connector = _connector(sandbox.env())
    prepared = connector.prepare(OutboundDelivery("d-1", "company_789", "workday", "evt_123", _spec_payload()))
    body = prepared.masked()["body"]
    assert (
        fake.PASSWORD not in body
        and "<wsse:Password" in body
        and _canonical_submit(etree.fromstring(body.encode())) == GOLDEN_SUBMIT
    )
    assert prepared.url == f"{sandbox.provider_url('workday')}/ccx/service/{fake.TENANT_ID}/CSR_Impact_Report"
    assert sandbox.providers["workday"].snapshot()["requests"] == []


def test_a_gateway_503_keeps_its_status_even_with_a_fault_body(engine, sandbox) -> None:
    _setup(engine, "acme", n=1)
    body = fake.fault_response(fake.SoapFault(fake.VALIDATION_FAULT, "busy, try later")).body.decode()
    sandbox.providers["workday"].configure(
        {"fail_next": {"status": 503, "body": body, "content_type": "text/xml", "retry_after": "0"}}
    )
    deliver(engine, _factory(engine, sandbox), "workday")
    [row] = rows(engine)
    first, second = attempts(engine, row["delivery_id"])
    assert (first["http_status"], first["outcome"]) == (503, "retryable") and "busy, try later" in first["error"]
    assert row["status"] == "success" and second["outcome"] == "success"


def test_a_2xx_that_is_not_an_envelope_is_retried(engine, sandbox) -> None:
    _setup(engine, "acme", n=1)
    sandbox.providers["workday"].configure({"fail_next": {"status": 200, "body": "OK", "content_type": "text/plain"}})
    deliver(engine, _factory(engine, sandbox), "workday")
    [row] = rows(engine)
    first, second = attempts(engine, row["delivery_id"])
    assert (first["http_status"], first["outcome"]) == (200, "retryable")
    assert first["error"] == "HTTP 200 but the body is not a SOAP envelope"
    assert row["status"] == "success" and second["outcome"] == "success"
    assert len(sandbox.providers["workday"].snapshot()["accepted"]) == 1


def test_dry_run_of_a_mismatched_payload_is_a_config_error(sandbox) -> None:
    rest_payload = encode_json(workday_rest_payload(parse_event(SPEC_EVENT))).decode()
    with pytest.raises(ConfigError, match="REST report but the company now uses SOAP"):
        _connector(sandbox.env()).prepare(OutboundDelivery("d-1", "company_789", "workday", "evt_123", rest_payload))
