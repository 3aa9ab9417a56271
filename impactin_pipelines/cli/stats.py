"""`impactin stats`."""

import click

from impactin_pipelines.cli.common import bound, engine
from impactin_pipelines.cli.output import echo_json, table
from impactin_pipelines.services.stats import STATUS_NAMES, StatsFilter, delivery_stats, full_stats


@click.command()
@click.option("--company", "companies", multiple=True, help="Company id (repeatable).")
@click.option("--since", help="Created at or after (YYYY-MM-DD or ISO datetime).")
@click.option("--until", help="Created before (a date includes that whole day).")
@click.option("--detail", is_flag=True, help="Also: success rate, latency, by company, by day, by error kind.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output (the API's /stats shape).")
def stats(companies: tuple[str, ...], since: str | None, until: str | None, detail: bool, as_json: bool) -> None:
    """Delivery statistics: totals by status, and by provider x status with average attempts."""
    flt = StatsFilter(
        company_ids=tuple(companies) or None, since=bound(since, "--since"), until=bound(until, "--until", end=True)
    )
    result = full_stats(engine(), flt) if detail else delivery_stats(engine(), flt)
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
