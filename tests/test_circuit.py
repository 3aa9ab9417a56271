"""The circuit breaker's state machine (pure), its storage on both backends, and the asset check's finding."""

from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa

from impactin_pipelines.connectors.circuit import (
    Admission,
    Circuit,
    CircuitState,
    cooldown_s,
    provider_state,
    verdict,
)
from impactin_pipelines.domain.providers import Provider
from impactin_pipelines.domain.statuses import AttemptOutcome
from impactin_pipelines.providers.env import ProviderEnv
from impactin_pipelines.services.extract import extract
from impactin_pipelines.services.health import circuit_finding
from impactin_pipelines.settings import CircuitSettings
from impactin_pipelines.store.circuits import CircuitStore
from tests.support import add_events, add_integration, deliver, events, factory_for

T = datetime(2026, 1, 1, tzinfo=UTC)
S = CircuitSettings(failures=3, cooldown_s=10, max_cooldown_s=35)


def _fail(c: Circuit, now: datetime = T, *, probe: bool = False) -> Circuit:
    return c.after_failure(now, S, probe=probe, company_id="acme", error="HTTP 503")


def test_it_opens_after_n_consecutive_transient_failures_and_a_success_resets_the_count() -> None:
    c = _fail(_fail(Circuit("benevity", "credential:k")))
    assert (c.state, c.failures) == (CircuitState.CLOSED, 2) and c.admit(T) is Admission.SEND
    assert c.after_success(T).clean  # not consecutive any more
    opened = _fail(c)
    assert (opened.state, opened.trips, opened.open_until) == (CircuitState.OPEN, 1, T + timedelta(seconds=10))
    assert opened.admit(T + timedelta(seconds=9)) is Admission.HOLD
    assert opened.admit(T + timedelta(seconds=10)) is Admission.PROBE
    assert _fail(opened) == opened  # a request already in flight when it opened changes nothing


def test_the_probe_decides_and_each_failed_probe_doubles_the_cool_down_up_to_the_cap() -> None:
    c = _fail(_fail(_fail(Circuit("benevity", "credential:k"))))
    lengths = []
    now = T
    for _ in range(4):
        now = c.open_until or now
        probing = c.probing(now, 40)
        assert probing.state is CircuitState.HALF_OPEN and probing.admit(now) is Admission.HOLD  # one probe only
        assert probing.admit(now + timedelta(seconds=40)) is Admission.PROBE  # its sender vanished: it lapses
        assert _fail(probing, now) == probing  # not the probe's answer: it does not decide
        c = _fail(probing, now, probe=True)
        lengths.append(((c.open_until or now) - now).total_seconds())
    assert lengths == [20, 35, 35, 35] and [cooldown_s(n, S) for n in (1, 2, 3)] == [10, 20, 35]
    undecided = c.probing(now, 40).probe_undecided(now)  # a 429 to the probe: the next sender probes at once
    assert undecided.state is CircuitState.OPEN and undecided.admit(now) is Admission.PROBE
    assert undecided.trips == c.trips and c.probe_undecided(now) == c
    closed = c.probing(now, 40).after_success(now)
    assert closed.clean and closed.admit(now) is Admission.SEND


def test_a_pause_holds_until_resumed_whatever_the_provider_answers() -> None:
    paused = Circuit("goodera", "*", CircuitState.PAUSED)
    assert paused.admit(T) is Admission.HOLD and _fail(paused) == paused and paused.after_success(T) == paused
    states = [paused, Circuit("goodera", "credential:k", CircuitState.OPEN)]
    assert provider_state(states, "goodera") is CircuitState.PAUSED
    assert provider_state(states, "benevity") is CircuitState.CLOSED


def test_zero_failures_turns_the_breaker_off() -> None:
    off = CircuitSettings(failures=0)
    c = Circuit("benevity", "credential:k")
    for _ in range(100):
        c = c.after_failure(T, off)
    assert c.clean


@pytest.mark.parametrize(
    ("outcome", "up"),
    [
        (AttemptOutcome.SUCCESS, True),
        (AttemptOutcome.PERMANENT, True),  # a refusal is an answer: the provider is up
        (AttemptOutcome.RETRYABLE, False),
        (AttemptOutcome.RATE_LIMITED, None),
        (AttemptOutcome.AUTH_EXPIRED, None),
        (AttemptOutcome.CONFIG, None),
    ],
)
def test_only_transient_failures_count(outcome, up) -> None:
    assert verdict(outcome) is up


def test_the_store_changes_state_under_a_lock_and_pauses_by_scope(engine) -> None:
    store = CircuitStore(engine)
    failed, changed = store.change("benevity", "credential:k", _fail)
    assert changed and failed.failures == 1
    same, changed = store.change("benevity", "credential:k", lambda c: c)
    assert not changed and same == failed
    store.pause("benevity", "acme", reason="ticket 7")
    store.pause("goodera", None)
    found = {(c.provider, c.scope): c for c in store.load()}
    assert found[("benevity", "company:acme")].state is CircuitState.PAUSED
    assert found[("benevity", "company:acme")].last_error == "ticket 7"
    assert found[("goodera", "*")].state is CircuitState.PAUSED
    assert found[("benevity", "credential:k")].failures == 1 and found[("benevity", "credential:k")].updated_at
    assert not store.resume("benevity", None) and store.resume("benevity", "acme")
    assert {c.scope for c in store.load("benevity")} == {"credential:k"}

    finding = circuit_finding(store.load(), T)
    assert not finding.passed and finding.severity == "WARN" and "goodera (paused)" in finding.description
    store.change("benevity", "credential:k", lambda c: _fail(_fail(c)))
    finding = circuit_finding(store.load(), T)
    assert finding.severity == "ERROR" and finding.metrics["circuits_open"] == 1
    assert {r["scope"] for r in finding.rows} == {"*", "credential:k"}
    store.resume("goodera", None)
    assert store.reset("benevity", "credential:k")
    assert circuit_finding(store.load(), T).passed


def test_a_run_of_successful_sends_reads_the_breakers_once_and_writes_nothing(engine, sandbox) -> None:
    """The send path pays no query per send: the state is read once per refresh interval, written on change only."""
    add_integration(engine, "acme", "benevity")
    add_events(engine, events("acme", 40))
    extract(engine, "acme", Provider.BENEVITY, env=ProviderEnv.from_env(sandbox.env()))
    statements: list[str] = []

    def count(_conn, _cursor, statement, *_args) -> None:
        if "impactin_circuits" in statement:
            statements.append(statement.split()[0].upper())

    sa.event.listen(engine, "before_cursor_execute", count)
    try:
        factory = factory_for(engine, sandbox, circuit=CircuitSettings(refresh_s=3600))
        report = deliver(engine, factory, "benevity")
        factory.close()
    finally:
        sa.event.remove(engine, "before_cursor_execute", count)
    assert report.totals.outcomes["success"] == 40
    assert statements == ["SELECT"], statements
