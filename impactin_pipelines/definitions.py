"""The code location: one Definitions object, built from the domains under `defs/`."""

import dagster as dg

from impactin_pipelines.defs.assets.delivery import impact_deliveries, impact_outbox
from impactin_pipelines.defs.assets.reconciliation import (
    delivery_reconciliation,
    delivery_reconciliation_job,
    reconciliation_agrees,
)
from impactin_pipelines.defs.assets.stats import delivery_stats
from impactin_pipelines.defs.checks import delivery_checks
from impactin_pipelines.defs.event_log import use_batched_dagster_events
from impactin_pipelines.defs.jobs import delivery_stats_job, impact_delivery_job
from impactin_pipelines.defs.provider_health import (
    provider_health_job,
    provider_health_schedule,
    provider_integrations,
    providers_can_authenticate,
)
from impactin_pipelines.defs.replay import impact_replay_job
from impactin_pipelines.defs.rerun import impact_rerun_sensor
from impactin_pipelines.defs.resources import (
    ChecksResource,
    DeliveryResource,
    ProvidersResource,
    WarehouseResource,
)
from impactin_pipelines.defs.schedules import nightly_delivery_schedule
from impactin_pipelines.defs.sensors import company_partitions_sensor, stats_after_delivery_sensor


def build_defs() -> dg.Definitions:
    use_batched_dagster_events()  # for the runs and run creations of every process that loads this location
    return dg.Definitions(
        assets=[impact_outbox, impact_deliveries, delivery_stats, provider_integrations, delivery_reconciliation],
        asset_checks=[providers_can_authenticate, *delivery_checks, reconciliation_agrees],
        jobs=[
            impact_delivery_job,
            delivery_stats_job,
            impact_replay_job,
            provider_health_job,
            delivery_reconciliation_job,
        ],
        schedules=[nightly_delivery_schedule(), provider_health_schedule],
        sensors=[company_partitions_sensor, stats_after_delivery_sensor, impact_rerun_sensor],
        resources={
            "warehouse": WarehouseResource.from_env(),
            "providers": ProvidersResource.from_env(),
            "delivery": DeliveryResource.from_env(),
            "checks": ChecksResource.from_env(),
        },
    )


defs = build_defs()
