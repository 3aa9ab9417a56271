"""The analyst's delivery statistics, computed with pandas from ONE read of the delivery rows: by day x provider
x status, by company, by error kind, latency percentiles (`stats_tables`, columns in `TABLE_COLUMNS`), and the
same in the JSON shape the CLI prints and the stats asset stores in `impact_delivery_stats` (`full_stats`). Kept
apart from services/stats so the commands that need only the contract's counts never import pandas."""

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date, timedelta
from pathlib import Path
from typing import Any, cast

import pandas as pd
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from impactin_pipelines.domain.statuses import DeliveryStatus
from impactin_pipelines.services.stats import (
    COUNT_NAME_OF_STATUS,
    EVERYTHING,
    STATUS_NAMES,
    StatsFilter,
    success_rate,
)
from impactin_pipelines.store.engine import read_connection
from impactin_pipelines.store.schema import impact_deliveries as d
from impactin_pipelines.store.stats_snapshots import StatRow

ALL_PROVIDERS = "all"  # the latency table's row over every provider

# The analyst's tables: name -> (column, description). `impactin stats --csv` writes one file per table with
# these columns in this order; the stats asset shows them with this schema.
TABLE_COLUMNS: dict[str, tuple[tuple[str, str, str], ...]] = {
    "by_day_provider_status": (
        ("day", "string", "UTC day of created_at, YYYY-MM-DD"),
        ("provider", "string", "Provider"),
        ("status", "string", "Delivery status"),
        ("count", "int", "Deliveries"),
        ("avg_attempts", "float", "Average attempts per delivery (2 decimals)"),
    ),
    "by_company": (
        ("company_id", "string", "Company"),
        ("total", "int", "Deliveries"),
        ("successful", "int", "Status success"),
        ("failed", "int", "Status failed"),
        ("pending", "int", "Status pending"),
        ("retrying", "int", "Status retrying"),
        ("success_rate", "float", "successful / (successful + failed); empty when nothing settled"),
    ),
    "by_error_kind": (
        ("error_kind", "string", "Why the row is not (yet) delivered"),
        ("count", "int", "Deliveries"),
    ),
    "latency": (
        ("provider", "string", f"Provider, or '{ALL_PROVIDERS}' for every provider"),
        ("samples", "int", "Delivered rows measured"),
        ("p50_s", "float", "Median created -> delivered, seconds (linear interpolation)"),
        ("p95_s", "float", "95th percentile created -> delivered, seconds (linear interpolation)"),
    ),
}


# -- the one read ---------------------------------------------------------------------------------------------------
STATUS_ORDER = sorted(s.value for s in DeliveryStatus)  # the status codes the read hands over
_EPOCH = date(1970, 1, 1)


def _utc_day_number(engine: Engine) -> Any:
    """Days since 1970-01-01 of created_at (UTC): an integer is cheaper to hand over than a date's text."""
    if engine.dialect.name == "postgresql":
        return sa.cast(sa.func.floor(sa.extract("epoch", d.c.created_at) / 86400), sa.Integer)
    return sa.cast(sa.func.julianday(d.c.created_at) - 2440587.5, sa.Integer)  # SQLite stores UTC text


def _latency_s(engine: Engine) -> Any:
    """created_at -> delivered_at in seconds for delivered rows, NULL for the others."""
    seconds: Any
    if engine.dialect.name == "postgresql":
        seconds = sa.extract("epoch", d.c.delivered_at - d.c.created_at)
    else:
        seconds = (sa.func.julianday(d.c.delivered_at) - sa.func.julianday(d.c.created_at)) * 86400.0
    return sa.case((d.c.status == DeliveryStatus.SUCCESS.value, sa.cast(seconds, sa.Float)), else_=None)


def read_rows(engine: Engine, flt: StatsFilter = EVERYTHING) -> pd.DataFrame:
    """Every delivery in the filter, one row each, with only what the tables need: one SELECT, no ORDER BY. The
    database computes the day and the latency and codes the status, so nothing is parsed in Python; the driver's
    tuples go straight into pandas (building the frame from SQLAlchemy rows would cost more than the query)."""
    stmt = sa.select(
        _utc_day_number(engine).label("day"),
        d.c.provider,
        d.c.company_id,
        sa.case({status: code for code, status in enumerate(STATUS_ORDER)}, value=d.c.status).label("status"),
        d.c.error_kind,
        d.c.attempt_count,
        _latency_s(engine).label("latency_s"),
    ).where(*flt.where())
    with read_connection(engine) as conn:
        result = conn.execute(stmt)
        frame = pd.DataFrame.from_records(result.cursor.fetchall(), columns=list(result.keys()))
    if frame.empty:
        frame = pd.DataFrame({c: pd.Series(dtype=object) for c in frame.columns})
    days = pd.Categorical(frame["day"].astype("int64"))
    frame["day"] = days.rename_categories({n: (_EPOCH + timedelta(days=int(n))).isoformat() for n in days.categories})
    frame["status"] = pd.Categorical.from_codes(
        frame["status"].astype("int64").to_numpy(), categories=pd.Index(STATUS_ORDER)
    )
    categories = ("provider", "company_id", "error_kind")
    return frame.astype({c: "category" for c in categories} | {"attempt_count": "int64", "latency_s": "float64"})


# -- the tables -----------------------------------------------------------------------------------------------------
def _status_counts(frame: pd.DataFrame, key: str) -> pd.DataFrame:
    """key -> total and one count column per status name (0 when absent), plus success_rate."""
    counts = (
        frame.groupby([key, "status"], observed=True).size().unstack("status", fill_value=0)
        if len(frame)
        else pd.DataFrame()
    )
    counts = (
        counts.rename(columns=COUNT_NAME_OF_STATUS).reindex(columns=list(STATUS_NAMES), fill_value=0).astype("int64")
    )
    counts.insert(0, "total", counts.sum(axis=1).astype("int64"))
    settled = counts["successful"] + counts["failed"]
    counts["success_rate"] = (counts["successful"] / settled.where(settled > 0)).round(4)
    counts.index = counts.index.astype(str)
    counts.index.name = key
    return counts.sort_index().reset_index()


def _latency(frame: pd.DataFrame) -> pd.DataFrame:
    delivered = frame.loc[frame["latency_s"].notna(), ["provider", "latency_s"]]
    rows = [(ALL_PROVIDERS, delivered["latency_s"])]
    rows += [(str(p), group) for p, group in delivered.groupby("provider", observed=True)["latency_s"]]
    table = [
        {
            "provider": name,
            "samples": len(values),
            "p50_s": round(float(values.quantile(0.50)), 3) if len(values) else None,
            "p95_s": round(float(values.quantile(0.95)), 3) if len(values) else None,
        }
        for name, values in rows
    ]
    return pd.DataFrame(table, columns=[c for c, _, _ in TABLE_COLUMNS["latency"]]).astype(
        {"samples": "int64", "p50_s": "float64", "p95_s": "float64"}
    )


def stats_tables(frame: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """The analyst's tables from `read_rows`' frame, columns as in `TABLE_COLUMNS`, sorted by their keys."""
    keys = ["day", "provider", "status"]
    by_dps = (
        frame.groupby(keys, observed=True)
        .agg(count=("attempt_count", "size"), avg_attempts=("attempt_count", "mean"))
        .reset_index()
    )
    by_dps = by_dps.astype({k: str for k in keys} | {"count": "int64"}).sort_values(keys, ignore_index=True)
    by_dps["avg_attempts"] = by_dps["avg_attempts"].round(2)
    kinds = frame["error_kind"].dropna()
    by_kind = (
        kinds.astype(str)
        .value_counts()
        .rename_axis("error_kind")
        .reset_index(name="count")
        .sort_values("error_kind", ignore_index=True)
    )
    tables = {
        "by_day_provider_status": by_dps,
        "by_company": _status_counts(frame, "company_id"),
        "by_error_kind": by_kind.astype({"count": "int64"}),
        "latency": _latency(frame),
    }
    return {name: tables[name][[c for c, _, _ in TABLE_COLUMNS[name]]] for name in TABLE_COLUMNS}


def _none_if_nan(value: Any) -> Any:
    """A plain Python value (int, float, str) or None for NaN: what JSON and Dagster metadata take."""
    if pd.isna(value):
        return None
    return value.item() if hasattr(value, "item") else value


def records(table: pd.DataFrame) -> list[dict[str, Any]]:
    """The table's rows as dicts of plain Python values (None where undefined)."""
    return [{str(k): _none_if_nan(v) for k, v in row.items()} for row in table.to_dict("records")]


@dataclass(frozen=True)
class Analysis:
    tables: dict[str, pd.DataFrame]  # as in TABLE_COLUMNS
    stats: dict[str, Any]  # full_stats' shape


def analyse(engine: Engine, flt: StatsFilter = EVERYTHING) -> Analysis:
    """The tables and their JSON summary, from one read of the rows."""
    frame = read_rows(engine, flt)
    tables = stats_tables(frame)
    return Analysis(tables, _stats_json(frame, tables))


def full_stats(engine: Engine, flt: StatsFilter = EVERYTHING) -> dict[str, Any]:
    """The `/stats` contract's shape plus success rate, by company, by day (UTC, of created_at), by error kind,
    and latency percentiles."""
    return analyse(engine, flt).stats


def _stats_json(frame: pd.DataFrame, tables: Mapping[str, pd.DataFrame]) -> dict[str, Any]:
    by_dps = tables["by_day_provider_status"]
    by_provider: list[dict[str, Any]] = []
    if len(by_dps):
        grouped = frame.groupby(["provider", "status"], observed=True)["attempt_count"].agg(["size", "mean"])
        for key, row in grouped.sort_index().iterrows():
            provider, status = cast(tuple[str, str], key)  # a two-level index: (provider, status)
            by_provider.append(
                {
                    "provider": str(provider),
                    "status": str(status),
                    "count": int(row["size"]),
                    "avgAttempts": round(float(row["mean"]), 2),
                }
            )
    overall: dict[str, int] = dict.fromkeys(("total", *STATUS_NAMES), 0)
    for r in by_provider:
        overall["total"] += r["count"]
        overall[COUNT_NAME_OF_STATUS[r["status"]]] += r["count"]
    companies = records(tables["by_company"].rename(columns={"company_id": "companyId", "success_rate": "successRate"}))
    days = _status_counts(frame, "day").rename(columns={"success_rate": "successRate"})
    latency = tables["latency"].iloc[0]
    return {
        "overall": overall,
        "byProvider": by_provider,
        "successRate": success_rate(overall),
        "byCompany": companies,
        "byDay": records(days),
        "byErrorKind": [{"errorKind": r["error_kind"], "count": r["count"]} for r in records(tables["by_error_kind"])],
        "latency": {
            "p50Seconds": _none_if_nan(latency["p50_s"]),
            "p95Seconds": _none_if_nan(latency["p95_s"]),
            "samples": int(latency["samples"]),
        },
    }


def latency_percentiles(engine: Engine, flt: StatsFilter = EVERYTHING) -> dict[str, Any]:
    """created_at -> delivered_at of delivered rows, in seconds: p50 and p95 by linear interpolation between
    the two nearest ranks (what PostgreSQL's percentile_cont gives), on both backends."""
    return full_stats(engine, flt)["latency"]


def write_csv(tables: Mapping[str, pd.DataFrame], directory: Path) -> list[Path]:
    """One `<table>.csv` per table (UTF-8, header row, columns as in `TABLE_COLUMNS`, empty cell for undefined)."""
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for name, table in tables.items():
        path = directory / f"{name}.csv"
        table.to_csv(path, index=False)
        written.append(path)
    return written


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
