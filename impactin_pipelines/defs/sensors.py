"""Sensors: new companies become partitions; a successful delivery run refreshes the statistics."""

import dagster as dg

from impactin_pipelines.defs.jobs import delivery_stats_job, impact_delivery_job
from impactin_pipelines.defs.orchestration.partitions import COMPANY_PARTITIONS, company_partitions
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


@dg.run_status_sensor(
    name="stats_after_delivery_sensor",
    run_status=dg.DagsterRunStatus.SUCCESS,
    monitored_jobs=[impact_delivery_job],
    request_job=delivery_stats_job,
    default_status=dg.DefaultSensorStatus.RUNNING,
)
def stats_after_delivery_sensor(context: dg.RunStatusSensorContext) -> dg.RunRequest:
    return dg.RunRequest(run_key=f"stats-after-{context.dagster_run.run_id}")
