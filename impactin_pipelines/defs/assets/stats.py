"""Delivery statistics for analysts, recomputed after deliveries."""

import dagster as dg

from impactin_pipelines.defs.assets.delivery import GROUP, impact_deliveries
from impactin_pipelines.defs.resources import WarehouseResource
from impactin_pipelines.services.stats import delivery_stats as compute_stats


def _markdown(stats: dict) -> str:
    lines = ["| provider | status | count | avg attempts |", "|---|---|---:|---:|"]
    lines += [
        f"| {r['provider']} | {r['status']} | {r['count']} | {r['avgAttempts']:.2f} |" for r in stats["byProvider"]
    ]
    return "\n".join(lines)


@dg.asset(deps=[impact_deliveries], group_name=GROUP, kinds={"sql"})
def delivery_stats(context: dg.AssetExecutionContext, warehouse: WarehouseResource) -> dg.MaterializeResult:
    """Totals by status and by provider x status (the spec's /stats shape) over every delivery."""
    stats = compute_stats(warehouse.engine)
    overall = stats["overall"]
    done = overall["successful"] + overall["failed"]
    metadata: dict[str, object] = {f"total_{k}": v for k, v in overall.items()}
    metadata["success_rate"] = round(overall["successful"] / done, 4) if done else 1.0
    metadata["by_provider"] = dg.MetadataValue.md(_markdown(stats))
    return dg.MaterializeResult(metadata=metadata)
