"""Jobs: the delivery job (what the schedule, the sensors and `impactin run` launch) and the stats job."""

import dagster as dg

from impactin_pipelines.defs.assets.delivery import impact_deliveries, impact_outbox
from impactin_pipelines.defs.assets.stats import delivery_stats

impact_delivery_job = dg.define_asset_job(
    "impact_delivery_job",
    selection=[impact_outbox, impact_deliveries],
    description="Extract pending events into the outbox and deliver them, for a range of company x provider.",
)

delivery_stats_job = dg.define_asset_job(
    "delivery_stats_job", selection=[delivery_stats], description="Recompute delivery statistics."
)
