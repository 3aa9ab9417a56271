"""`impactin stats`."""

from pathlib import Path

import click

from impactin_pipelines.cli.common import bound, engine
from impactin_pipelines.cli.output import echo_json, table
from impactin_pipelines.services.stats import STATUS_NAMES, StatsFilter, delivery_stats


@click.command()
@click.option("--company", "companies", multiple=True, help="Company id (repeatable).")
@click.option("--since", help="Created at or after (YYYY-MM-DD or ISO datetime).")
@click.option("--until", help="Created before (a date includes that whole day).")
@click.option("--detail", is_flag=True, help="Also: success rate, latency, by company, by day, by error kind.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output (the API's /stats shape).")
@click.option(
    "--csv",
    "csv_dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="Also write the analyst's tables as CSV files into this folder (one per table).",
)
def stats(
    companies: tuple[str, ...],
    since: str | None,
    until: str | None,
    detail: bool,
    as_json: bool,
    csv_dir: Path | None,
) -> None:
    """Delivery statistics: totals by status, and by provider x status with average attempts.

    --csv DIR writes by_day_provider_status.csv, by_company.csv, by_error_kind.csv and latency.csv (columns in
    docs/operations.md), for spreadsheets."""
    flt = StatsFilter(
        company_ids=tuple(companies) or None, since=bound(since, "--since"), until=bound(until, "--until", end=True)
    )
    if detail or csv_dir is not None:
        from impactin_pipelines.services.analytics import analyse, write_csv  # pandas: only when asked for

        analysis = analyse(engine(), flt)
        result = analysis.stats if detail else {k: analysis.stats[k] for k in ("overall", "byProvider")}
        if csv_dir is not None:
            for path in write_csv(analysis.tables, csv_dir):
                click.echo(f"wrote {path}", err=as_json)
    else:
        result = delivery_stats(engine(), flt)
    if as_json:
        echo_json({"data": result})
        return
    overall = result["overall"]
    click.echo("  ".join(f"{k}: {v}" for k, v in overall.items()))
    click.echo()
    click.echo(
        table(
            ["provider", "status", "count", "avg attempts"],
            [[r["provider"], r["status"], r["count"], f"{r['avgAttempts']:.2f}"] for r in result["byProvider"]],
        )
    )
    if detail:
        print_detail(result)


def _rate(value: float | None) -> str:
    return "-" if value is None else f"{value:.2%}"


def print_detail(result: dict) -> None:
    latency = result["latency"]
    click.echo(
        f"\nsuccess rate (of settled): {_rate(result['successRate'])}   latency created->delivered: "
        f"p50 {latency['p50Seconds'] if latency['p50Seconds'] is not None else '-'} s, "
        f"p95 {latency['p95Seconds'] if latency['p95Seconds'] is not None else '-'} s ({latency['samples']} delivered)"
    )
    counts = ["total", *STATUS_NAMES]
    for title, key, section in (("company", "companyId", "byCompany"), ("day (UTC)", "day", "byDay")):
        click.echo()
        click.echo(
            table(
                [title, *counts, "success rate"],
                [[r[key], *(r[c] for c in counts), _rate(r["successRate"])] for r in result[section]],
            )
        )
    click.echo()
    click.echo(table(["error kind", "count"], [[r["errorKind"], r["count"]] for r in result["byErrorKind"]]))
