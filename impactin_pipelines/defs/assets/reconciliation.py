"""Reconciliation as an asset: per company x provider partition, what the provider holds for a period compared with
our `success` rows (services/reconcile). Range runs like the delivery assets (one run, many partitions: one read-back
request per partition), and an asset check that fails on any difference the latest runs stored, naming the rows."""

from datetime import UTC, datetime, timedelta
from typing import Any

import dagster as dg

from impactin_pipelines.connectors.readback import Period
from impactin_pipelines.connectors.registry import ConnectorFactory
from impactin_pipelines.defs.assets.delivery import GROUP, impact_deliveries
from impactin_pipelines.defs.checks import result as check_result
from impactin_pipelines.defs.orchestration.partitions import delivery_partitions, partition_key, split_key
from impactin_pipelines.defs.resources import DeliveryResource, ProvidersResource, WarehouseResource
from impactin_pipelines.services import health, reconcile


class ReconciliationConfig(dg.Config):
    """The period asked about: deliveries of the last `lookback_hours`, up to `settle_minutes` ago (younger ones
    may still be on their way into the provider's list); `repair` re-queues what the provider lacks."""

    lookback_hours: float = 48.0
    settle_minutes: float = 10.0
    repair: bool = False


@dg.asset(
    partitions_def=delivery_partitions,
    deps=[impact_deliveries],
    group_name=GROUP,
    kinds={"python", "sql"},
    description="What each provider holds for the period, compared with our success rows: missing at the "
    "provider, held but not in our log, payload differs. The differences are stored for the check and the CLI.",
)
def delivery_reconciliation(
    context: dg.AssetExecutionContext,
    config: ReconciliationConfig,
    warehouse: WarehouseResource,
    providers: ProvidersResource,
    delivery: DeliveryResource,
) -> dg.MaterializeResult:
    now = datetime.now(UTC)
    until = now - timedelta(minutes=config.settle_minutes)
    period = Period(until - timedelta(hours=config.lookback_hours), until)
    factory = ConnectorFactory(warehouse.engine, settings=delivery.settings(), env=providers.provider_env())
    differing = 0
    try:
        for key in context.partition_keys:
            company, provider = split_key(key)
            found = reconcile.reconcile(
                warehouse.engine, factory, company, provider, period, repair=config.repair, now=now
            )
            differing += len(found.failing)
            metadata: dict[str, Any] = {
                "ours": found.ours,
                "held": found.held,
                "differences": len(found.failing),
                "deleted_at_provider": sum(x.problem == reconcile.DELETED for x in found.differences),
                "requeued": found.requeued,
            }
            if found.error:
                metadata["error"] = found.error
                context.log.warning(f"{company}/{provider}: {found.error}")
            context.add_asset_metadata(metadata, partition_key=partition_key(company, provider))
    finally:
        factory.close()
    context.log.info(f"reconciliation: {differing} difference(s) over {len(context.partition_keys)} partition(s)")
    return dg.MaterializeResult()


def stored_differences(results: list[dict[str, Any]]) -> health.Finding:
    """The latest stored results of every pair as one finding: failed on any difference or read-back error."""
    rows: list[dict[str, Any]] = []
    errors: list[dict[str, Any]] = []
    for pair in results:
        where = {"company_id": pair["company_id"], "provider": pair["provider"]}
        if pair["error"]:
            errors.append({**where, "problem": "read_back_failed", "detail": pair["error"]})
        for r in pair["rows"]:
            if r["problem"] in reconcile.FAILING:
                shown = {k: r[k] for k in ("problem", "ref", "event_id", "detail")}
                rows.append({**where, "id": r["row_id"], **shown})
    metrics = {"pairs": len(results), "differences": len(rows), "read_back_errors": len(errors)}
    if not rows and not errors:
        return health.Finding(
            True, f"{len(results)} company x provider pair(s) agree with the provider", metrics=metrics
        )
    description = f"{len(rows)} difference(s) with what the providers hold, {len(errors)} read-back error(s)"
    return health.Finding(False, description, metrics=metrics, rows=(rows + errors)[: health.SAMPLE_ROWS])


@dg.asset_check(
    asset=delivery_reconciliation,
    description="The latest reconciliation of every company x provider found no difference and no read-back error.",
)
def reconciliation_agrees(warehouse: WarehouseResource) -> dg.AssetCheckResult:
    return check_result(stored_differences(reconcile.latest(warehouse.engine)), {})


delivery_reconciliation_job = dg.define_asset_job(
    "delivery_reconciliation_job",
    selection=dg.AssetSelection.assets(delivery_reconciliation) | dg.AssetSelection.checks(reconciliation_agrees),
    description="Ask the providers what they hold and compare with the delivery log (config: lookback, repair).",
)
