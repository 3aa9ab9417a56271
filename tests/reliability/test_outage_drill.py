"""Outage drills, for every provider on both backends: the nightly run, then the rerun sensor (evaluated with
`build_sensor_context` against a real Dagster instance) and the runs it requests, executed in-process. Time is
advanced by making `retrying` rows due (their `next_attempt_at`, minutes away, is set to now) instead of sleeping.

1. The provider is down for longer than a run's retries (the nightly run and the first re-run): the rows wait
   `retrying`, and the sensor's re-runs deliver them once the provider is back, within the attempt cap.
2. The provider never comes back: the rows end `failed`/`exhausted` at the cap, the sensor stops asking for runs,
   and the operator's replay (`impactin replay --all-failed`) delivers them once the provider is back.

The circuit breaker is off here (IMPACTIN_CIRCUIT_FAILURES=0): these drills count every retry the policy makes
against a provider that is down. With the breaker on (the default), the same outage opens it and holds the rows
instead: tests/reliability/test_circuit_breaker.py drills that.
"""

from datetime import UTC, datetime, timedelta

import dagster as dg
import pytest

from impactin_pipelines.defs.assets.delivery import impact_deliveries, impact_outbox
from impactin_pipelines.defs.jobs import impact_delivery_job
from impactin_pipelines.defs.orchestration.planning import PartitionRange
from impactin_pipelines.defs.rerun import ATTEMPT_TAG, impact_rerun_sensor
from impactin_pipelines.defs.resources import (
    DeliveryResource,
    ProvidersResource,
    RetryConfig,
    WarehouseResource,
)
from impactin_pipelines.services.replay import replay_all_failed
from tests.reliability.ledger import COMPANY, make_due, make_factory, read, seed
from tests.support import rows

N = 6


@pytest.fixture(autouse=True)
def _no_circuit_breaker(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("IMPACTIN_CIRCUIT_FAILURES", "0")


DOWN = {"fail_next": {"status": 503, "count": 100_000}}


# The job's retry policy: real retries, short sleeps. The spacing between runs stays the real one (5 minutes,
# doubling): the drills advance the clock instead.
FAST = RetryConfig(initial_delay_s=0.01, max_delay_s=0.05)


def _url(engine) -> str:
    return engine.url.render_as_string(hide_password=False)


def _job(engine, sandbox, case, cap: int) -> dg.JobDefinition:
    resources = {
        "warehouse": WarehouseResource(url=_url(engine)),
        "providers": ProvidersResource(**{**sandbox.env(), **case.env}),
        "delivery": DeliveryResource(concurrency=4, lease_s=30, max_run_attempts=cap, retry=FAST),
    }
    defs = dg.Definitions(assets=[impact_outbox, impact_deliveries], jobs=[impact_delivery_job], resources=resources)
    return defs.resolve_job_def(impact_delivery_job.name)


def _tick(instance: dg.DagsterInstance, engine, cap: int, cursor: str | None) -> dg.SensorResult:
    resources = {
        "warehouse": WarehouseResource(url=_url(engine)),
        "delivery": DeliveryResource(max_run_attempts=cap),
    }
    with dg.build_sensor_context(instance=instance, resources=resources, cursor=cursor) as context:
        result = impact_rerun_sensor(context)
    assert isinstance(result, dg.SensorResult)
    return result


def _nightly(job: dg.JobDefinition, instance: dg.DagsterInstance, case) -> None:
    tags = PartitionRange(COMPANY, COMPANY, case.provider, case.provider).tags("schedule")
    assert job.execute_in_process(instance=instance, tags=tags).success


def _execute(job: dg.JobDefinition, instance: dg.DagsterInstance, request: dg.RunRequest) -> None:
    assert job.execute_in_process(instance=instance, tags=request.tags, run_config=request.run_config).success


def _prepare(engine, sandbox, case) -> None:
    seed(engine, case, N, extract_now=False)  # the nightly run extracts
    make_factory(engine, sandbox, case).close()  # an OAuth token in the store: the outage is the API's
    sandbox.providers[case.provider].configure(DOWN)


def test_outage_longer_than_a_run_is_healed_by_the_rerun_sensor(engine, sandbox, case) -> None:
    cap = 4
    _prepare(engine, sandbox, case)
    job = _job(engine, sandbox, case, cap)
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions("company", [COMPANY])
        _nightly(job, instance, case)
        parked = rows(engine)
        assert {r["status"] for r in parked} == {"retrying"}
        soonest = min(r["next_attempt_at"].replace(tzinfo=UTC) for r in parked)
        assert soonest > datetime.now(UTC) + timedelta(minutes=4)  # spaced: no hot loop against a provider that is down
        waiting = _tick(instance, engine, cap, None)
        assert not waiting.run_requests, "nothing is due yet"

        cursor, reruns = waiting.cursor, 0
        for _ in range(cap + 2):  # bounded: the drill fails rather than loops
            make_due(engine)
            tick = _tick(instance, engine, cap, cursor)
            cursor = tick.cursor
            if not tick.run_requests:
                break
            [request] = tick.run_requests
            assert request.tags[ATTEMPT_TAG] == str(reruns + 2)
            if reruns == 1:
                sandbox.providers[case.provider].faults.fail_next.clear()  # the provider is back
            _execute(job, instance, request)
            reruns += 1
        else:
            pytest.fail("the sensor kept requesting runs")
    print(f"\nre-runs requested by the sensor: {reruns}")
    assert reruns == 2  # the first re-run still met the outage, the second delivered
    assert max(r["run_count"] for r in rows(engine)) <= cap
    ledger = read(engine, sandbox, case, "outage drill: back after 2 runs", runs=1 + reruns).check()
    assert sum(1 for s in ledger.sends if s["status"] == 503) == 2 * N * 3  # 2 runs x 3 attempts per row


def test_provider_that_never_comes_back_ends_exhausted_and_the_sensor_stops(engine, sandbox, case) -> None:
    cap = 3
    _prepare(engine, sandbox, case)
    job = _job(engine, sandbox, case, cap)
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions("company", [COMPANY])
        _nightly(job, instance, case)
        cursor, reruns, keys = None, 0, set()
        for _ in range(cap + 2):
            make_due(engine)
            tick = _tick(instance, engine, cap, cursor)
            cursor = tick.cursor
            if not tick.run_requests:
                break
            [request] = tick.run_requests
            assert request.run_key not in keys
            keys.add(request.run_key)
            _execute(job, instance, request)
            reruns += 1
        else:
            pytest.fail("the sensor kept requesting runs")
        make_due(engine)
        assert not _tick(instance, engine, cap, cursor).run_requests  # and it stays quiet
    assert reruns == cap - 1  # the nightly run plus cap-1 re-runs
    final = rows(engine)
    assert {(r["status"], r["error_kind"], r["run_count"]) for r in final} == {("failed", "exhausted", cap)}
    assert all(f"gave up after {cap} run(s)" in r["last_error"] for r in final)
    ledger = read(engine, sandbox, case, "outage drill: never back", runs=cap)
    ledger.check(failed={r["event_id"] for r in final})
    assert ledger.stored == []

    sandbox.providers[case.provider].faults.fail_next.clear()  # back at last: the operator replays
    factory = make_factory(engine, sandbox, case)
    try:
        results = replay_all_failed(engine, factory, company_id=COMPANY, provider=case.provider)
    finally:
        factory.close()
    assert len(results) == N and all(r.success for r in results)
    read(engine, sandbox, case, "outage drill: never back, then replayed", runs=cap + 1).check()
