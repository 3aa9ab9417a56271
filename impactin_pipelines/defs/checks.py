"""Asset checks on the deliveries: stuck rows, failure rate (WARN / ERROR), ledger balance, rows retrying past
the cap, circuit breakers. Each result's metadata names the rows at fault. Not partitioned (partitioned checks are
preview in 1.13): each looks at the whole ledger, and runs in the stats job after every successful delivery run.

Thresholds: the checks resource (IMPACTIN_CHECK_*); the cap: the delivery resource's max_run_attempts."""

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import dagster as dg

from impactin_pipelines.defs.assets.delivery import impact_deliveries
from impactin_pipelines.defs.resources import ChecksResource, DeliveryResource, WarehouseResource
from impactin_pipelines.services import health
from impactin_pipelines.services.health import circuit_finding
from impactin_pipelines.store.circuits import snapshot

SEVERITY = {health.ERROR: dg.AssetCheckSeverity.ERROR, health.WARN: dg.AssetCheckSeverity.WARN}


def _cell(value: Any) -> str:
    if isinstance(value, datetime):
        return value.isoformat(timespec="seconds")
    return str(value if value is not None else "-").replace("|", "\\|").replace("\n", " ")


def _markdown(rows: Sequence[dict[str, Any]]) -> str:
    if not rows:
        return "no rows"
    headers = list(dict.fromkeys(k for row in rows for k in row))
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(_cell(row.get(h)) for h in headers) + " |" for row in rows]
    return "\n".join(lines)


def result(finding: health.Finding, thresholds: dict[str, float | int]) -> dg.AssetCheckResult:
    metadata: dict[str, Any] = {**finding.metrics, **thresholds, "rows_shown": len(finding.rows)}
    metadata["rows"] = dg.MetadataValue.md(_markdown(finding.rows))
    ids = [str(r["id"]) for r in finding.rows if r.get("id")]
    if ids:
        metadata["row_ids"] = dg.MetadataValue.json(ids)
    return dg.AssetCheckResult(
        passed=finding.passed,
        severity=SEVERITY[finding.severity],
        description=finding.description,
        metadata=metadata,
    )


@dg.asset_check(asset=impact_deliveries, description="No row pending too long, no claim unmoved too long.")
def no_stuck_deliveries(warehouse: WarehouseResource, checks: ChecksResource) -> dg.AssetCheckResult:
    s = checks.settings()
    finding = health.stuck_rows(warehouse.engine, s, datetime.now(UTC))
    thresholds = {"stuck_pending_hours": s.stuck_pending_hours, "stuck_claim_minutes": s.stuck_claim_minutes}
    return result(finding, thresholds)


@dg.asset_check(asset=impact_deliveries, description="Failure rate of recently settled deliveries (WARN / ERROR).")
def delivery_failure_rate(warehouse: WarehouseResource, checks: ChecksResource) -> dg.AssetCheckResult:
    s = checks.settings()
    finding = health.failure_rate(warehouse.engine, s, datetime.now(UTC))
    thresholds = {
        "warn_threshold": s.failure_rate_warn,
        "error_threshold": s.failure_rate_error,
        "window_hours": s.failure_window_hours,
    }
    return result(finding, thresholds)


@dg.asset_check(
    asset=impact_deliveries,
    description="Every eligible event has exactly one row per enabled provider; none delivered twice.",
)
def delivery_ledger_balances(warehouse: WarehouseResource, checks: ChecksResource) -> dg.AssetCheckResult:
    s = checks.settings()
    finding = health.ledger_balance(warehouse.engine, s, datetime.now(UTC))
    return result(finding, {"grace_hours": s.ledger_grace_hours})


@dg.asset_check(asset=impact_deliveries, description="No retrying row has used up its runs (max_run_attempts).")
def no_retrying_past_cap(warehouse: WarehouseResource, delivery: DeliveryResource) -> dg.AssetCheckResult:
    finding = health.retrying_past_cap(warehouse.engine, delivery.max_run_attempts, datetime.now(UTC))
    return result(finding, {})


@dg.asset_check(
    asset=impact_deliveries,
    description="Every provider's circuit breakers are closed (ERROR when one is open, WARN when paused by hand).",
)
def circuits_closed(warehouse: WarehouseResource) -> dg.AssetCheckResult:
    return result(circuit_finding(snapshot(warehouse.engine), datetime.now(UTC)), {})


@dg.asset_check(
    asset=impact_deliveries,
    description="Provider confirmations agree with the log: no success the provider rejected, no unmatched callback.",
)
def delivery_confirmations_agree(warehouse: WarehouseResource) -> dg.AssetCheckResult:
    return result(health.confirmation_ledger(warehouse.engine, datetime.now(UTC)), {})


delivery_checks = [
    no_stuck_deliveries,
    delivery_failure_rate,
    delivery_ledger_balances,
    no_retrying_past_cap,
    circuits_closed,
    delivery_confirmations_agree,
]
