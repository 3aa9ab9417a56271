"""The nightly delivery: one range run per provider over the companies that have work."""

from datetime import UTC, datetime

import dagster as dg

from impactin_pipelines.defs.jobs import impact_delivery_job
from impactin_pipelines.defs.planning import covering_range, run_request
from impactin_pipelines.defs.resources import LogsResource, WarehouseResource
from impactin_pipelines.partitions import company_partitions
from impactin_pipelines.settings import ScheduleSettings
from impactin_pipelines.store.source import work_by_provider


def nightly_delivery_schedule(settings: ScheduleSettings | None = None) -> dg.ScheduleDefinition:
    settings = settings or ScheduleSettings.from_env()

    @dg.schedule(
        name="nightly_delivery_schedule",
        job=impact_delivery_job,
        cron_schedule=settings.cron,
        execution_timezone=settings.timezone,
        default_status=dg.DefaultScheduleStatus.RUNNING,
        description="Every night, deliver each (company, provider) with pending or due rows.",
    )
    def _schedule(context: dg.ScheduleEvaluationContext, warehouse: WarehouseResource, logs: LogsResource):  # type: ignore[no-untyped-def]
        scheduled = context.scheduled_execution_time or datetime.now(UTC)
        known = context.instance.get_dynamic_partitions(company_partitions.name)
        work = work_by_provider(warehouse.engine, scheduled.astimezone(UTC))
        requests = []
        for provider in sorted(work):
            rng = covering_range(known, work[provider], provider)
            if rng is not None:
                key = f"nightly-{provider}-{scheduled.strftime('%Y-%m-%dT%H%M')}"
                requests.append(run_request(rng, trigger="schedule", log_format=logs.log_format, run_key=key))
        return requests or dg.SkipReason("no company has pending or due deliveries")

    return _schedule
