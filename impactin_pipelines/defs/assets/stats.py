"""Delivery statistics for analysts, recomputed after deliveries: written to `impact_delivery_stats` (SQL) and
returned as materialization metadata: stable numeric keys (plotted by the UI over time), the table's column schema
and row count, each analyst table (pandas) as a table value, and a markdown summary."""

from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import dagster as dg
from pydantic import Field

from impactin_pipelines.defs.assets.delivery import GROUP, impact_deliveries
from impactin_pipelines.defs.resources import WarehouseResource
from impactin_pipelines.domain.providers import PROVIDERS
from impactin_pipelines.domain.statuses import ErrorKind
from impactin_pipelines.services.metrics import metrics_metadata
from impactin_pipelines.services.stats import COUNT_NAME_OF_STATUS, STATUS_NAMES, StatsFilter, success_rate
from impactin_pipelines.store.stats_snapshots import SNAPSHOT_COLUMNS, write_snapshot

if TYPE_CHECKING:  # pandas is imported when statistics are computed: every run process loads this module
    import pandas as pd

MARKDOWN_ROWS = 20  # companies / days shown in the markdown; the table in SQL has all of them
TABLE_ROWS = 100  # rows of each analyst table kept in the metadata (`impactin stats --csv` writes them all)


class StatsConfig(dg.Config):
    period_days: int = Field(30, ge=0, description="Deliveries created in the last N days (0: every delivery).")
    keep_days: int = Field(400, ge=1, description="Snapshots older than this are dropped from the stats table.")


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    return f"{value:.2%}" if isinstance(value, float) and 0 <= value <= 1 else str(value)


def _table(headers: list[str], rows: list[list[Any]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    # "|" would split a cell: a company id that cannot be a partition key may hold one
    lines += [
        "| " + " | ".join(_fmt(v) if not isinstance(v, str) else v.replace("|", "\\|") for v in row) + " |"
        for row in rows
    ]
    return "\n".join(lines)


def _provider_markdown(stats: dict) -> str:
    lines = ["| provider | status | count | avg attempts |", "|---|---|---:|---:|"]
    lines += [
        f"| {r['provider']} | {r['status']} | {r['count']} | {r['avgAttempts']:.2f} |" for r in stats["byProvider"]
    ]
    return "\n".join(lines)


def stats_markdown(stats: dict) -> str:
    latency = stats["latency"]
    counts = ["total", *STATUS_NAMES]
    worst = sorted(stats["byCompany"], key=lambda r: (-r["failed"], r["companyId"]))[:MARKDOWN_ROWS]
    return "\n\n".join(
        [
            "**Overall**",
            _table(
                [*counts, "success rate", "latency p50 (s)", "latency p95 (s)"],
                [
                    [
                        *(stats["overall"][k] for k in counts),
                        stats["successRate"],
                        str(latency["p50Seconds"] or "-"),
                        str(latency["p95Seconds"] or "-"),
                    ]
                ],
            ),
            "**By provider and status**",
            _provider_markdown(stats),
            "**By error kind**",
            _table(["error kind", "count"], [[r["errorKind"], r["count"]] for r in stats["byErrorKind"]]),
            f"**By day** (UTC, last {MARKDOWN_ROWS})",
            _table(
                ["day", *counts, "success rate"],
                [[r["day"], *(r[k] for k in counts), r["successRate"]] for r in stats["byDay"][-MARKDOWN_ROWS:]],
            ),
            f"**By company** (most failures first, top {MARKDOWN_ROWS} of {len(stats['byCompany'])})",
            _table(
                ["company", *counts, "success rate"],
                [[r["companyId"], *(r[k] for k in counts), r["successRate"]] for r in worst],
            ),
        ]
    )


def stats_metadata(stats: dict) -> dict[str, float | int]:
    """Numeric metadata under stable keys: the same names every run (0 when nothing matched) so the UI can plot
    them; a rate or a latency that is undefined (nothing settled, nothing delivered) is left out."""
    values: dict[str, float | int] = {f"total_{k}": v for k, v in stats["overall"].items()}
    by_provider = {p: dict.fromkeys(("total", *STATUS_NAMES), 0) for p in PROVIDERS}
    for r in stats["byProvider"]:
        counts = by_provider.setdefault(r["provider"], dict.fromkeys(("total", *STATUS_NAMES), 0))
        counts[COUNT_NAME_OF_STATUS[r["status"]]] += r["count"]
        counts["total"] += r["count"]
    for provider, counts in by_provider.items():
        values.update({f"{provider}_{k}": v for k, v in counts.items()})
        rate = success_rate(counts)
        if rate is not None:
            values[f"{provider}_success_rate"] = rate
    kinds = {r["errorKind"]: r["count"] for r in stats["byErrorKind"]}
    values.update({f"error_kind_{k.value}": kinds.get(k.value, 0) for k in ErrorKind})
    values["companies"] = len(stats["byCompany"])
    values["latency_samples"] = stats["latency"]["samples"]
    optional = {
        "success_rate": stats["successRate"],
        "latency_p50_s": stats["latency"]["p50Seconds"],
        "latency_p95_s": stats["latency"]["p95Seconds"],
    }
    values.update({k: v for k, v in optional.items() if v is not None})
    return values


def table_metadata(tables: "dict[str, pd.DataFrame]", snapshot_rows_written: int) -> dict[str, Any]:
    """What the UI shows as tables: the schema and row count of this snapshot in `impact_delivery_stats` (the
    asset's SQL table), and each analyst table (first TABLE_ROWS rows) under `table_<name>`."""
    from impactin_pipelines.services.analytics import TABLE_COLUMNS, records

    metadata: dict[str, Any] = {
        "dagster/column_schema": dg.TableSchema(
            columns=[dg.TableColumn(name, kind, description=text) for name, kind, text in SNAPSHOT_COLUMNS]
        ),
        "dagster/row_count": snapshot_rows_written,
    }
    for name, frame in tables.items():
        schema = dg.TableSchema(
            columns=[dg.TableColumn(c, kind, description=text) for c, kind, text in TABLE_COLUMNS[name]]
        )
        rows = [dg.TableRecord(r) for r in records(frame.head(TABLE_ROWS))]
        metadata[f"table_{name}"] = dg.MetadataValue.table(rows, schema=schema)
        metadata[f"table_{name}_rows"] = len(frame)
    return metadata


@dg.asset(deps=[impact_deliveries], group_name=GROUP, kinds={"sql", "pandas"})
def delivery_stats(
    context: dg.AssetExecutionContext, config: StatsConfig, warehouse: WarehouseResource
) -> dg.MaterializeResult:
    """Delivery statistics over a period: totals by status, by provider x status with average attempts (the
    spec's /stats shape), by company, by day, by error kind, success rate and created->delivered latency.
    Each materialization appends a snapshot to `impact_delivery_stats`."""
    from impactin_pipelines.services.analytics import analyse, snapshot_rows

    now = datetime.now(UTC)
    since = now - timedelta(days=config.period_days) if config.period_days else None
    analysis = analyse(warehouse.engine, StatsFilter(since=since))
    stats = analysis.stats
    written = write_snapshot(
        warehouse.engine,
        snapshot_rows(stats),
        computed_at=now,
        period_start=since,
        period_end=now,
        keep_days=config.keep_days,
    )
    context.log.info(f"delivery stats: {stats['overall']['total']} deliveries, {written} rows in impact_delivery_stats")
    metadata: dict[str, Any] = {**stats_metadata(stats), **table_metadata(analysis.tables, written)}
    metadata["by_provider"] = dg.MetadataValue.md(_provider_markdown(stats))
    metadata["summary"] = dg.MetadataValue.md(stats_markdown(stats))
    metadata["period_days"] = config.period_days
    metadata["snapshot_computed_at"] = now.isoformat()
    metadata.update(metrics_metadata(warehouse.engine))  # queue, retries, requests, circuit state per provider
    return dg.MaterializeResult(metadata=metadata)
