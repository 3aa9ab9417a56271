"""Delivery statistics: the `/stats` contract's shape (overall by status; by provider x status with average
attempts), filtered by company and period, from one GROUP BY (an API call reads a handful of aggregates, never
the rows), and the vocabulary the analyst's tables share (services/analytics, on pandas)."""

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from impactin_pipelines.domain.statuses import DeliveryStatus
from impactin_pipelines.store.engine import read_connection
from impactin_pipelines.store.schema import impact_deliveries as d

_OVERALL_NAMES = {
    DeliveryStatus.SUCCESS.value: "successful",
    DeliveryStatus.FAILED.value: "failed",
    DeliveryStatus.PENDING.value: "pending",
    DeliveryStatus.RETRYING.value: "retrying",
}
COUNT_NAME_OF_STATUS: Mapping[str, str] = _OVERALL_NAMES  # "success" -> "successful", ...
STATUS_NAMES = tuple(_OVERALL_NAMES.values())  # successful, failed, pending, retrying


@dataclass(frozen=True)
class StatsFilter:
    company_ids: tuple[str, ...] | None = None
    since: datetime | None = None  # created_at >= since
    until: datetime | None = None  # created_at < until

    def where(self) -> list[Any]:
        clauses: list[Any] = []
        if self.company_ids is not None:
            clauses.append(d.c.company_id.in_(self.company_ids))
        if self.since is not None:
            clauses.append(d.c.created_at >= self.since)
        if self.until is not None:
            clauses.append(d.c.created_at < self.until)
        return clauses


EVERYTHING = StatsFilter()


def delivery_stats(engine: Engine, flt: StatsFilter = EVERYTHING) -> dict[str, Any]:
    """The `/stats` contract from one GROUP BY: an API call reads a handful of aggregates, never the rows."""
    stmt = (
        sa.select(d.c.provider, d.c.status, sa.func.count(), sa.func.avg(d.c.attempt_count))
        .where(*flt.where())
        .group_by(d.c.provider, d.c.status)
        .order_by(d.c.provider, d.c.status)
    )
    with read_connection(engine) as conn:
        rows = conn.execute(stmt).all()
    overall = {"total": 0, "successful": 0, "failed": 0, "pending": 0, "retrying": 0}
    by_provider = []
    for provider, status, count, avg_attempts in rows:
        overall["total"] += count
        overall[_OVERALL_NAMES[status]] += count
        by_provider.append(
            {"provider": provider, "status": status, "count": count, "avgAttempts": round(float(avg_attempts), 2)}
        )
    return {"overall": overall, "byProvider": by_provider}


def success_rate(counts: Mapping[str, int]) -> float | None:
    """Delivered among settled rows (success + failed); None when nothing has settled yet. Rows still pending
    or retrying are neither success nor failure."""
    settled = counts.get("successful", 0) + counts.get("failed", 0)
    return round(counts.get("successful", 0) / settled, 4) if settled else None
