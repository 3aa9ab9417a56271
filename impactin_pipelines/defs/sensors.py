"""Sensors: new companies become partitions; new deliveries, from any run, refresh the statistics."""

import dagster as dg

from impactin_pipelines.defs.assets.delivery import impact_deliveries
from impactin_pipelines.defs.assets.stats import delivery_stats
from impactin_pipelines.defs.jobs import delivery_stats_job
from impactin_pipelines.defs.orchestration.partitions import COMPANY_PARTITIONS, company_partitions
from impactin_pipelines.defs.rerun import IN_PROGRESS, delivery_run_records
from impactin_pipelines.defs.resources import WarehouseResource
from impactin_pipelines.domain.companies import is_valid_company_id
from impactin_pipelines.store.source import integrations


@dg.sensor(
    name="company_partitions_sensor",
    minimum_interval_seconds=60,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Adds a company partition for every company that appears in company_integrations.",
)
def company_partitions_sensor(
    context: dg.SensorEvaluationContext, warehouse: WarehouseResource
) -> dg.SkipReason | dg.SensorResult:
    companies = {i.company_id for i in integrations(warehouse.engine, enabled_only=False)}
    invalid = sorted(c for c in companies if not is_valid_company_id(c))
    for company in invalid:
        context.log.warning(
            f"company_id {company!r} cannot be a Dagster partition key; delivery runs quarantine its events as "
            "failed/invalid_event"
        )
    known = set(context.instance.get_dynamic_partitions(COMPANY_PARTITIONS))
    new = sorted(c for c in companies - known if c not in invalid)
    if not new:
        return dg.SkipReason(f"no new companies ({len(known)} known, {len(invalid)} invalid)")
    return dg.SensorResult(dynamic_partitions_requests=[company_partitions.build_add_request(new)])


def _latest_materialization(instance: dg.DagsterInstance, key: dg.AssetKey) -> int | None:
    """Storage id of the asset's latest materialization (ids grow with time across every run and process)."""
    records = instance.fetch_materializations(key, limit=1, ascending=False).records
    return records[0].storage_id if records else None


@dg.sensor(
    name="stats_after_delivery_sensor",
    job=delivery_stats_job,
    minimum_interval_seconds=30,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Refreshes delivery_stats whenever impact_deliveries was materialised after it, by any run: "
    "the schedule, the rerun sensor, a backfill from the UI, `impactin run` or the demo.",
)
def stats_after_delivery_sensor(context: dg.SensorEvaluationContext) -> dg.RunRequest | dg.SkipReason:
    # Compares the two assets' latest materializations instead of keeping a cursor of runs seen, so its first
    # tick also catches deliveries made before the daemon started (the demo, `impactin run` without stats).
    deliveries = _latest_materialization(context.instance, impact_deliveries.key)
    if deliveries is None:
        return dg.SkipReason("impact_deliveries has never been materialised")
    stats = _latest_materialization(context.instance, delivery_stats.key)
    if stats is not None and stats > deliveries:
        return dg.SkipReason("delivery_stats is newer than the latest deliveries")
    # Once after a batch of runs (a night, a backfill of many partitions), not once per run that ends.
    if delivery_run_records(context.instance, IN_PROGRESS, limit=1):
        return dg.SkipReason("delivery runs are in progress: statistics follow when they end")
    stats_runs = dg.RunsFilter(job_name=delivery_stats_job.name, statuses=IN_PROGRESS)
    if context.instance.get_run_records(filters=stats_runs, limit=1):
        return dg.SkipReason("a delivery_stats run is in progress")
    return dg.RunRequest(run_key=f"stats-after-{deliveries}")
