"""Delivery statistics on both backends: every section, portable percentiles, the SQL table and the asset."""

import csv
import json
import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import dagster as dg
import pytest
import sqlalchemy as sa

from impactin_pipelines.defs.assets.stats import delivery_stats as delivery_stats_asset
from impactin_pipelines.defs.assets.stats import stats_metadata
from impactin_pipelines.defs.resources import WarehouseResource
from impactin_pipelines.domain.identity import delivery_id_for
from impactin_pipelines.services.analytics import (
    ALL_PROVIDERS,
    TABLE_COLUMNS,
    analyse,
    full_stats,
    latency_percentiles,
    records,
    snapshot_rows,
)
from impactin_pipelines.services.stats import StatsFilter, delivery_stats
from impactin_pipelines.store.outbox import NewDelivery, Outbox
from impactin_pipelines.store.schema import impact_deliveries as d
from impactin_pipelines.store.stats_snapshots import (
    SNAPSHOT_COLUMNS,
    impact_delivery_stats,
    latest_snapshot,
    write_snapshot,
)

DAY1 = datetime(2026, 3, 1, 23, 30, tzinfo=UTC)  # late on the 1st (UTC)
DAY2 = datetime(2026, 3, 2, 0, 30, tzinfo=UTC)  # an hour later, but the 2nd


def add_row(
    engine,
    event_id: str,
    *,
    company: str = "acme",
    provider: str = "benevity",
    created: datetime = DAY1,
    status: str = "success",
    latency_s: float | None = None,
    error_kind: str | None = None,
    attempts: int = 1,
) -> None:
    ident = delivery_id_for(company, provider, event_id)
    Outbox(engine).add([NewDelivery(company, provider, event_id, ident, "{}", "h")], now=created)
    values: dict[str, object] = {"status": status, "error_kind": error_kind, "attempt_count": attempts}
    if latency_s is not None:
        values["delivered_at"] = created + timedelta(seconds=latency_s)
    with engine.begin() as conn:
        conn.execute(sa.update(d).where(d.c.delivery_id == ident).values(**values))


@pytest.fixture
def ledger(engine):
    """acme: 5 delivered (latencies 10, 20, 30, 40, 100 s), 1 rejected, 1 pending; globex: 1 exhausted,
    1 retrying on goodera, 1 invalid event on the next day."""
    for i, latency in enumerate([40, 10, 100, 30, 20]):
        add_row(engine, f"ok{i}", latency_s=latency, attempts=1 + i % 2)
    add_row(engine, "rej", status="failed", error_kind="rejected")
    add_row(engine, "pend", status="pending", attempts=0)
    add_row(engine, "exh", company="globex", status="failed", error_kind="exhausted", attempts=9)
    add_row(engine, "ret", company="globex", provider="goodera", status="retrying", error_kind="transient")
    add_row(engine, "inv", company="globex", created=DAY2, status="failed", error_kind="invalid_event", attempts=0)
    return engine


def test_spec_shape_is_unchanged(ledger) -> None:
    stats = delivery_stats(ledger)
    assert set(stats) == {"overall", "byProvider"}
    assert stats["overall"] == {"total": 10, "successful": 5, "failed": 3, "pending": 1, "retrying": 1}
    assert {(r["provider"], r["status"]): (r["count"], r["avgAttempts"]) for r in stats["byProvider"]} == {
        ("benevity", "success"): (5, 1.4),
        ("benevity", "failed"): (3, 3.33),
        ("benevity", "pending"): (1, 0.0),
        ("goodera", "retrying"): (1, 1.0),
    }


def test_full_stats_sections(ledger) -> None:
    stats = full_stats(ledger)
    assert stats["successRate"] == round(5 / 8, 4)
    assert stats["byCompany"] == [
        {
            "companyId": "acme",
            "total": 7,
            "successful": 5,
            "failed": 1,
            "pending": 1,
            "retrying": 0,
            "successRate": round(5 / 6, 4),
        },
        {
            "companyId": "globex",
            "total": 3,
            "successful": 0,
            "failed": 2,
            "pending": 0,
            "retrying": 1,
            "successRate": 0.0,
        },
    ]
    assert [(r["day"], r["total"], r["failed"]) for r in stats["byDay"]] == [("2026-03-01", 9, 2), ("2026-03-02", 1, 1)]
    assert stats["byErrorKind"] == [
        {"errorKind": "exhausted", "count": 1},
        {"errorKind": "invalid_event", "count": 1},
        {"errorKind": "rejected", "count": 1},
        {"errorKind": "transient", "count": 1},
    ]
    # sorted latencies 10 20 30 40 100: p50 is the middle one; p95 sits 80 % of the way from 40 to 100
    assert stats["latency"] == {"p50Seconds": 30.0, "p95Seconds": 88.0, "samples": 5}


def test_filters_apply_to_every_section(ledger) -> None:
    only_globex = full_stats(ledger, StatsFilter(company_ids=("globex",)))
    assert [r["companyId"] for r in only_globex["byCompany"]] == ["globex"]
    assert only_globex["successRate"] == 0.0
    assert only_globex["latency"] == {"p50Seconds": None, "p95Seconds": None, "samples": 0}
    day2 = full_stats(ledger, StatsFilter(since=datetime(2026, 3, 2, tzinfo=UTC)))
    assert [r["day"] for r in day2["byDay"]] == ["2026-03-02"]
    assert day2["overall"]["total"] == 1 and day2["byErrorKind"] == [{"errorKind": "invalid_event", "count": 1}]
    empty = full_stats(ledger, StatsFilter(company_ids=("nobody",)))
    assert empty["successRate"] is None and empty["byDay"] == [] and empty["byCompany"] == []


def test_percentiles_match_postgres_percentile_cont(pg_engine) -> None:
    latencies = [0.5, 3, 3, 7.25, 11, 19, 42, 42, 300, 1234.5, 2, 8]
    for i, latency in enumerate(latencies):
        add_row(pg_engine, f"e{i}", latency_s=latency)
    with pg_engine.connect() as conn:
        expected = conn.execute(
            sa.text(
                "select percentile_cont(0.5) within group (order by extract(epoch from delivered_at - created_at)),"
                " percentile_cont(0.95) within group (order by extract(epoch from delivered_at - created_at))"
                " from impact_deliveries where status = 'success'"
            )
        ).one()
    ours = latency_percentiles(pg_engine)
    assert ours["p50Seconds"] == pytest.approx(float(expected[0]), abs=1e-3)
    assert ours["p95Seconds"] == pytest.approx(float(expected[1]), abs=1e-3)


def test_single_delivery_percentiles(engine) -> None:
    add_row(engine, "only", latency_s=12.5)
    assert latency_percentiles(engine) == {"p50Seconds": 12.5, "p95Seconds": 12.5, "samples": 1}


def test_snapshot_rows_land_in_sql_and_old_snapshots_are_pruned(ledger) -> None:
    stats = full_stats(ledger)
    rows = snapshot_rows(stats)
    first = datetime(2026, 1, 1, tzinfo=UTC)
    write_snapshot(ledger, rows, computed_at=first, period_start=None, period_end=first)
    later = first + timedelta(days=10)
    n = write_snapshot(ledger, rows, computed_at=later, period_start=None, period_end=later, keep_days=5)
    assert n == len(rows)
    with ledger.connect() as conn:
        snapshots = conn.execute(sa.select(impact_delivery_stats.c.computed_at).distinct()).scalars().all()
        assert len(snapshots) == 1  # the first one is older than 5 days
        value = conn.execute(
            sa.text(
                "select value from impact_delivery_stats where dimension = 'company' "
                "and dimension_value = 'acme' and metric = 'success_rate'"
            )
        ).scalar_one()
    assert value == pytest.approx(5 / 6, abs=1e-4)
    latest = {(r["dimension"], r["dimension_value"], r["metric"]): r["value"] for r in latest_snapshot(ledger)}
    assert latest[("overall", "", "latency_p95_s")] == 88.0
    assert latest[("provider_status", "benevity/failed", "avg_attempts")] == 3.33
    assert latest[("day", "2026-03-02", "failed")] == 1
    assert latest[("error_kind", "exhausted", "count")] == 1


def test_metadata_keys_are_stable_and_numeric(ledger, sqlite_engine) -> None:
    busy = stats_metadata(full_stats(ledger))
    add_row(sqlite_engine, "x", status="success", latency_s=1)
    quiet = stats_metadata(full_stats(sqlite_engine))
    assert set(busy) == set(quiet)
    assert all(isinstance(v, int | float) for v in busy.values())
    assert busy["benevity_failed"] == 3 and busy["workday_total"] == 0 and busy["error_kind_config"] == 0
    assert busy["latency_p50_s"] == 30.0 and busy["success_rate"] == round(5 / 8, 4)


def test_asset_writes_the_table_and_returns_metadata(ledger) -> None:
    url = ledger.url.render_as_string(hide_password=False)
    with dg.instance_for_test() as instance:
        result = dg.materialize(
            [delivery_stats_asset],
            instance=instance,
            resources={"warehouse": WarehouseResource(url=url)},
            run_config={"ops": {"delivery_stats": {"config": {"period_days": 0}}}},
        )
        assert result.success
        [mat] = result.asset_materializations_for_node("delivery_stats")
    meta = {k: v.value for k, v in mat.metadata.items()}
    assert meta["total_total"] == 10 and meta["total_successful"] == 5 and meta["latency_p95_s"] == 88.0
    assert meta["benevity_success_rate"] == round(5 / 8, 4) and meta["goodera_retrying"] == 1
    summary, by_provider = meta["summary"], meta["by_provider"]
    assert isinstance(summary, str) and isinstance(by_provider, str)
    assert "| acme | 7 | 5 | 1 | 1 | 0 | 83.33% |" in summary
    assert "| benevity | failed | 3 | 3.33 |" in by_provider
    latest = latest_snapshot(ledger)
    assert {r["dimension"] for r in latest} == {"overall", "provider_status", "company", "day", "error_kind"}
    assert all(r["period_start"] is None for r in latest)


def test_asset_period_leaves_out_older_deliveries(ledger) -> None:
    add_row(ledger, "recent", created=datetime.now(UTC) - timedelta(hours=1), latency_s=5)
    url = ledger.url.render_as_string(hide_password=False)
    with dg.instance_for_test() as instance:
        result = dg.materialize(
            [delivery_stats_asset], instance=instance, resources={"warehouse": WarehouseResource(url=url)}
        )
        [mat] = result.asset_materializations_for_node("delivery_stats")
    assert mat.metadata["total_total"].value == 1 and mat.metadata["period_days"].value == 30
    assert mat.metadata["latency_p50_s"].value == 5.0


def _cli(args: list[str], url: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "IMPACTIN_WAREHOUSE_URL": url}
    impactin = str(Path(sys.executable).parent / "impactin")
    return subprocess.run([impactin, *args], env=env, capture_output=True, text=True, timeout=60, check=False)


def test_cli_stats_detail(ledger) -> None:
    url = ledger.url.render_as_string(hide_password=False)
    plain = _cli(["stats", "--json"], url)
    assert plain.returncode == 0, plain.stderr
    assert set(json.loads(plain.stdout)["data"]) == {"overall", "byProvider"}
    detail = _cli(["stats", "--json", "--detail", "--company", "acme"], url)
    data = json.loads(detail.stdout)["data"]
    assert data["latency"]["p95Seconds"] == 88.0 and [r["companyId"] for r in data["byCompany"]] == ["acme"]
    text = _cli(["stats", "--detail"], url)
    assert text.returncode == 0, text.stderr
    assert "success rate (of settled): 62.50%" in text.stdout and "p95 88.0 s (5 delivered)" in text.stdout
    assert "2026-03-02" in text.stdout and "invalid_event" in text.stdout


def test_tables_from_one_read(ledger) -> None:
    analysis = analyse(ledger)
    tables = analysis.tables
    assert list(tables) == list(TABLE_COLUMNS)
    for name, table in tables.items():
        assert list(table.columns) == [c for c, _, _ in TABLE_COLUMNS[name]]
    by_dps = records(tables["by_day_provider_status"])
    assert by_dps == [
        {"day": "2026-03-01", "provider": "benevity", "status": "failed", "count": 2, "avg_attempts": 5.0},
        {"day": "2026-03-01", "provider": "benevity", "status": "pending", "count": 1, "avg_attempts": 0.0},
        {"day": "2026-03-01", "provider": "benevity", "status": "success", "count": 5, "avg_attempts": 1.4},
        {"day": "2026-03-01", "provider": "goodera", "status": "retrying", "count": 1, "avg_attempts": 1.0},
        {"day": "2026-03-02", "provider": "benevity", "status": "failed", "count": 1, "avg_attempts": 0.0},
    ]
    assert records(tables["by_company"])[1] == {
        "company_id": "globex",
        "total": 3,
        "successful": 0,
        "failed": 2,
        "pending": 0,
        "retrying": 1,
        "success_rate": 0.0,
    }
    assert records(tables["latency"]) == [
        {"provider": ALL_PROVIDERS, "samples": 5, "p50_s": 30.0, "p95_s": 88.0},
        {"provider": "benevity", "samples": 5, "p50_s": 30.0, "p95_s": 88.0},
    ]
    # the analyst's view and the API's GROUP BY agree on the contract's part
    contract = delivery_stats(ledger)
    assert {k: analysis.stats[k] for k in contract} == contract


def test_tables_when_nothing_matches(ledger) -> None:
    analysis = analyse(ledger, StatsFilter(company_ids=("nobody",)))
    assert all(table.empty for name, table in analysis.tables.items() if name != "latency")
    assert records(analysis.tables["latency"]) == [{"provider": "all", "samples": 0, "p50_s": None, "p95_s": None}]
    assert analysis.stats["overall"]["total"] == 0 and analysis.stats["byProvider"] == []


def test_asset_shows_the_tables(ledger) -> None:
    url = ledger.url.render_as_string(hide_password=False)
    with dg.instance_for_test() as instance:
        result = dg.materialize(
            [delivery_stats_asset],
            instance=instance,
            resources={"warehouse": WarehouseResource(url=url)},
            run_config={"ops": {"delivery_stats": {"config": {"period_days": 0}}}},
        )
        [mat] = result.asset_materializations_for_node("delivery_stats")
    schema = mat.metadata["dagster/column_schema"].value
    assert isinstance(schema, dg.TableSchema)
    assert [c.name for c in schema.columns] == [c for c, _, _ in SNAPSHOT_COLUMNS]
    assert mat.metadata["dagster/row_count"].value == len(latest_snapshot(ledger))
    company, latency = mat.metadata["table_by_company"], mat.metadata["table_latency"]
    assert isinstance(company, dg.TableMetadataValue) and isinstance(latency, dg.TableMetadataValue)
    assert company.schema is not None
    assert [c.name for c in company.schema.columns] == [c for c, _, _ in TABLE_COLUMNS["by_company"]]
    assert [r.data["company_id"] for r in company.records] == ["acme", "globex"]
    assert mat.metadata["table_by_company_rows"].value == 2
    assert latency.records[0].data == {
        "provider": "all",
        "samples": 5,
        "p50_s": 30.0,
        "p95_s": 88.0,
    }


def test_cli_stats_csv(ledger, tmp_path) -> None:
    url = ledger.url.render_as_string(hide_password=False)
    out = tmp_path / "stats"
    result = _cli(["stats", "--csv", str(out), "--company", "acme"], url)
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in out.iterdir()) == sorted(f"{name}.csv" for name in TABLE_COLUMNS)
    for name, columns in TABLE_COLUMNS.items():
        with (out / f"{name}.csv").open(newline="") as f:
            assert next(csv.reader(f)) == [c for c, _, _ in columns]
    with (out / "by_company.csv").open(newline="") as f:
        assert list(csv.DictReader(f)) == [
            {
                "company_id": "acme",
                "total": "7",
                "successful": "5",
                "failed": "1",
                "pending": "1",
                "retrying": "0",
                "success_rate": "0.8333",
            }
        ]
    with (out / "by_error_kind.csv").open(newline="") as f:
        assert list(csv.DictReader(f)) == [{"error_kind": "rejected", "count": "1"}]
    assert f"wrote {out / 'latency.csv'}" in result.stdout
