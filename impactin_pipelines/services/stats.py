"""Delivery statistics: the spec's `/stats` shape (overall by status; by provider x status with average
attempts), filtered by company and period. One query path for the CLI, the API and the stats asset."""

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


def delivery_stats(engine: Engine, flt: StatsFilter = StatsFilter()) -> dict[str, Any]:
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
