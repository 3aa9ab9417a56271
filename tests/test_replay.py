"""Replay against the real sandbox over loopback, on SQLite and PostgreSQL."""

import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import dagster as dg
import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from impactin_pipelines.connectors.registry import ConnectorFactory
from impactin_pipelines.defs.replay import impact_replay_job
from impactin_pipelines.defs.resources import DeliveryResource, ProvidersResource, WarehouseResource
from impactin_pipelines.domain.providers import Provider
from impactin_pipelines.providers.benevity.connector import sign
from impactin_pipelines.providers.benevity.fake import API_KEY, SIGNATURE_SECRET
from impactin_pipelines.providers.env import ProviderEnv
from impactin_pipelines.sandbox.server import SandboxServer
from impactin_pipelines.services.deliver import DeliveryRun
from impactin_pipelines.services.extract import extract, outbox_row
from impactin_pipelines.services.replay import (
    BUSY,
    DeliveryNotFound,
    ReplayRefused,
    ReplayResult,
    replay_all_failed,
    replay_many,
    replay_one,
)
from impactin_pipelines.settings import DeliverySettings, RetrySettings
from impactin_pipelines.store.delivery_log import attempts_for
from impactin_pipelines.store.outbox import Outbox
from impactin_pipelines.store.schema import impact_deliveries, impact_events
from tests.support import add_events, add_integration, event, events, rows

FAST = DeliverySettings(concurrency=4, lease_s=30, retry=RetrySettings(max_attempts=2, initial_delay_s=0.01))


@pytest.fixture
def factory(engine: Engine, sandbox: SandboxServer) -> Iterator[ConnectorFactory]:
    f = ConnectorFactory(engine, env=ProviderEnv.from_env(sandbox.env()), settings=FAST)
    yield f
    f.close()


def deliver(engine: Engine, factory: ConnectorFactory, company: str = "acme") -> None:
    DeliveryRun(engine, factory, provider=Provider.BENEVITY, company_ids=[company], settings=FAST).run()


def seed_rejected(engine: Engine, factory: ConnectorFactory, sandbox: SandboxServer, n: int = 3) -> list[dict]:
    """n rows of acme that Benevity rejected (422), then Benevity is fixed."""
    add_integration(engine, "acme", "benevity")
    add_events(engine, events("acme", n))
    extract(engine, "acme", Provider.BENEVITY)
    bnv = sandbox.providers["benevity"]
    bnv.configure({"reject_events": [f"evt_acme_{i:05d}" for i in range(n)]})
    deliver(engine, factory)
    bnv.reset()
    return rows(engine, status="failed")


def requests_for(sandbox: SandboxServer, key: str) -> list[dict]:
    return [r for r in sandbox.providers["benevity"].snapshot()["requests"] if r["idempotency_key"] == key]


def test_replay_sends_with_the_original_delivery_id_and_records_the_attempt(engine, factory, sandbox):
    row = seed_rejected(engine, factory, sandbox, n=1)[0]
    assert row["error_kind"] == "rejected" and row["attempt_count"] == 1

    result = replay_one(engine, factory, row["id"], run_id="replay-run-1")

    assert (result.id, result.success, result.new_status, result.error) == (row["id"], True, "success", None)
    sent = requests_for(sandbox, row["delivery_id"])
    assert [r["status"] for r in sent] == [201]
    after = rows(engine, id=row["id"])[0]
    assert after["status"] == "success" and after["attempt_count"] == 2 and after["error_kind"] is None
    assert after["claimed_by"] is None
    attempts = attempts_for(engine, row["delivery_id"])
    assert [(a["attempt_number"], a["outcome"], a["run_id"]) for a in attempts] == [
        (1, "permanent", None),
        (2, "success", "replay-run-1"),
    ]


def test_replay_by_delivery_id_and_refusal_of_a_delivered_row(engine, factory, sandbox):
    row = seed_rejected(engine, factory, sandbox, n=1)[0]
    assert replay_one(engine, factory, row["delivery_id"]).new_status == "success"
    with pytest.raises(ReplayRefused, match=r"^Cannot replay delivery with status: success$"):
        replay_one(engine, factory, row["id"])
    assert len(requests_for(sandbox, row["delivery_id"])) == 1


def test_unknown_id_and_other_company_are_not_found(engine, factory, sandbox):
    row = seed_rejected(engine, factory, sandbox, n=1)[0]
    with pytest.raises(DeliveryNotFound, match=r"^delivery nope not found$"):
        replay_one(engine, factory, "nope")
    with pytest.raises(DeliveryNotFound, match=f"delivery {row['id']} not found"):
        replay_one(engine, factory, row["id"], company_ids=["globex"])
    assert replay_one(engine, factory, row["id"], company_ids=["acme"]).success
    assert requests_for(sandbox, row["delivery_id"])[0]["status"] == 201


def test_a_row_held_by_someone_else_is_refused_not_sent(engine, factory, sandbox):
    row = seed_rejected(engine, factory, sandbox, n=1)[0]
    held = Outbox(engine).claim(
        claimant="otherhost/1/1/abc",
        provider="benevity",
        company_ids=None,
        limit=10,
        lease_s=60,
        ids=[row["id"]],
        statuses=("failed",),
        due_only=False,
    )
    assert [h.id for h in held] == [row["id"]]
    with pytest.raises(ReplayRefused, match=f"^{BUSY}$"):
        replay_one(engine, factory, row["id"])
    assert requests_for(sandbox, row["delivery_id"]) == []
    [result] = replay_many(engine, factory, [row["id"]])
    assert (result.success, result.new_status, result.error) == (False, "failed", BUSY)


def test_transient_failure_on_replay_reports_the_new_status(engine, factory, sandbox):
    row = seed_rejected(engine, factory, sandbox, n=1)[0]
    sandbox.providers["benevity"].configure({"fail_next": {"status": 503, "count": 5}})
    result = replay_one(engine, factory, row["id"])
    assert result.success is False and result.new_status == "retrying"
    assert result.error is not None and "503" in result.error
    after = rows(engine, id=row["id"])[0]
    assert after["status"] == "retrying" and after["next_attempt_at"] is not None
    assert after["attempt_count"] == 1 + FAST.retry.max_attempts


@pytest.mark.parametrize("attempt", range(3))
def test_two_simultaneous_replays_send_once(engine, factory, sandbox, attempt) -> None:
    row = seed_rejected(engine, factory, sandbox, n=1)[0]
    sandbox.providers["benevity"].configure({"latency_ms": 150})
    barrier = threading.Barrier(2)
    outcomes: list[ReplayResult | ReplayRefused] = []

    def go() -> None:
        barrier.wait(timeout=10)
        try:
            outcomes.append(replay_one(engine, factory, row["id"]))
        except ReplayRefused as exc:
            outcomes.append(exc)

    threads = [threading.Thread(target=go) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert not any(t.is_alive() for t in threads)
    assert len(requests_for(sandbox, row["delivery_id"])) == 1
    succeeded = [o for o in outcomes if isinstance(o, ReplayResult)]
    refused = [str(o) for o in outcomes if isinstance(o, ReplayRefused)]
    assert len(succeeded) == 1 and succeeded[0].new_status == "success"
    assert refused in ([BUSY], ["Cannot replay delivery with status: success"])
    assert rows(engine, id=row["id"])[0]["attempt_count"] == 2


def test_replay_many_mixes_results_in_order_and_caps_at_100(engine, factory, sandbox):
    failed = seed_rejected(engine, factory, sandbox, n=2)
    a, b = failed
    assert replay_one(engine, factory, b["id"]).success
    results = replay_many(engine, factory, [a["id"], "missing", b["id"], a["delivery_id"]])
    assert [(r.id, r.success, r.new_status, r.error) for r in results] == [
        (a["id"], True, "success", None),
        ("missing", False, None, "delivery missing not found"),
        (b["id"], False, "success", "Cannot replay delivery with status: success"),
        (a["delivery_id"], True, "success", None),
    ]
    assert len(requests_for(sandbox, a["delivery_id"])) == 1  # named twice, sent once
    with pytest.raises(ValueError, match="ids: 101 given, at most 100"):
        replay_many(engine, factory, [f"id{i}" for i in range(101)])


def _add_rows_aged(engine: Engine, company: str, provider: Provider, n: int, start: datetime) -> None:
    """n failed/rejected rows, created a minute apart (oldest first), and the events behind them."""
    evs = events(company, n, prefix=f"old{provider.value[:3]}")
    add_events(engine, evs)
    outbox = Outbox(engine)
    for i, raw in enumerate(evs):
        outbox.add([outbox_row(raw, provider)], now=start + timedelta(minutes=n - i))  # newest event first
    with engine.begin() as conn:
        conn.execute(
            impact_deliveries.update()
            .where(impact_deliveries.c.company_id == company)
            .values(status="failed", error_kind="rejected", last_error="HTTP 422")
        )


def test_retry_all_failed_pages_through_every_row_oldest_first(engine, factory, sandbox):
    add_integration(engine, "acme", "benevity")
    add_integration(engine, "acme", "goodera")
    start = datetime(2026, 1, 1, tzinfo=UTC)
    _add_rows_aged(engine, "acme", Provider.BENEVITY, 7, start)
    _add_rows_aged(engine, "acme", Provider.GOODERA, 2, start)
    add_integration(engine, "globex", "benevity")
    _add_rows_aged(engine, "globex", Provider.BENEVITY, 2, start)
    sandbox.providers["benevity"].configure({"reject_events": ["oldben_acme_00003"]})  # fails again: no loop

    results = replay_all_failed(engine, factory, company_id="acme", provider="benevity", page_size=3)

    expected_order = [r["id"] for r in sorted(rows(engine, company_id="acme", provider="benevity"), key=_age)]
    assert [r.id for r in results] == expected_order
    assert len(results) == 7
    assert sum(r.success for r in results) == 6
    [again] = [r for r in results if not r.success]
    assert again.new_status == "failed" and "422" in (again.error or "")
    assert {r["status"] for r in rows(engine, company_id="globex")} == {"failed"}
    assert {r["status"] for r in rows(engine, provider="goodera")} == {"failed"}
    with pytest.raises(ValueError, match="provider 'nope' is not one of"):
        replay_all_failed(engine, factory, company_id="acme", provider="nope")


def _age(row: dict) -> tuple:
    return (row["created_at"], row["id"])


def _every_provider(engine: Engine, monkeypatch: pytest.MonkeyPatch) -> dict[str, dict]:
    """One failed row per provider for acme (Workday over SOAP)."""
    start = datetime(2026, 1, 1, tzinfo=UTC)
    for provider in Provider:
        add_integration(engine, "acme", provider.value)
        _add_rows_aged(engine, "acme", provider, 1, start)
    return {r["provider"]: r for r in rows(engine)}


def test_retry_all_failed_without_provider_covers_every_provider(engine, factory, sandbox, monkeypatch):
    by_provider = _every_provider(engine, monkeypatch)
    results = replay_all_failed(engine, factory, company_id="acme", page_size=2)
    assert len(results) == 3 and all(r.success for r in results), results
    for name, row in by_provider.items():
        sent = [r for r in sandbox.providers[name].snapshot()["requests"] if r["idempotency_key"] == row["delivery_id"]]
        assert [r["status"] for r in sent] in ([200], [201]), (name, sent)
    assert {r["status"] for r in rows(engine)} == {"success"}


def test_dry_run_masks_the_secrets_of_every_provider(engine, factory, sandbox, monkeypatch):
    by_provider = _every_provider(engine, monkeypatch)
    results = replay_all_failed(engine, factory, company_id="acme", dry_run=True)
    assert all(r.success for r in results), results
    plans = {r.dry_run["provider"]: r.dry_run for r in results if r.dry_run}
    assert set(plans) == {"benevity", "goodera", "workday"}
    for name, plan in plans.items():
        assert plan["request"]["headers"]["X-Idempotency-Key"] == by_provider[name]["delivery_id"]
        assert plan["endpoint"].startswith(f"POST {sandbox.url}/{name}")
    text = json.dumps(plans)
    secrets = [v for k, v in sandbox.env().items() if any(w in k for w in ("SECRET", "PASSWORD", "API_KEY"))]
    assert len(secrets) == 8 and not [s for s in secrets if s in text]
    assert plans["goodera"]["request"]["headers"]["Authorization"] == "***"  # masked (and never fetched)
    for provider in sandbox.providers.values():
        assert provider.snapshot()["requests"] == []  # nothing sent, not even a token request


def test_dry_run_shows_the_exact_request_without_sending_or_claiming(engine, factory, sandbox):
    row = seed_rejected(engine, factory, sandbox, n=1)[0]
    before = rows(engine, id=row["id"])[0]

    result = replay_one(engine, factory, row["id"], dry_run=True)

    assert result.success and result.new_status == "failed"
    plan = result.dry_run
    assert plan is not None
    assert plan["idempotencyKey"] == row["delivery_id"]
    assert plan["request"]["headers"]["X-Idempotency-Key"] == row["delivery_id"]
    assert plan["endpoint"] == f"POST {sandbox.url}/benevity/api/v1/impact-events"
    assert plan["request"]["body"] == row["payload"]
    assert plan["payload"] == json.loads(row["payload"])
    assert plan["request"]["headers"]["X-Benevity-Signature"] == sign(row["payload"].encode(), SIGNATURE_SECRET)
    text = json.dumps(plan)
    assert API_KEY not in text and SIGNATURE_SECRET not in text
    assert plan["request"]["headers"]["X-API-Key"] == "***"
    assert sandbox.providers["benevity"].snapshot()["requests"] == []
    assert rows(engine, id=row["id"])[0] == before

    [all_plan] = replay_all_failed(engine, factory, company_id="acme", dry_run=True)
    assert all_plan.dry_run == plan
    assert sandbox.providers["benevity"].snapshot()["requests"] == []


def _fix_event(engine: Engine, event_id: str, **values) -> None:
    with engine.begin() as conn:
        conn.execute(impact_events.update().where(impact_events.c.event_id == event_id).values(**values))


def test_quarantined_row_is_refused_until_its_event_is_corrected(engine, factory, sandbox):
    add_integration(engine, "acme", "benevity")
    add_events(engine, [event("bad_1", "acme", value="lots")])
    extract(engine, "acme", Provider.BENEVITY)
    [row] = rows(engine)
    assert row["error_kind"] == "invalid_event" and row["payload"] is None

    with pytest.raises(ReplayRefused, match="value='lots'"):
        replay_one(engine, factory, row["id"])
    with pytest.raises(ReplayRefused, match="value='lots'"):
        replay_one(engine, factory, row["id"], dry_run=True)
    assert rows(engine, id=row["id"])[0]["payload"] is None

    _fix_event(engine, "bad_1", value=7)
    preview = replay_one(engine, factory, row["id"], dry_run=True)
    assert preview.dry_run is not None and preview.dry_run["payloadRebuilt"] is True
    assert preview.dry_run["payload"]["event"]["impact"]["value"] == 7
    assert rows(engine, id=row["id"])[0]["payload"] is None  # a dry run writes nothing

    result = replay_one(engine, factory, row["id"])
    assert result.success and result.new_status == "success"
    after = rows(engine, id=row["id"])[0]
    assert json.loads(after["payload"])["event"]["impact"]["value"] == 7
    assert after["payload_hash"] and after["delivery_id"] == row["delivery_id"]
    [accepted] = sandbox.providers["benevity"].snapshot()["accepted"]
    assert accepted["idempotency_key"] == row["delivery_id"]


def test_quarantined_row_whose_event_is_gone_is_refused(engine, factory, sandbox):
    add_integration(engine, "acme", "benevity")
    add_events(engine, [event("bad_2", "acme", unit=None)])
    extract(engine, "acme", Provider.BENEVITY)
    [row] = rows(engine)
    with engine.begin() as conn:
        conn.execute(sa.delete(impact_events).where(impact_events.c.event_id == "bad_2"))
    [result] = replay_many(engine, factory, [row["id"]])
    assert result.success is False
    assert result.error == "Cannot replay: event bad_2 no longer exists in impact_events"


# -- the doors: CLI (a real subprocess) and the Dagster job ---------------------------------------------------
IMPACTIN = str(Path(sys.executable).parent / "impactin")


def run_cli(args: list[str], warehouse_url: str, sandbox: SandboxServer, **extra: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BENEVITY_", "GOODERA_", "WORKDAY_"))}
    env.update(sandbox.env(), IMPACTIN_WAREHOUSE_URL=warehouse_url, IMPACTIN_RETRY_INITIAL_DELAY_S="0.01", **extra)
    return subprocess.run([IMPACTIN, *args], env=env, capture_output=True, text=True, timeout=60, check=False)


def test_cli_replay_ids_json_and_refusals(engine, factory, sandbox, warehouse_url):
    a, b = seed_rejected(engine, factory, sandbox, n=2)
    done = run_cli(["replay", a["id"], "nope", "--json"], warehouse_url, sandbox)
    assert done.returncode == 1, done.stderr
    doc = json.loads(done.stdout)
    assert doc["summary"] == {"total": 2, "successful": 1, "failed": 1}
    assert doc["results"] == [
        {"id": a["id"], "success": True, "newStatus": "success"},
        {"id": "nope", "success": False, "newStatus": None, "error": "delivery nope not found"},
    ]
    again = run_cli(["replay", a["id"]], warehouse_url, sandbox)
    assert again.returncode == 1
    assert "Cannot replay delivery with status: success" in again.stdout
    assert len(requests_for(sandbox, a["delivery_id"])) == 1
    assert rows(engine, id=b["id"])[0]["status"] == "failed"


def test_cli_replay_all_failed_dry_run_then_for_real(engine, factory, sandbox, warehouse_url):
    failed = seed_rejected(engine, factory, sandbox, n=3)
    dry = run_cli(["replay", "--all-failed", "--company", "acme", "--dry-run"], warehouse_url, sandbox)
    assert dry.returncode == 0, dry.stderr
    assert dry.stdout.count("would send") == 3
    assert f"X-Idempotency-Key: {failed[0]['delivery_id']}" in dry.stdout
    assert "X-API-Key: ***" in dry.stdout and API_KEY not in dry.stdout + dry.stderr
    assert sandbox.providers["benevity"].snapshot()["requests"] == []

    real = run_cli(["replay", "--all-failed", "--company", "acme", "--provider", "benevity"], warehouse_url, sandbox)
    assert real.returncode == 0, real.stderr
    assert "3 replay(s): 3 delivered, 0 not" in real.stdout
    assert {r["status"] for r in rows(engine)} == {"success"}


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ([], "give delivery IDs, or --all-failed --company C"),
        (["x", "--all-failed", "--company", "acme"], "not both"),
        (["--all-failed"], "--all-failed needs --company"),
        (["x", "--company", "acme"], "--company and --provider go with --all-failed"),
        (["--all-failed", "--company", "a", "--provider", "nope"], "'nope' is not one of"),
    ],
)
def test_cli_replay_rejects_bad_choices(args, message, sqlite_engine, sandbox):
    done = run_cli(["replay", *args], str(sqlite_engine.url), sandbox)
    assert done.returncode == 2
    assert message in done.stderr


def _resources(warehouse_url: str, sandbox: SandboxServer) -> dict[str, object]:
    return {
        "warehouse": WarehouseResource(url=warehouse_url),
        "providers": ProvidersResource(**sandbox.env()),
        "delivery": DeliveryResource(concurrency=2, lease_s=30, max_run_attempts=5),
    }


def _op_config(**config: object) -> dict[str, object]:
    return {"ops": {"replay_deliveries": {"config": config}}}


def test_dagster_replay_job_replays_ids_and_records_its_run(engine, factory, sandbox, warehouse_url):
    a, b = seed_rejected(engine, factory, sandbox, n=2)
    with dg.instance_for_test() as instance:
        result = impact_replay_job.execute_in_process(
            run_config=_op_config(ids=[a["id"], b["delivery_id"]]),
            resources=_resources(warehouse_url, sandbox),
            instance=instance,
        )
        assert result.success
        [materialized] = [e for e in result.all_events if e.event_type_value == "STEP_OUTPUT"]
        metadata = materialized.event_specific_data.metadata
        assert (metadata["total"].value, metadata["successful"].value, metadata["failed"].value) == (2, 2, 0)
        attempts = attempts_for(engine, a["delivery_id"])
        assert attempts[-1]["run_id"] == result.run_id and attempts[-1]["outcome"] == "success"
        messages = [e.message or "" for e in instance.all_logs(result.run_id)]
        assert any(f"deliveryId={a['delivery_id']}" in m and "replay requested" in m for m in messages)


def test_dagster_replay_job_dry_run_and_all_failed(engine, factory, sandbox, warehouse_url):
    seed_rejected(engine, factory, sandbox, n=2)
    with dg.instance_for_test() as instance:
        dry = impact_replay_job.execute_in_process(
            run_config=_op_config(all_failed=True, company="acme", dry_run=True),
            resources=_resources(warehouse_url, sandbox),
            instance=instance,
        )
        assert dry.success
        [output] = [e for e in dry.all_events if e.event_type_value == "STEP_OUTPUT"]
        plans = output.event_specific_data.metadata["would_send"].value
        assert len(plans) == 2 and all(p["request"]["headers"]["X-API-Key"] == "***" for p in plans)
        assert API_KEY not in json.dumps(plans)
        assert sandbox.providers["benevity"].snapshot()["requests"] == []

        sandbox.providers["benevity"].configure({"reject_events": ["evt_acme_00001"]})
        real = impact_replay_job.execute_in_process(
            run_config=_op_config(all_failed=True, company="acme", provider="benevity"),
            resources=_resources(warehouse_url, sandbox),
            instance=instance,
            raise_on_error=False,
        )
        assert not real.success  # one replay was rejected again: the run says so
        [failure] = [e for e in real.all_events if e.is_step_failure]
        assert "1 of 2 replays did not end in success" in failure.step_failure_data.error.message
        assert [r["status"] for r in rows(engine)] == ["success", "failed"]


def test_dagster_replay_job_rejects_bad_config(sqlite_engine, sandbox):
    with dg.instance_for_test() as instance:
        result = impact_replay_job.execute_in_process(
            run_config=_op_config(ids=["x"], all_failed=True, provider="nope"),
            resources=_resources(str(sqlite_engine.url), sandbox),
            instance=instance,
            raise_on_error=False,
        )
    [failure] = [e for e in result.all_events if e.is_step_failure]
    message = failure.step_failure_data.error.message
    assert "not both" in message and "all_failed needs company" in message and "provider='nope'" in message


def test_a_disabled_integration_is_not_replayed(engine, factory, sandbox):
    row = seed_rejected(engine, factory, sandbox, n=1)[0]
    with engine.begin() as conn:
        conn.exec_driver_sql("UPDATE company_integrations SET enabled = FALSE")
    with pytest.raises(ReplayRefused, match=r"^Cannot replay: the benevity integration of acme is not enabled$"):
        replay_one(engine, factory, row["id"])
    [dry] = replay_all_failed(engine, factory, company_id="acme", dry_run=True)
    assert not dry.success and "not enabled" in (dry.error or "")
    assert sandbox.providers["benevity"].snapshot()["requests"] == []
