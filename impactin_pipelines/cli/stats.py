"""`impactin stats`."""

import click

from impactin_pipelines.cli.common import bound, engine
from impactin_pipelines.cli.output import echo_json, table
from impactin_pipelines.services.stats import StatsFilter, delivery_stats


@click.command()
@click.option("--company", "companies", multiple=True, help="Company id (repeatable).")
@click.option("--since", help="Created at or after (YYYY-MM-DD or ISO datetime).")
@click.option("--until", help="Created before (a date includes that whole day).")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output (the API's /stats shape).")
def stats(companies: tuple[str, ...], since: str | None, until: str | None, as_json: bool) -> None:
    """Delivery statistics: totals by status, and by provider x status with average attempts."""
    flt = StatsFilter(
        company_ids=tuple(companies) or None, since=bound(since, "--since"), until=bound(until, "--until", end=True)
    )
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
