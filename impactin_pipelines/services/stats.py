"""Delivery statistics: the `/stats` contract's shape (overall by status; by provider x status with average
attempts), filtered by company and period, and the analyst's fuller view (`full_stats`) that the stats asset
writes to `impact_delivery_stats`. One query path for the CLI, the API and the stats asset."""

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from impactin_pipelines.domain.statuses import DeliveryStatus
from impactin_pipelines.store.engine import read_connection
from impactin_pipelines.store.schema import impact_deliveries as d
from impactin_pipelines.store.stats_snapshots import StatRow

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


# -- the analyst's view: by company, by day, by error kind, success rate, latency -------------------------------
COUNT_NAME_OF_STATUS: Mapping[str, str] = _OVERALL_NAMES  # "success" -> "successful", ...
STATUS_NAMES = tuple(_OVERALL_NAMES.values())  # successful, failed, pending, retrying
PERCENTILES = {"p50Seconds": 0.50, "p95Seconds": 0.95}


def success_rate(counts: Mapping[str, int]) -> float | None:
    """Delivered among settled rows (success + failed); None when nothing has settled yet. Rows still pending
    or retrying are neither success nor failure."""
    settled = counts.get("successful", 0) + counts.get("failed", 0)
    return round(counts.get("successful", 0) / settled, 4) if settled else None


def _utc_day(engine: Engine, column: Any) -> Any:
    if engine.dialect.name == "postgresql":
        return sa.func.to_char(sa.func.timezone("UTC", column), "YYYY-MM-DD")
    return sa.func.date(column)  # SQLite stores UTC text


def _latency_s(engine: Engine) -> Any:
    if engine.dialect.name == "postgresql":
        return sa.extract("epoch", d.c.delivered_at - d.c.created_at)
    return (sa.func.julianday(d.c.delivered_at) - sa.func.julianday(d.c.created_at)) * 86400.0


def _counts_by(engine: Engine, flt: StatsFilter, key: Any) -> dict[str, dict[str, int]]:
    stmt = sa.select(key.label("k"), d.c.status, sa.func.count()).where(*flt.where()).group_by(key, d.c.status)
    grouped: dict[str, dict[str, int]] = {}
    with read_connection(engine) as conn:
        for k, status, n in conn.execute(stmt).all():
            counts = grouped.setdefault(str(k), dict.fromkeys(("total", *STATUS_NAMES), 0))
            counts["total"] += n
            counts[_OVERALL_NAMES[status]] += n
    return grouped


def latency_percentiles(engine: Engine, flt: StatsFilter = StatsFilter()) -> dict[str, Any]:
    """created_at -> delivered_at of delivered rows, in seconds: p50 and p95 by linear interpolation between
    the two nearest ranks (what PostgreSQL's percentile_cont gives), computed with ORDER BY/OFFSET so it runs
    the same on SQLite, which has no percentile function, and reads at most two rows per percentile."""
    latency = _latency_s(engine)
    delivered = [*flt.where(), d.c.status == DeliveryStatus.SUCCESS.value, d.c.delivered_at.is_not(None)]
    result: dict[str, Any] = dict.fromkeys(PERCENTILES)
    with read_connection(engine) as conn:
        n = conn.execute(sa.select(sa.func.count()).select_from(d).where(*delivered)).scalar_one()
        result["samples"] = n
        for name, p in PERCENTILES.items():
            if not n:
                continue
            rank = p * (n - 1)
            low = int(rank)
            pair = conn.execute(
                sa.select(latency.label("s")).where(*delivered).order_by(latency).offset(low).limit(2)
            ).scalars()
            values = [float(v) for v in pair]
            upper = values[1] if len(values) > 1 else values[0]
            result[name] = round(values[0] + (upper - values[0]) * (rank - low), 3)
    return result


def full_stats(engine: Engine, flt: StatsFilter = StatsFilter()) -> dict[str, Any]:
    """The `/stats` contract's shape plus success rate, by company, by day (UTC, of created_at), by error kind,
    and latency percentiles."""
    stats = delivery_stats(engine, flt)
    by_kind = sa.select(d.c.error_kind, sa.func.count()).where(*flt.where(), d.c.error_kind.is_not(None))
    with read_connection(engine) as conn:
        kinds = conn.execute(by_kind.group_by(d.c.error_kind).order_by(d.c.error_kind)).all()
    companies = _counts_by(engine, flt, d.c.company_id)
    days = _counts_by(engine, flt, _utc_day(engine, d.c.created_at))
    return {
        **stats,
        "successRate": success_rate(stats["overall"]),
        "byCompany": [
            {"companyId": c, **counts, "successRate": success_rate(counts)} for c, counts in sorted(companies.items())
        ],
        "byDay": [{"day": day, **counts, "successRate": success_rate(counts)} for day, counts in sorted(days.items())],
        "byErrorKind": [{"errorKind": kind, "count": n} for kind, n in kinds],
        "latency": latency_percentiles(engine, flt),
    }


def snapshot_rows(stats: Mapping[str, Any]) -> list[StatRow]:
    """`full_stats` flattened into the rows of `impact_delivery_stats` (undefined values are left out)."""
    rows: list[StatRow] = []

    def add(dimension: str, value: str, metrics: Mapping[str, Any]) -> None:
        rows.extend(StatRow(dimension, value, m, float(v)) for m, v in metrics.items() if v is not None)

    latency = stats["latency"]
    add(
        "overall",
        "",
        {
            **stats["overall"],
            "success_rate": stats["successRate"],
            "latency_p50_s": latency["p50Seconds"],
            "latency_p95_s": latency["p95Seconds"],
            "latency_samples": latency["samples"],
        },
    )
    for r in stats["byProvider"]:
        add(
            "provider_status", f"{r['provider']}/{r['status']}", {"count": r["count"], "avg_attempts": r["avgAttempts"]}
        )
    for section, dimension, key in (("byCompany", "company", "companyId"), ("byDay", "day", "day")):
        for r in stats[section]:
            add(dimension, r[key], {m: r[m] for m in ("total", *STATUS_NAMES)} | {"success_rate": r["successRate"]})
    for r in stats["byErrorKind"]:
        add("error_kind", r["errorKind"], {"count": r["count"]})
    return rows
