"""Token trouble for the OAuth2 providers (Goodera, Workday REST) on both backends: the token endpoint down for
longer than a run's attempts, and tokens that expire (and are revoked) in the middle of a run."""

from tests.reliability.ledger import accepted_count, make_factory, read, seed, settle, when
from tests.support import deliver, rows


def test_token_endpoint_down(engine, sandbox, oauth_case, monkeypatch) -> None:
    """Down (a hang, then 503s) for the whole first run: nothing is sent, every row is parked `retrying` with the
    reason, and the run after the endpoint is back delivers everything. The circuit breaker is off: this counts the
    retry policy's token requests (with it on, the failures open it: test_circuit_breaker.py)."""
    monkeypatch.setenv("IMPACTIN_CIRCUIT_FAILURES", "0")
    fake = sandbox.providers[oauth_case.provider]
    n = 4
    seed(engine, oauth_case, n, sandbox=sandbox)
    fake.configure({"token_fail_next": [{"mode": "hang", "seconds": 1.0}, {"status": 503, "count": 1000}]})
    factory = make_factory(engine, sandbox, oauth_case, warm=False, read_timeout_s=0.3)

    def run(number: int) -> None:
        if number == 2:  # the endpoint is back
            fake.oauth.token_faults.clear()
        deliver(engine, factory, oauth_case.provider)
        if number == 1:
            after_first = rows(engine)
            assert {r["status"] for r in after_first} == {"retrying"}
            assert all("token endpoint" in (r["last_error"] or "") for r in after_first), after_first[0]["last_error"]
            assert read(engine, sandbox, oauth_case, "token endpoint down", runs=1).sends == []

    try:
        runs = settle(engine, run, max_runs=3)
    finally:
        factory.close()
    ledger = read(engine, sandbox, oauth_case, "token endpoint down", runs=runs).check()
    token_requests = fake.snapshot()["oauth"]["token_requests"]
    print(f"token requests: {token_requests}")
    assert runs == 2 and 2 <= token_requests <= n * 3 + 1  # never more than one per attempt, then one that works
    assert len(ledger.sends) == n


def test_token_expires_mid_run(engine, sandbox, oauth_case) -> None:
    """Tokens live 2 s, less than the run (re-fetched ahead of expiry), and after 4 deliveries the provider also
    revokes every token it issued: the 401s re-fetch once and retry without costing an attempt, so one run
    delivers everything exactly once."""
    fake = sandbox.providers[oauth_case.provider]
    n = 24
    seed(engine, oauth_case, n, sandbox=sandbox)
    fake.configure({"token_expires_in": 2, "latency_ms": 120})
    factory = make_factory(engine, sandbox, oauth_case, concurrency=2)
    issued_before = fake.snapshot()["oauth"]["tokens_issued"]
    revoke = {"expire_tokens": True}
    try:
        with when(lambda: accepted_count(sandbox, oauth_case) >= 4, lambda: fake.configure(revoke)) as fired:
            deliver(engine, factory, oauth_case.provider)
        assert fired, "the revocation never happened"
    finally:
        factory.close()
    ledger = read(engine, sandbox, oauth_case, "token expires mid-run", runs=1).check()
    refused = [s for s in ledger.sends if s["status"] == 401]
    issued = fake.snapshot()["oauth"]["tokens_issued"] - issued_before
    print(f"401s: {len(refused)}, tokens fetched during the run: {issued}")
    assert refused and issued >= 2
    assert {r["run_count"] for r in rows(engine)} == {1}
