"""Reconciliation against what the sandbox providers hold: the three faults (a provider that silently drops accepted
events, one that holds an extra event, one that stores a different payload), `--repair` with the same idempotency
key, the asset and its check over a range run, and `impactin reconcile` as an operator runs it."""

import json
from datetime import UTC, datetime, timedelta

import dagster as dg
import pytest

from impactin_pipelines.connectors.readback import Period
from impactin_pipelines.defs.assets.reconciliation import (
    delivery_reconciliation,
    delivery_reconciliation_job,
    reconciliation_agrees,
)
from impactin_pipelines.defs.orchestration.partitions import partition_key
from impactin_pipelines.defs.orchestration.planning import RANGE_END_TAG, RANGE_START_TAG
from impactin_pipelines.defs.resources import DeliveryResource, ProvidersResource, WarehouseResource
from impactin_pipelines.domain.providers import Provider
from impactin_pipelines.services import reconcile
from impactin_pipelines.services.extract import extract
from impactin_pipelines.services.health import confirmation_ledger
from tests.cli_support import cli_env, run_cli
from tests.support import add_events, add_integration, deliver, events, factory_for, rows


def period() -> Period:
    now = datetime.now(UTC)
    return Period(now - timedelta(hours=1), now + timedelta(minutes=1))


def delivered(engine, sandbox, provider: str = "benevity", company: str = "acme", n: int = 3, **settings) -> None:
    add_integration(engine, company, provider, settings=settings or None)
    add_events(engine, events(company, n, prefix=f"evt_{provider}"))
    extract(engine, company, Provider(provider))
    with _factory(engine, sandbox) as factory:
        report = deliver(engine, factory, provider, [company])
    assert report.totals.attempts >= n


class _factory:
    def __init__(self, engine, sandbox) -> None:
        self.factory = factory_for(engine, sandbox)

    def __enter__(self):
        return self.factory

    def __exit__(self, *exc: object) -> None:
        self.factory.close()


def run(engine, sandbox, provider="benevity", company="acme", **kwargs) -> reconcile.Reconciliation:
    factory = factory_for(engine, sandbox)
    try:
        return reconcile.reconcile(engine, factory, company, provider, period(), **kwargs)
    finally:
        factory.close()


@pytest.mark.parametrize(
    ("provider", "settings"), [("benevity", {}), ("goodera", {}), ("workday", {"protocol": "rest"})]
)
def test_every_provider_agrees_when_it_holds_what_we_delivered(engine, sandbox, provider, settings) -> None:
    delivered(engine, sandbox, provider, **settings)
    found = run(engine, sandbox, provider)
    assert (found.ours, found.held, found.differences, found.error) == (3, 3, [], None)
    assert found.ok


def test_a_provider_that_silently_dropped_accepted_events_is_found_and_repaired(engine, sandbox) -> None:
    delivered(engine, sandbox)
    lost = "evt_benevity_acme_00001"
    sandbox.providers["benevity"].configure({"read_back": {"drop_events": [lost]}})
    found = run(engine, sandbox)
    [missing] = found.failing
    assert (missing.problem, missing.event_id) == (reconcile.MISSING, lost)
    [row] = rows(engine, event_id=lost)
    assert (missing.row_id, missing.ref) == (row["id"], row["delivery_id"])
    assert not found.ok and reconcile.latest(engine)[0]["differences"] == 1

    repaired = run(engine, sandbox, repair=True)
    assert repaired.requeued == 1
    assert rows(engine, event_id=lost)[0]["status"] == "pending"
    with _factory(engine, sandbox) as factory:
        deliver(engine, factory, "benevity", ["acme"])
    keys = [r["idempotency_key"] for r in sandbox.providers["benevity"].snapshot()["requests"]]
    assert keys.count(row["delivery_id"]) == 2  # sent again, with the same idempotency key
    assert rows(engine, event_id=lost)[0]["status"] == "success"


def test_a_provider_holding_an_event_we_never_sent_is_named(engine, sandbox) -> None:
    delivered(engine, sandbox, "goodera")
    extra = {"event_id": "evt_from_elsewhere", "idempotency_key": "0000-not-ours", "body": {"x": 1}}
    sandbox.providers["goodera"].configure({"read_back": {"extra_events": [extra]}})
    found = run(engine, sandbox, "goodera")
    [held] = found.failing
    assert (held.problem, held.ref, held.event_id, held.row_id) == (
        reconcile.EXTRA,
        "0000-not-ours",
        "evt_from_elsewhere",
        None,
    )


def test_a_provider_storing_another_payload_is_named(engine, sandbox) -> None:
    delivered(engine, sandbox, "workday", protocol="rest")
    changed = "evt_workday_acme_00002"
    sandbox.providers["workday"].configure({"read_back": {"alter_events": [changed]}})
    found = run(engine, sandbox, "workday")
    [differs] = found.failing
    assert (differs.problem, differs.event_id) == (reconcile.DIFFERS, changed)
    assert run(engine, sandbox, "workday", repair=True).requeued == 0  # only missing rows are re-queued


def test_a_held_record_whose_row_is_not_success_is_named_and_deleted_rows_are_listed_not_failed(
    engine, sandbox
) -> None:
    import sqlalchemy as sa

    from impactin_pipelines.store.schema import impact_deliveries as d

    delivered(engine, sandbox)
    first, second = rows(engine)[:2]
    with engine.begin() as conn:
        conn.execute(sa.update(d).where(d.c.id == first["id"]).values(status="retrying"))
        conn.execute(sa.update(d).where(d.c.id == second["id"]).values(confirmation="deleted"))
    sandbox.providers["benevity"].configure({"read_back": {"drop_events": [second["event_id"]]}})
    found = run(engine, sandbox)
    problems = sorted((x.problem, x.row_id) for x in found.differences)
    assert problems == sorted([(reconcile.EXTRA, first["id"]), (reconcile.DELETED, second["id"])])
    assert [x.problem for x in found.failing] == [reconcile.EXTRA]


def test_workday_soap_cannot_read_back_and_says_so(engine, sandbox) -> None:
    delivered(engine, sandbox, "workday")
    found = run(engine, sandbox, "workday")
    assert not found.ok and "cannot read back" in (found.error or "")
    assert reconcile.latest(engine)[0]["error"] == found.error


def test_the_asset_runs_over_a_range_and_its_check_names_the_rows(engine, sandbox) -> None:
    for company in ("a1", "a2", "a3"):
        delivered(engine, sandbox, company=company, n=2)
    sandbox.providers["benevity"].configure({"read_back": {"drop_events": ["evt_benevity_a2_00001"]}})
    resources = {
        "warehouse": WarehouseResource(url=engine.url.render_as_string(hide_password=False)),
        "providers": ProvidersResource(**sandbox.env()),
        "delivery": DeliveryResource(),
    }
    defs = dg.Definitions(
        assets=[delivery_reconciliation],
        asset_checks=[reconciliation_agrees],
        jobs=[delivery_reconciliation_job],
        resources=resources,
    )
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions("company", ["a1", "a2", "a3"])
        result = defs.resolve_job_def("delivery_reconciliation_job").execute_in_process(
            instance=instance,
            tags={RANGE_START_TAG: "a1|benevity", RANGE_END_TAG: "a3|benevity"},
            run_config={"ops": {"delivery_reconciliation": {"config": {"settle_minutes": 0}}}},
        )
        assert result.success
        mats = {m.partition: m.metadata for m in result.asset_materializations_for_node("delivery_reconciliation")}
        assert set(mats) == {partition_key(c, "benevity") for c in ("a1", "a2", "a3")}
        assert [mats[partition_key(c, "benevity")]["differences"].value for c in ("a1", "a2", "a3")] == [0, 1, 0]
        [check] = result.get_asset_check_evaluations()
        assert not check.passed
        [lost] = rows(engine, event_id="evt_benevity_a2_00001")
        assert check.metadata["row_ids"].value == [lost["id"]]
        assert "1 difference(s)" in (check.description or "")


def test_impactin_reconcile_prints_the_differences_and_repairs(engine, sandbox, tmp_path) -> None:
    delivered(engine, sandbox)
    sandbox.providers["benevity"].configure({"read_back": {"drop_events": ["evt_benevity_acme_00000"]}})
    url = engine.url.render_as_string(hide_password=False)
    env = cli_env(tmp_path, url, sandbox)
    today = ["--since", datetime.now(UTC).date().isoformat(), "--until", datetime.now(UTC).date().isoformat()]
    shown = run_cli(["reconcile", "--company", "acme", "--provider", "benevity", *today], env)
    assert shown.returncode == 1, shown.stderr
    assert "missing_at_provider" in shown.stdout and "evt_benevity_acme_00000" in shown.stdout
    as_json = run_cli(["reconcile", "--company", "acme", "--json", "--repair", *today], env)
    [pair] = json.loads(as_json.stdout)["data"]
    assert (pair["provider"], pair["requeued"], [x["problem"] for x in pair["differences"]]) == (
        "benevity",
        1,
        [reconcile.MISSING],
    )
    assert rows(engine, event_id="evt_benevity_acme_00000")[0]["status"] == "pending"
    nothing = run_cli(["reconcile", "--company", "nobody"], env)
    assert nothing.returncode == 1 and "no enabled integration" in nothing.stderr


def test_the_confirmation_ledger_flags_a_success_the_provider_rejected(engine) -> None:
    import sqlalchemy as sa

    from impactin_pipelines.store.outbox import NewDelivery, Outbox
    from impactin_pipelines.store.schema import impact_deliveries as d

    Outbox(engine).add([NewDelivery("acme", "benevity", "e1", "k1", "{}", "h")])
    assert confirmation_ledger(engine, datetime.now(UTC)).passed
    with engine.begin() as conn:
        conn.execute(sa.update(d).values(status="success", confirmation="rejected"))
    finding = confirmation_ledger(engine, datetime.now(UTC))
    assert not finding.passed and finding.metrics["success_but_rejected"] == 1
    assert finding.rows[0]["delivery_id"] == "k1"
