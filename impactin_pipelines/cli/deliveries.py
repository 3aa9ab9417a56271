"""`impactin deliveries list|show`."""

import json

import click

from impactin_pipelines.cli.common import ProviderChoice, bound, engine
from impactin_pipelines.cli.output import echo_json, table
from impactin_pipelines.domain.statuses import DeliveryStatus
from impactin_pipelines.store.delivery_log import DeliveryFilter, attempts_for, get_delivery, list_deliveries

STATUSES = [s.value for s in DeliveryStatus]


@click.group()
def deliveries() -> None:
    """Find and inspect deliveries."""


@deliveries.command("list")
@click.option("--company", "companies", multiple=True, help="Company id (repeatable).")
@click.option("--provider", "providers", multiple=True, type=ProviderChoice(), help="Provider (repeatable).")
@click.option("--status", "statuses", multiple=True, type=click.Choice(STATUSES), help="Status (repeatable).")
@click.option("--since", help="Created at or after (YYYY-MM-DD or ISO datetime).")
@click.option("--until", help="Created before (a date includes that whole day).")
@click.option("--page", type=click.IntRange(min=1), default=1, show_default=True)
@click.option("--limit", type=click.IntRange(1, 1000), default=20, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def list_command(
    companies: tuple[str, ...],
    providers: tuple[str, ...],
    statuses: tuple[str, ...],
    since: str | None,
    until: str | None,
    page: int,
    limit: int,
    as_json: bool,
) -> None:
    """Deliveries, newest first."""
    flt = DeliveryFilter(
        company_ids=list(companies) or None,
        providers=list(providers) or None,
        statuses=list(statuses) or None,
        since=bound(since, "--since"),
        until=bound(until, "--until", end=True),
    )
    result = list_deliveries(engine(), flt, page=page, limit=limit)
    if as_json:
        echo_json(
            {
                "data": result.rows,
                "pagination": {"page": page, "limit": limit, "total": result.total, "totalPages": result.total_pages},
            }
        )
        return
    headers = ["id", "company", "provider", "event", "status", "error_kind", "attempts", "created", "delivered"]
    rows = [
        [
            r["id"],
            r["company_id"],
            r["provider"],
            r["event_id"],
            r["status"],
            r["error_kind"],
            r["attempt_count"],
            r["created_at"],
            r["delivered_at"],
        ]
        for r in result.rows
    ]
    click.echo(table(headers, rows))
    click.echo(f"page {page} of {max(result.total_pages, 1)} ({result.total} deliveries)")


@deliveries.command("show")
@click.argument("ident")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def show_command(ident: str, as_json: bool) -> None:
    """One delivery (by id or delivery id) with its payload, response and every attempt."""
    eng = engine()
    row = get_delivery(eng, ident)
    if row is None:
        raise click.ClickException(f"delivery {ident!r} not found")
    attempts = attempts_for(eng, row["delivery_id"])
    if as_json:
        echo_json({**row, "attempts": attempts})
        return
    for key in (
        "id",
        "delivery_id",
        "company_id",
        "provider",
        "event_id",
        "status",
        "error_kind",
        "attempt_count",
        "last_error",
        "next_attempt_at",
        "delivered_at",
        "created_at",
        "updated_at",
        "payload_hash",
    ):
        click.echo(f"{key:>16}: {row[key] if row[key] is not None else '-'}")
    click.echo(f"{'payload':>16}: {_pretty(row['payload'])}")
    click.echo(f"{'response':>16}: {_pretty(row['provider_response'])}")
    if attempts:
        click.echo("\nattempts:")
        click.echo(
            table(
                ["#", "started", "ms", "outcome", "http", "error", "run"],
                [
                    [
                        x["attempt_number"],
                        x["started_at"],
                        x["duration_ms"],
                        x["outcome"],
                        x["http_status"],
                        x["error"],
                        (x["run_id"] or "")[:8],
                    ]
                    for x in attempts
                ],
            )
        )


def _pretty(text: str | None) -> str:
    if not text:
        return "-"
    try:
        return json.dumps(json.loads(text), indent=2, ensure_ascii=False).replace("\n", "\n" + " " * 18)
    except ValueError:
        return text
