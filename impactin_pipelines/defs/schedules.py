"""The nightly delivery: range runs per provider over the companies that have work (one per provider, or
IMPACTIN_RUNS_PER_PROVIDER disjoint ones to spread a big night over several run workers)."""

from datetime import UTC, datetime

import dagster as dg

from impactin_pipelines.defs.jobs import impact_delivery_job
from impactin_pipelines.defs.orchestration.partitions import COMPANY_PARTITIONS
from impactin_pipelines.defs.orchestration.planning import SLICE_TAG, run_request, split_covering_range
from impactin_pipelines.defs.resources import WarehouseResource
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
    def _schedule(
        context: dg.ScheduleEvaluationContext, warehouse: WarehouseResource
    ) -> list[dg.RunRequest] | dg.SkipReason:
        scheduled = context.scheduled_execution_time or datetime.now(UTC)
        known = context.instance.get_dynamic_partitions(COMPANY_PARTITIONS)
        work = work_by_provider(warehouse.engine, scheduled.astimezone(UTC))
        stamp = scheduled.strftime("%Y-%m-%dT%H%M")
        requests: list[dg.RunRequest] = []
        for provider in sorted(work):
            ranges = split_covering_range(known, work[provider], provider, settings.runs_per_provider)
            sliced = len(ranges) > 1
            for index, rng in enumerate(ranges, start=1):
                key = f"nightly-{provider}-{index}of{len(ranges)}-{stamp}" if sliced else f"nightly-{provider}-{stamp}"
                tags = {SLICE_TAG: f"{index}/{len(ranges)}"} if sliced else None
                requests.append(run_request(rng, trigger="schedule", run_key=key, tags=tags))
        return requests or dg.SkipReason("no company has pending or due deliveries")

    return _schedule
