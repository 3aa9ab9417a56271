"""Asset checks on the deliveries, on both backends: each finds the rows at fault and names them."""

from datetime import UTC, datetime, timedelta

import dagster as dg
import pytest
import sqlalchemy as sa

from impactin_pipelines.defs.assets.delivery import impact_deliveries, impact_outbox
from impactin_pipelines.defs.checks import delivery_checks
from impactin_pipelines.defs.orchestration.partitions import partition_key
from impactin_pipelines.defs.resources import ChecksResource, DeliveryResource, ProvidersResource, WarehouseResource
from impactin_pipelines.domain.identity import delivery_id_for
from impactin_pipelines.domain.providers import Provider
from impactin_pipelines.services import health
from impactin_pipelines.services.extract import extract
from impactin_pipelines.settings import CheckSettings
from impactin_pipelines.store.outbox import NewDelivery, Outbox
from impactin_pipelines.store.schema import impact_deliveries as d
from impactin_pipelines.store.schema import impact_events as e
from tests.support import add_events, add_integration, events

NOW = datetime.now(UTC)
DEFAULTS = CheckSettings()


def add_row(engine, event_id: str, *, company: str = "acme", provider: str = "benevity", **values) -> str:
    """A row created `age` ago (default: now) with the given column values; returns its id."""
    created = NOW - values.pop("age", timedelta())
    ident = delivery_id_for(company, provider, event_id)
    Outbox(engine).add([NewDelivery(company, provider, event_id, ident, "{}", "h")], now=created)
    values.setdefault("updated_at", created)
    with engine.begin() as conn:
        conn.execute(sa.update(d).where(d.c.delivery_id == ident).values(**values))
        return conn.execute(sa.select(d.c.id).where(d.c.delivery_id == ident)).scalar_one()


def test_stuck_pending_and_stuck_claims_are_named(engine) -> None:
    add_row(engine, "fresh")
    add_row(engine, "claimed_now", claimed_by="h/1/1/a", lease_expires_at=NOW + timedelta(seconds=60))
    assert health.stuck_rows(engine, DEFAULTS, NOW).passed

    old = add_row(engine, "old", age=timedelta(hours=30))
    hung = add_row(
        engine,
        "hung",
        age=timedelta(hours=3),
        claimed_by="h/1/1/b",
        lease_expires_at=NOW + timedelta(seconds=60),  # heartbeat alive, but nothing moved for 3 h
    )
    finding = health.stuck_rows(engine, DEFAULTS, NOW)
    assert not finding.passed and finding.severity == "ERROR"
    assert finding.metrics == {"stuck_pending": 1, "stuck_claimed": 1}
    assert [(r["id"], r["stuck"]) for r in finding.rows] == [(old, "pending"), (hung, "claimed")]
    lenient = CheckSettings(stuck_pending_hours=48, stuck_claim_minutes=240)
    assert health.stuck_rows(engine, lenient, NOW).passed


@pytest.mark.parametrize(
    ("failed", "succeeded", "passed", "severity"),
    [(0, 0, True, "ERROR"), (1, 99, True, "ERROR"), (1, 9, False, "WARN"), (3, 7, False, "ERROR")],
)
def test_failure_rate_thresholds(engine, failed, succeeded, passed, severity) -> None:
    for i in range(failed):
        add_row(engine, f"f{i}", status="failed", error_kind="rejected", last_error="HTTP 422 " + "x" * 500)
    for i in range(succeeded):
        add_row(engine, f"s{i}", status="success", provider="goodera" if i % 2 else "benevity")
    add_row(engine, "old_failure", status="failed", error_kind="config", age=timedelta(days=3))  # outside the window
    finding = health.failure_rate(engine, DEFAULTS, NOW)
    assert (finding.passed, finding.severity) == (passed, severity)
    assert finding.metrics["failed"] == failed and finding.metrics["settled"] == failed + succeeded
    assert len(finding.rows) == failed and all(len(r["last_error"]) <= 200 for r in finding.rows)
    if failed:
        assert finding.metrics["failure_rate"] == round(failed / (failed + succeeded), 4)
        assert finding.metrics["benevity_failure_rate"] > finding.metrics.get("goodera_failure_rate", 0)


def test_failure_rate_thresholds_come_from_the_environment(engine) -> None:
    add_row(engine, "f", status="failed", error_kind="rejected")
    add_row(engine, "s", status="success")
    loose = CheckSettings.from_env(
        {"IMPACTIN_CHECK_FAILURE_RATE_WARN": "0.6", "IMPACTIN_CHECK_FAILURE_RATE_ERROR": "0.9"}
    )
    assert health.failure_rate(engine, loose, NOW).passed
    with pytest.raises(ValueError, match=r"IMPACTIN_CHECK_FAILURE_RATE_WARN=0.5 and .*ERROR=0.1 must satisfy"):
        CheckSettings.from_env({"IMPACTIN_CHECK_FAILURE_RATE_WARN": "0.5", "IMPACTIN_CHECK_FAILURE_RATE_ERROR": "0.1"})
    with pytest.raises(ValueError, match="IMPACTIN_CHECK_STUCK_PENDING_HOURS='soon' is not a number"):
        CheckSettings.from_env({"IMPACTIN_CHECK_STUCK_PENDING_HOURS": "soon"})


def _age_events(engine, hours: float) -> None:
    with engine.begin() as conn:
        conn.execute(sa.update(e).values(created_at=NOW - timedelta(hours=hours)))


def test_ledger_balances_only_when_every_eligible_event_has_its_row(engine) -> None:
    add_integration(engine, "acme", "benevity")
    add_integration(engine, "acme", "goodera")
    add_integration(engine, "acme", "workday", enabled=False)
    add_events(engine, events("acme", 3))
    assert health.ledger_balance(engine, DEFAULTS, NOW).passed  # too young to be missing

    _age_events(engine, 30)
    extract(engine, "acme", Provider.BENEVITY)
    finding = health.ledger_balance(engine, DEFAULTS, NOW)
    assert not finding.passed and finding.metrics["missing_rows"] == 3
    assert {(r["provider"], r["event_id"], r["problem"]) for r in finding.rows} == {
        ("goodera", f"evt_acme_{i:05d}", "no delivery row") for i in range(3)
    }
    extract(engine, "acme", Provider.GOODERA)
    balanced = health.ledger_balance(engine, DEFAULTS, NOW)
    assert balanced.passed, balanced.description  # workday is disabled: no rows owed


def test_ledger_reports_unknown_providers_once_never_as_missing_rows(engine) -> None:
    """An enabled integration naming a provider we do not know gets no rows by design: one WARN line per integration
    (not one missing row per event) until it is fixed or disabled; a real imbalance is still an ERROR."""
    add_integration(engine, "acme", "benevity")
    add_integration(engine, "acme", "salesforce")
    add_integration(engine, "acme", "Benevity")
    add_integration(engine, "acme", "oracle", enabled=False)
    add_events(engine, events("acme", 3))
    _age_events(engine, 30)
    extract(engine, "acme", Provider.BENEVITY)
    finding = health.ledger_balance(engine, DEFAULTS, NOW)
    assert (finding.passed, finding.severity) == (False, health.WARN)
    assert (finding.metrics["missing_rows"], finding.metrics["unknown_provider_integrations"]) == (0, 2)
    assert [(r["company_id"], r["provider"]) for r in finding.rows] == [("acme", "Benevity"), ("acme", "salesforce")]
    assert "unknown provider" in finding.rows[0]["problem"]

    add_events(engine, [{**events("acme", 1)[0], "event_id": "late"}])
    _age_events(engine, 30)
    both = health.ledger_balance(engine, DEFAULTS, NOW)
    assert (both.passed, both.severity) == (False, health.ERROR)
    assert (both.metrics["missing_rows"], both.metrics["unknown_provider_integrations"]) == (1, 2)
    assert "1 event x provider without a row" in both.description and "acme/salesforce" in both.description


def test_ledger_names_events_delivered_twice(pg_engine) -> None:
    """The unique constraints make this impossible; the check must still see it if they were ever lost."""
    with pg_engine.begin() as conn:
        conn.exec_driver_sql("ALTER TABLE impact_deliveries DROP CONSTRAINT uq_impact_deliveries_event")
    add_row(pg_engine, "twice", status="success")
    with pg_engine.begin() as conn:
        conn.execute(
            d.insert().values(
                id="dup-row",
                company_id="acme",
                provider="benevity",
                event_id="twice",
                delivery_id="another-delivery-id",
                status="success",
                created_at=NOW,
                updated_at=NOW,
            )
        )
    finding = health.ledger_balance(pg_engine, DEFAULTS, NOW)
    assert not finding.passed
    assert (finding.metrics["duplicate_rows"], finding.metrics["double_success"]) == (1, 1)
    assert {r["problem"] for r in finding.rows} == {"more than one row", "two successful rows"}
    assert all(r["event_id"] == "twice" for r in finding.rows)


def test_retrying_past_the_cap(engine) -> None:
    add_row(engine, "young", status="retrying", run_count=2)
    add_row(engine, "held", status="retrying", run_count=5, claimed_by="x/1/1/a", lease_expires_at=NOW + timedelta(60))
    assert health.retrying_past_cap(engine, 5, NOW).passed
    over = add_row(engine, "over", status="retrying", run_count=5)
    finding = health.retrying_past_cap(engine, 5, NOW)
    assert (finding.passed, finding.severity) == (False, "WARN")
    assert [r["id"] for r in finding.rows] == [over]
    assert not health.retrying_past_cap(engine, 2, NOW).passed  # a lowered cap shows the young one too


def test_checks_run_with_the_delivery_job_and_carry_the_rows(engine, sandbox) -> None:
    add_integration(engine, "acme", "benevity")
    add_events(engine, events("acme", 4))
    sandbox.providers["benevity"].configure({"reject_events": ["evt_acme_00000", "evt_acme_00001"]})
    stale = add_row(engine, "stale", company="zeta", age=timedelta(hours=40))
    resources = {
        "warehouse": WarehouseResource(url=engine.url.render_as_string(hide_password=False)),
        "providers": ProvidersResource(**sandbox.env()),
        "delivery": DeliveryResource(concurrency=2, lease_s=30),
        "checks": ChecksResource(),
    }
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions("company", ["acme"])
        result = dg.materialize(
            [impact_outbox, impact_deliveries, *delivery_checks],
            instance=instance,
            partition_key=partition_key("acme", "benevity"),
            resources=resources,
        )
        assert result.success  # failed checks do not fail the delivery run; they show in the UI
        evaluations = {ev.check_name: ev for ev in result.get_asset_check_evaluations()}
    assert set(evaluations) == {
        "no_stuck_deliveries",
        "delivery_failure_rate",
        "delivery_ledger_balances",
        "no_retrying_past_cap",
        "circuits_closed",
        "delivery_confirmations_agree",
    }
    rate = evaluations["delivery_failure_rate"]
    assert not rate.passed and rate.severity == dg.AssetCheckSeverity.ERROR  # 2 of 4 rejected
    assert rate.metadata["failure_rate"].value == 0.5 and rate.metadata["error_threshold"].value == 0.2
    row_ids, listed = rate.metadata["row_ids"].value, rate.metadata["rows"].value
    assert isinstance(row_ids, list) and isinstance(listed, str)
    assert len(row_ids) == 2 and "evt_acme_00000" in listed
    stuck = evaluations["no_stuck_deliveries"]
    assert not stuck.passed and stuck.metadata["row_ids"].value == [stale]
    assert evaluations["delivery_ledger_balances"].passed and evaluations["no_retrying_past_cap"].passed
    assert evaluations["circuits_closed"].passed  # a rejection is an answer: the provider is up
