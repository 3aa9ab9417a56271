"""Benevity end to end over loopback: extract -> claim -> sign -> send -> record -> settle, on both backends."""

import hashlib
import hmac
import json
import threading

from impactin_pipelines.domain.providers import Provider
from impactin_pipelines.domain.statuses import RowOutcome
from impactin_pipelines.providers.benevity.fake import SIGNATURE_SECRET
from impactin_pipelines.security.crypto import load_keyring
from impactin_pipelines.services.extract import extract
from tests.support import (
    SPEC_EVENT,
    add_events,
    add_integration,
    attempts,
    deliver,
    event,
    events,
    factory_for,
    rows,
    statuses,
)

BENEVITY = Provider.BENEVITY


def _setup(engine, companies=("acme",), n=5):
    for company in companies:
        add_integration(engine, company, "benevity")
        add_events(engine, events(company, n))
        extract(engine, company, BENEVITY)


def test_spec_event_arrives_signed_with_the_idempotency_key(engine, sandbox) -> None:
    add_integration(engine, "company_789", "benevity")
    add_events(engine, [SPEC_EVENT])
    extract(engine, "company_789", BENEVITY)
    report = deliver(engine, factory_for(engine, sandbox), "benevity")
    assert report.totals.outcomes[RowOutcome.SUCCESS] == 1
    [row] = rows(engine)
    accepted = sandbox.providers["benevity"].snapshot()["accepted"]
    assert [a["idempotency_key"] for a in accepted] == [row["delivery_id"]]
    assert accepted[0]["body"]["event"]["impact"] == {
        "value": 5.0,
        "unit": "hours",
        "metadata": {"program": "buddy_mentoring"},
    }
    # What we stored is byte for byte what we signed and sent.
    body = row["payload"].encode()
    assert hashlib.sha256(body).hexdigest() == row["payload_hash"]
    assert json.loads(body) == accepted[0]["body"]
    assert hmac.new(SIGNATURE_SECRET.encode(), body, hashlib.sha256).hexdigest()  # the fake checked it; 401 otherwise
    assert row["status"] == "success" and row["attempt_count"] == 1 and row["delivered_at"] is not None
    assert json.loads(row["provider_response"])["status"] == "accepted"
    [attempt] = attempts(engine, row["delivery_id"])
    assert attempt["http_status"] == 201 and attempt["outcome"] == "success" and attempt["duration_ms"] >= 0


def test_a_second_run_sends_nothing(engine, sandbox) -> None:
    _setup(engine, n=8)
    factory = factory_for(engine, sandbox)
    deliver(engine, factory, "benevity")
    again = deliver(engine, factory, "benevity")
    assert again.totals.rows == 0
    assert len(sandbox.providers["benevity"].snapshot()["requests"]) == 8
    assert statuses(engine) == {"success": 8}


def test_transient_errors_are_retried_with_the_same_key(engine, sandbox) -> None:
    _setup(engine, n=1)
    sandbox.providers["benevity"].configure(
        {
            "fail_next": [
                {"status": 503, "count": 1},
                {"status": 502, "body": "<html>bad gateway</html>", "content_type": "text/html"},
            ]
        }
    )
    deliver(engine, factory_for(engine, sandbox), "benevity")
    [row] = rows(engine)
    log = sandbox.providers["benevity"].snapshot()["requests"]
    assert [r["status"] for r in log] == [503, 502, 201]
    assert {r["idempotency_key"] for r in log} == {row["delivery_id"]}
    assert row["status"] == "success" and row["attempt_count"] == 3
    tried = attempts(engine, row["delivery_id"])
    assert [(a["attempt_number"], a["http_status"], a["outcome"]) for a in tried] == [
        (1, 503, "retryable"),
        (2, 502, "retryable"),
        (3, 201, "success"),
    ]
    assert "HTTP 502" in tried[1]["error"] and "bad gateway" in tried[1]["error"]


def test_transient_errors_that_outlive_the_attempts_leave_the_row_retrying(engine, sandbox) -> None:
    _setup(engine, n=1)
    sandbox.providers["benevity"].configure({"fail_next": {"status": 504, "count": 10}})
    report = deliver(engine, factory_for(engine, sandbox), "benevity")
    [row] = rows(engine)
    assert report.totals.outcomes[RowOutcome.RETRYING] == 1
    assert row["status"] == "retrying" and row["error_kind"] == "transient" and row["attempt_count"] == 3
    assert row["next_attempt_at"] is not None and row["next_attempt_at"] > row["updated_at"]
    assert row["claimed_by"] is None and "HTTP 504" in row["last_error"]
    # Not due yet: another run leaves it alone.
    assert deliver(engine, factory_for(engine, sandbox), "benevity").totals.rows == 0


def test_a_4xx_is_permanent(engine, sandbox) -> None:
    _setup(engine, n=3)
    sandbox.providers["benevity"].configure({"reject_events": ["evt_acme_00001"]})
    deliver(engine, factory_for(engine, sandbox), "benevity")
    rejected = rows(engine, event_id="evt_acme_00001")[0]
    assert (rejected["status"], rejected["error_kind"], rejected["attempt_count"]) == ("failed", "rejected", 1)
    assert "HTTP 422" in rejected["last_error"]
    assert statuses(engine) == {"success": 2, "failed": 1}


def test_retry_after_is_honoured(engine, sandbox) -> None:
    _setup(engine, n=1)
    sandbox.providers["benevity"].configure({"fail_next": {"status": 429, "retry_after": "0.3"}})
    slept: list[float] = []
    deliver(engine, factory_for(engine, sandbox), "benevity", sleep=slept.append)
    [row] = rows(engine)
    assert slept == [0.3]
    assert row["status"] == "success" and row["attempt_count"] == 2


def test_wrong_credentials_are_rejected_not_retried(engine, sandbox) -> None:
    _setup(engine, n=2)
    factory = factory_for(engine, sandbox)  # holds the secret we know
    sandbox.providers["benevity"].signature_secret = "rotated-at-benevity"
    deliver(engine, factory, "benevity")
    assert statuses(engine) == {"failed": 2}
    assert all("invalid_signature" in r["last_error"] and r["attempt_count"] == 1 for r in rows(engine))


def test_bad_events_are_quarantined_and_the_rest_delivered(engine, sandbox) -> None:
    add_integration(engine, "acme", "benevity")
    bad = [
        event("bad_user", user_id=" "),
        event("bad_value", value="lots"),
        event("bad_time", occurred_at="14/11/2025"),
        event("bad_type", event_type=""),
        event("bad_negative", value=-5),
    ]
    add_events(engine, bad + events("acme", 4))
    report = extract(engine, "acme", BENEVITY)
    assert report.invalid == 5
    deliver(engine, factory_for(engine, sandbox), "benevity")
    assert statuses(engine) == {"success": 4, "failed": 5}
    by_event = {r["event_id"]: r for r in rows(engine, status="failed")}
    assert all(r["error_kind"] == "invalid_event" and r["attempt_count"] == 0 for r in by_event.values())
    assert "user_id=' '" in by_event["bad_user"]["last_error"]
    assert "value='lots'" in by_event["bad_value"]["last_error"]
    assert "occurred_at='14/11/2025'" in by_event["bad_time"]["last_error"]
    assert "event_type=''" in by_event["bad_type"]["last_error"]
    assert "must not be negative" in by_event["bad_negative"]["last_error"]
    assert len(sandbox.providers["benevity"].snapshot()["requests"]) == 4


def test_missing_configuration_fails_only_that_company(engine, sandbox, monkeypatch) -> None:
    """No BENEVITY_* in the environment; `acme` brings its own (encrypted) credentials, `globex` has none."""
    keyring = load_keyring()
    bnv = sandbox.providers["benevity"]
    add_integration(
        engine,
        "acme",
        "benevity",
        settings={
            "api_url": sandbox.provider_url("benevity"),
            "api_key": {"encrypted": keyring.encrypt(bnv.api_key)},
            "signature_secret": {"encrypted": keyring.encrypt(bnv.signature_secret)},
        },
    )
    add_integration(engine, "globex", "benevity")
    add_events(engine, events("acme", 2) + events("globex", 2))
    for company in ("acme", "globex"):
        extract(engine, company, BENEVITY)
    from impactin_pipelines.connectors.registry import ConnectorFactory
    from impactin_pipelines.providers.env import ProviderEnv
    from tests.support import fast_settings

    factory = ConnectorFactory(engine, env=ProviderEnv(), settings=fast_settings())
    deliver(engine, factory, "benevity")
    acme, globex = rows(engine, company_id="acme"), rows(engine, company_id="globex")
    assert [r["status"] for r in acme] == ["success", "success"]
    assert all(r["status"] == "failed" and r["error_kind"] == "config" for r in globex)
    assert "BENEVITY_API_URL, BENEVITY_API_KEY, BENEVITY_SIGNATURE_SECRET" in globex[0]["last_error"]
    stored = json.dumps([*acme, *globex], default=str)
    assert bnv.api_key not in stored and bnv.signature_secret not in stored


def test_plain_text_secret_in_settings_is_refused(engine, sandbox) -> None:
    add_integration(engine, "acme", "benevity", settings={"api_key": "plain-text-key"})
    add_events(engine, events("acme", 1))
    extract(engine, "acme", BENEVITY)
    deliver(engine, factory_for(engine, sandbox), "benevity")
    [row] = rows(engine)
    assert row["error_kind"] == "config" and "must be stored encrypted" in row["last_error"]
    assert "plain-text-key" not in row["last_error"]


def test_deliveries_go_out_concurrently_and_bounded(engine, sandbox) -> None:
    _setup(engine, companies=("acme", "globex"), n=20)
    bnv = sandbox.providers["benevity"]
    bnv.configure({"latency_ms": 40})
    in_flight, peak, lock = [0], [0], threading.Lock()
    original = bnv.route

    def counting_route(request):
        with lock:
            in_flight[0] += 1
            peak[0] = max(peak[0], in_flight[0])
        try:
            import time

            time.sleep(0.04)
            return original(request)
        finally:
            with lock:
                in_flight[0] -= 1

    bnv.route = counting_route
    deliver(engine, factory_for(engine, sandbox, concurrency=5), "benevity")
    assert statuses(engine) == {"success": 40}
    assert 1 < peak[0] <= 5
