"""The circuit breaker, for every provider on both backends: an outage opens it, held rows spend no attempt, a failed
probe reopens it for twice as long, a good probe closes it, and the ledger balances. An operator's pause holds a
provider (or one company) without spending anything, and a second process sees and sets the shared state.

Time is advanced as in the outage drills: the breaker's `open_until` is set to now (instead of sleeping the
cool-down), just as retrying rows are made due.
"""

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import dagster as dg
import sqlalchemy as sa

from impactin_pipelines.connectors.circuit import CircuitState
from impactin_pipelines.defs.assets.delivery import impact_deliveries, impact_outbox
from impactin_pipelines.defs.assets.stats import delivery_stats
from impactin_pipelines.defs.checks import circuits_closed
from impactin_pipelines.defs.orchestration.partitions import partition_key
from impactin_pipelines.defs.resources import DeliveryResource, ProvidersResource, WarehouseResource
from impactin_pipelines.domain.statuses import RowOutcome
from impactin_pipelines.settings import CircuitSettings
from impactin_pipelines.store.circuits import CircuitStore, snapshot
from impactin_pipelines.store.schema import impact_deliveries as d
from impactin_pipelines.store.schema import impact_delivery_attempts as a
from impactin_pipelines.store.schema import impactin_circuits
from tests.cli_support import cli_env, run_cli
from tests.reliability.ledger import BY_NAME, COMPANY, make_due, make_factory, read, seed, settle
from tests.support import deliver

N = 12
THRESHOLD = 3
CONCURRENCY = 4
DOWN = {"fail_next": {"status": 503, "count": 100_000}}
BREAKER = CircuitSettings(failures=THRESHOLD, cooldown_s=60, max_cooldown_s=600, refresh_s=0)


def _factory(engine, sandbox, case) -> Any:
    return make_factory(engine, sandbox, case, concurrency=CONCURRENCY, circuit=BREAKER)


def _down(sandbox, case) -> None:
    sandbox.providers[case.provider].configure(DOWN)


def _up(sandbox, case) -> None:
    provider = sandbox.providers[case.provider]
    with provider.lock:
        provider.faults.fail_next.clear()


def _sends(sandbox, case) -> int:
    return sum(1 for s in sandbox.providers[case.provider].snapshot()["requests"] if case.is_send(s["path"]))


def _attempt_rows(engine) -> int:
    with engine.connect() as conn:
        return int(conn.execute(sa.select(sa.func.count()).select_from(a)).scalar_one())


def _statuses(engine) -> dict[str, int]:
    with engine.connect() as conn:
        return dict(conn.execute(sa.select(d.c.status, sa.func.count()).group_by(d.c.status)).all())


def _breaker(engine, case) -> Any:
    [found] = [x for x in snapshot(engine) if x.provider == case.provider and x.scope.startswith("credential:")]
    return found


def _cool_down_over(engine) -> None:
    """Advance the breaker's clock: its cool-down ends now."""
    with engine.begin() as conn:
        stmt = sa.update(impactin_circuits).where(impactin_circuits.c.state == "open")
        conn.execute(stmt.values(open_until=datetime.now(UTC) - timedelta(seconds=1)))


def _held(report) -> int:
    return report.totals.outcomes[RowOutcome.HELD]


def test_an_outage_opens_the_circuit_a_probe_closes_it_and_nothing_is_lost(engine, sandbox, case) -> None:
    seed(engine, case, N, sandbox=sandbox)
    factory = _factory(engine, sandbox, case)
    _down(sandbox, case)
    try:
        first = deliver(engine, factory, case.provider)
        breaker = _breaker(engine, case)
        assert breaker.state is CircuitState.OPEN and breaker.failures >= THRESHOLD, breaker
        assert breaker.company_id == COMPANY and "503" in (breaker.last_error or ""), breaker
        sent = _sends(sandbox, case)
        # the threshold, plus what was already in flight when it opened; the rest was held
        assert THRESHOLD <= sent <= THRESHOLD + CONCURRENCY, sent
        assert _held(first) >= N - sent and _attempt_rows(engine) == sent  # a held row spends no attempt
        assert set(_statuses(engine)) <= {"pending", "retrying"}

        # Still open: nothing goes out, whatever is due. Which rows took the failures depends on timing (a Goodera
        # run sends a company's first row alone while its quota is new, and may retry that one row until the
        # circuit opens, settling it `retrying` with a backoff), so every row is made due first.
        make_due(engine)
        second = deliver(engine, factory, case.provider)  # still open: nothing goes out
        assert _sends(sandbox, case) == sent and _attempt_rows(engine) == sent
        assert _held(second) == N, second.totals

        _cool_down_over(engine)
        make_due(engine)
        third = deliver(engine, factory, case.provider)  # the probe fails: reopened, for twice as long
        assert _sends(sandbox, case) == sent + 1 and _attempt_rows(engine) == sent + 1
        reopened = _breaker(engine, case)
        assert reopened.state is CircuitState.OPEN and reopened.trips == 2, reopened
        assert reopened.open_until and reopened.updated_at
        cool_down = (reopened.open_until - reopened.updated_at).total_seconds()
        assert abs(cool_down - 2 * BREAKER.cooldown_s) < 1, cool_down
        assert _held(third) == N, third.totals  # the probe row too: its retry waits for the next probe

        _up(sandbox, case)
        _cool_down_over(engine)

        def run(_: int) -> None:
            deliver(engine, factory, case.provider)
            _cool_down_over(engine)  # a no-op once it is closed

        runs = settle(engine, run, max_runs=4)
    finally:
        factory.close()
    closed = _breaker(engine, case)
    assert closed.state is CircuitState.CLOSED and closed.failures == 0 and closed.trips == 0, closed
    read(engine, sandbox, case, "circuit breaker", runs=runs + 3).check()


def test_a_paused_provider_sends_nothing_and_spends_no_attempt(engine, sandbox, case) -> None:
    seed(engine, case, N, sandbox=sandbox)
    store = CircuitStore(engine)
    factory = _factory(engine, sandbox, case)
    try:
        store.pause(case.provider, None, reason="provider maintenance")
        held = deliver(engine, factory, case.provider)
        assert _held(held) == N and _sends(sandbox, case) == 0 and _attempt_rows(engine) == 0
        assert _statuses(engine) == {"pending": N}
        [reason] = {r.error for r in held.rows.values()}
        assert reason and "paused by an operator" in reason, reason

        assert store.resume(case.provider, None) and not store.resume(case.provider, None)
        store.pause(case.provider, COMPANY)  # this company only
        assert _held(deliver(engine, factory, case.provider)) == N and _sends(sandbox, case) == 0
        store.resume(case.provider, COMPANY)
        store.pause(case.provider, "another-company")  # somebody else's window: ours go out
        runs = settle(engine, lambda _: deliver(engine, factory, case.provider))
    finally:
        factory.close()
    read(engine, sandbox, case, "paused, then resumed", runs=runs + 2).check()


def test_a_second_process_sees_the_state_and_can_pause(engine, sandbox, tmp_path) -> None:
    case = BY_NAME["benevity"]
    seed(engine, case, N, sandbox=sandbox)
    env = cli_env(tmp_path, engine.url.render_as_string(hide_password=False), sandbox)
    factory = _factory(engine, sandbox, case)
    _down(sandbox, case)
    try:
        deliver(engine, factory, case.provider)  # opens it here
        shown = run_cli(["providers", "status", "benevity", "--json"], env)
        assert shown.returncode == 0, shown.stderr
        [row] = [r for r in json.loads(shown.stdout)["data"] if r["scope"].startswith("credential:")]
        assert row["state"] == "open" and row["failures"] >= THRESHOLD and row["company"] == COMPANY, row

        paused = run_cli(["providers", "pause", "benevity", "--reason", "ticket 42"], env)
        assert paused.returncode == 0, paused.stderr
        _up(sandbox, case)
        _cool_down_over(engine)
        make_due(engine)
        sent = _sends(sandbox, case)
        assert _held(deliver(engine, factory, case.provider)) == N and _sends(sandbox, case) == sent

        table = run_cli(["providers", "status"], env)
        assert table.returncode == 0 and "paused" in table.stdout and "ticket 42" in table.stdout, table.stdout
        resumed = run_cli(["providers", "resume", "benevity"], env)
        assert resumed.returncode == 0, resumed.stderr
        again = run_cli(["providers", "resume", "benevity"], env)
        assert again.returncode == 1 and "not paused" in again.stderr, again.stderr
        _cool_down_over(engine)
        runs = settle(engine, lambda _: deliver(engine, factory, case.provider))
    finally:
        factory.close()
    assert _breaker(engine, case).state is CircuitState.CLOSED
    read(engine, sandbox, case, "second process", runs=runs + 2).check()


def test_the_delivery_job_shows_held_rows_and_the_stats_show_the_circuit(engine, sandbox) -> None:
    """Through Dagster: a paused provider's partition says what it held; the check and the statistics say why."""
    case = BY_NAME["benevity"]
    seed(engine, case, N, sandbox=sandbox)
    CircuitStore(engine).pause(case.provider, COMPANY)
    url = engine.url.render_as_string(hide_password=False)
    resources = {
        "warehouse": WarehouseResource(url=url),
        "providers": ProvidersResource(**sandbox.env()),
        "delivery": DeliveryResource(concurrency=CONCURRENCY, lease_s=30),
    }
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions("company", [COMPANY])
        result = dg.materialize(
            [impact_outbox, impact_deliveries, delivery_stats, circuits_closed],
            instance=instance,
            partition_key=partition_key(COMPANY, case.provider),
            resources=resources,
            selection=[impact_outbox.key, impact_deliveries.key],
        )
        assert result.success
        [delivered] = result.asset_materializations_for_node("impact_deliveries")
        assert delivered.metadata["held"].value == N and delivered.metadata["attempts"].value == 0
        assert _sends(sandbox, case) == 0
        checked = dg.materialize(
            [impact_outbox, impact_deliveries, delivery_stats, circuits_closed],
            instance=instance,
            resources=resources,
            selection=dg.AssetSelection.assets(delivery_stats) | dg.AssetSelection.checks(circuits_closed),
        )
        [stats] = checked.asset_materializations_for_node("delivery_stats")
        [check] = checked.get_asset_check_evaluations()
    assert stats.metadata["benevity_circuit"].value == "paused"
    assert stats.metadata["benevity_queue_depth"].value == N
    assert not check.passed and check.severity == dg.AssetCheckSeverity.WARN
    assert COMPANY in str(check.metadata["rows"].value)
