"""Provider-side faults, for every provider (Benevity, Goodera, Workday SOAP, Workday REST) on both backends: each
scenario scripts the fault on the loopback sandbox, delivers with the real engine (plain re-runs until settled,
bounded), and checks the ledger. Faults marked `accept` happen after the provider stored the request (the answer is
lost or garbled on the way back): the retry must be absorbed by the provider's idempotency, never stored twice."""

from collections import Counter
from typing import Any

import pytest

from impactin_pipelines.services.replay import replay_one
from tests.reliability.ledger import BY_NAME, Case, Ledger, deliver_with_fault, make_factory, read
from tests.support import rows

HTML = "<html><head><title>502 Bad Gateway</title></head><body><h1>Bad Gateway</h1></body></html>"


def _injected(ledger: Ledger) -> Counter[str]:
    return Counter(s["fault"] for s in ledger.sends if s["fault"])


def _all_consumed(sandbox: Any, case: Case) -> None:
    assert sandbox.providers[case.provider].faults.fail_next == [], "the scripted faults never all happened"


def test_read_timeout(engine, sandbox, case) -> None:
    """The provider answers after our read timeout; twice it had already stored the event."""
    hang = {"mode": "hang", "seconds": 1.0}
    faults = {"fail_next": [{**hang, "count": 3}, {**hang, "accept": True, "count": 2}]}
    out = deliver_with_fault(engine, sandbox, case, "read timeout", faults, read_timeout_s=0.3)
    out.ledger.check()
    _all_consumed(sandbox, case)
    assert _injected(out.ledger) == {"hang": 3, "hang after accept": 2}
    assert sum(out.ledger.duplicates.values()) == 2  # the two lost answers, absorbed by the idempotency key


def test_connection_reset(engine, sandbox, case) -> None:
    faults = {"fail_next": [{"mode": "reset", "count": 3}, {"mode": "reset", "accept": True, "count": 2}]}
    out = deliver_with_fault(engine, sandbox, case, "connection reset", faults)
    out.ledger.check()
    _all_consumed(sandbox, case)
    assert _injected(out.ledger) == {"reset": 3, "reset after accept": 2}
    assert sum(out.ledger.duplicates.values()) == 2


def test_429_storm_with_retry_after(engine, sandbox, case) -> None:
    """16 refusals for 4 rows and 4 workers: some row is refused at least 4 times (by pigeonhole: where the
    refusals land depends on scheduling, and a run holds rows behind a provider's pause instead of blocking its
    workers on them), more than the 3 attempts a row has, yet everything goes out in the first run, because a
    rate-limit wait costs no attempt; each wait is the provider's Retry-After (scaled down to 0.2 s, like every
    delay in the tests)."""
    faults = {"fail_next": {"status": 429, "retry_after": "0.2", "count": 16}}
    out = deliver_with_fault(engine, sandbox, case, "429 storm", faults, n=4, max_runs=1)
    out.ledger.check()
    _all_consumed(sandbox, case)
    assert out.ledger.runs == 1
    assert out.sleeps.asked.count(0.2) == 16
    refused = Counter(s["idempotency_key"] for s in out.ledger.sends if s["status"] == 429)
    assert sum(refused.values()) == 16 and max(refused.values()) >= 4


@pytest.mark.parametrize(
    "status, burst",
    [
        (500, [{"status": 500, "count": 6}]),
        # a gateway's HTML page; once the backend had stored the event before the gateway gave up
        (
            502,
            [{"status": 502, "body": HTML, "content_type": "text/html", "count": 5}, {"status": 502, "accept": True}],
        ),
        (503, [{"status": 503, "retry_after": "0", "count": 6}]),
        (504, [{"status": 504, "count": 4}, {"status": 504, "accept": True, "count": 2}]),
    ],
    ids=["500", "502", "503", "504"],
)
def test_5xx_burst(engine, sandbox, case, status: int, burst: list[dict[str, Any]]) -> None:
    """A burst of 6 for 4 workers: rows whose 3 attempts all hit it are parked `retrying` and finished by a
    re-run; the rest are retried within the run."""
    out = deliver_with_fault(engine, sandbox, case, f"burst of {status}", {"fail_next": burst})
    out.ledger.check()
    _all_consumed(sandbox, case)
    assert sum(_injected(out.ledger).values()) == 6
    assert sum(out.ledger.duplicates.values()) == sum(f.get("count", 1) for f in burst if f.get("accept"))


def test_empty_body(engine, sandbox, case) -> None:
    """An error status with no body is still that status (retried); a 2xx with no body after the provider stored
    the event is success for the JSON APIs, and a retry for SOAP, which needs a reply envelope to be sure."""
    faults = {"fail_next": [{"status": 503, "body": "", "count": 3}, {"status": 200, "body": "", "accept": True}]}
    out = deliver_with_fault(engine, sandbox, case, "empty body", faults)
    out.ledger.check()
    _all_consumed(sandbox, case)
    assert sum(out.ledger.duplicates.values()) == (1 if case.name == "workday_soap" else 0)


def test_html_body(engine, sandbox, case) -> None:
    """A maintenance page with a 503 keeps its status (retried, never a permanent failure). An HTML 200 is a proxy
    or portal answering, not the API: retried, whether the provider had stored the event (the retry is absorbed by
    its dedup) or never saw it (it used to count as delivered, and the event was lost)."""
    page = {"body": HTML, "content_type": "text/html"}
    faults = {
        "fail_next": [
            {"status": 503, **page, "count": 3},
            {"status": 200, **page, "accept": True},
            {"status": 200, **page},
        ]
    }
    out = deliver_with_fault(engine, sandbox, case, "HTML body", faults)
    out.ledger.check()
    _all_consumed(sandbox, case)
    assert not [r for r in rows(engine) if r["error_kind"] == "rejected"]
    assert sum(out.ledger.duplicates.values()) == 1


def test_truncated_body(engine, sandbox, case) -> None:
    """The connection drops in the middle of the answer's body, before and after the provider stored the event."""
    faults = {"fail_next": [{"mode": "truncate", "status": 503, "count": 2}, {"mode": "truncate", "accept": True}]}
    out = deliver_with_fault(engine, sandbox, case, "truncated body", faults)
    out.ledger.check()
    _all_consumed(sandbox, case)
    assert _injected(out.ledger) == {"truncate": 2, "truncate after accept": 1}
    assert sum(out.ledger.duplicates.values()) == 1


def test_soap_fault(engine, sandbox) -> None:
    """Workday SOAP: Server faults are retried; a Client (validation) fault is permanent, the row is failed/rejected
    with the faultstring, and the operator replays it once the cause is fixed."""
    case = BY_NAME["workday_soap"]
    faults = {
        "soap_fault_next": [
            {"kind": "server", "message": "Processing error occurred. Try again later", "count": 4},
            {"kind": "client", "message": "Validation error occurred. Worker is inactive"},
        ]
    }
    out = deliver_with_fault(engine, sandbox, case, "SOAP fault", faults)
    [refused] = [r for r in out.ledger.rows if r["status"] == "failed"]
    out.ledger.check(failed={refused["event_id"]})
    assert refused["error_kind"] == "rejected" and "Worker is inactive" in refused["last_error"]
    assert sandbox.providers["workday"].soap_faults == []
    assert sum(1 for s in out.ledger.sends if s["status"] == 500) == 5

    factory = make_factory(engine, sandbox, case)
    try:
        result = replay_one(engine, factory, refused["id"])  # what the operator does: `impactin replay ID`
    finally:
        factory.close()
    assert result.success and result.new_status == "success"

    read(engine, sandbox, case, "SOAP fault, after the operator's replay", runs=out.ledger.runs).check()
