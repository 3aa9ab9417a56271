"""The `impact_delivery_stats` table: snapshots of delivery statistics, one row per metric (see 0003)."""

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from impactin_pipelines.store.schema import UTCDateTime, metadata

impact_delivery_stats = sa.Table(
    "impact_delivery_stats",
    metadata,
    sa.Column("computed_at", UTCDateTime, primary_key=True),
    sa.Column("period_start", UTCDateTime),
    sa.Column("period_end", UTCDateTime),
    sa.Column("dimension", sa.Text, primary_key=True),
    sa.Column("dimension_value", sa.Text, primary_key=True),
    sa.Column("metric", sa.Text, primary_key=True),
    sa.Column("value", sa.Float, nullable=False),
)


# (column, type, description) of `impact_delivery_stats`, for the stats asset's column schema
SNAPSHOT_COLUMNS = (
    ("computed_at", "timestamp", "When the snapshot was computed (UTC)"),
    ("period_start", "timestamp", "created_at >= this; empty: unbounded"),
    ("period_end", "timestamp", "created_at < this"),
    ("dimension", "string", "overall | provider_status | company | day | error_kind"),
    ("dimension_value", "string", "'' for overall; provider/status, company id, UTC day or error kind"),
    ("metric", "string", "total, successful, failed, pending, retrying, success_rate, count, avg_attempts, ..."),
    ("value", "float", "The metric's value"),
)


@dataclass(frozen=True)
class StatRow:
    dimension: str
    dimension_value: str
    metric: str
    value: float


def write_snapshot(
    engine: Engine,
    rows: Sequence[StatRow],
    *,
    computed_at: datetime,
    period_start: datetime | None,
    period_end: datetime | None,
    keep_days: int | None = None,
) -> int:
    """Append one snapshot (and drop snapshots older than `keep_days`), in one transaction."""
    values = [
        {
            "computed_at": computed_at,
            "period_start": period_start,
            "period_end": period_end,
            "dimension": r.dimension,
            "dimension_value": r.dimension_value,
            "metric": r.metric,
            "value": float(r.value),
        }
        for r in rows
    ]
    with engine.begin() as conn:
        if keep_days is not None:
            cutoff = computed_at - timedelta(days=keep_days)
            conn.execute(sa.delete(impact_delivery_stats).where(impact_delivery_stats.c.computed_at < cutoff))
        if values:
            conn.execute(impact_delivery_stats.insert(), values)
    return len(values)


def latest_snapshot(engine: Engine) -> list[dict]:
    """The most recent snapshot's rows (what an analyst's `max(computed_at)` query returns)."""
    t = impact_delivery_stats
    latest = sa.select(sa.func.max(t.c.computed_at)).scalar_subquery()
    stmt = sa.select(t).where(t.c.computed_at == latest).order_by(t.c.dimension, t.c.dimension_value, t.c.metric)
    with engine.connect() as conn:
        return [dict(r._mapping) for r in conn.execute(stmt).all()]
