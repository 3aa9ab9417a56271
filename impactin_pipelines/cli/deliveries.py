"""`impactin deliveries list|show`."""

import json

import click

from impactin_pipelines.cli.common import ProviderChoice, bound, engine
from impactin_pipelines.cli.output import echo_json, table
from impactin_pipelines.domain.statuses import DeliveryStatus, ErrorKind
from impactin_pipelines.store.delivery_log import (
    MIN_SEARCH_CHARS,
    DeliveryFilter,
    attempts_for,
    decode_cursor,
    get_delivery,
    list_deliveries,
)

STATUSES = [s.value for s in DeliveryStatus]
ERROR_KINDS = [k.value for k in ErrorKind]


@click.group()
def deliveries() -> None:
    """Find and inspect deliveries."""


@deliveries.command("list")
@click.option("--company", "companies", multiple=True, help="Company id (repeatable).")
@click.option("--provider", "providers", multiple=True, type=ProviderChoice(), help="Provider (repeatable).")
@click.option("--status", "statuses", multiple=True, type=click.Choice(STATUSES), help="Status (repeatable).")
@click.option(
    "--error-kind", "error_kinds", multiple=True, type=click.Choice(ERROR_KINDS), help="Error kind (repeatable)."
)
@click.option("--event", "event_ids", multiple=True, help="Event id as stored (repeatable).")
@click.option("--user", "user_id", help="Only deliveries of this user's events.")
@click.option("--search", help=f"Case-insensitive text inside the last error ({MIN_SEARCH_CHARS}+ characters).")
@click.option(
    "--metadata",
    "metadata",
    multiple=True,
    metavar="KEY=VALUE",
    help="The event's metadata has KEY equal to VALUE (repeatable, all must match).",
)
@click.option("--since", help="Created at or after (YYYY-MM-DD or ISO datetime).")
@click.option("--until", help="Created before (a date includes that whole day).")
@click.option("--page", type=click.IntRange(min=1), help="Page number (default 1; not with --cursor).")
@click.option("--cursor", help="The next_cursor a previous page printed ('' for the first): keyset pagination.")
@click.option("--limit", type=click.IntRange(1, 1000), default=20, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def list_command(
    companies: tuple[str, ...],
    providers: tuple[str, ...],
    statuses: tuple[str, ...],
    error_kinds: tuple[str, ...],
    event_ids: tuple[str, ...],
    user_id: str | None,
    search: str | None,
    metadata: tuple[str, ...],
    since: str | None,
    until: str | None,
    page: int | None,
    cursor: str | None,
    limit: int,
    as_json: bool,
) -> None:
    """Deliveries, newest first."""
    if page is not None and cursor is not None:
        raise click.BadParameter("cannot be combined with --page", param_hint="--cursor")
    if cursor:
        try:
            decode_cursor(cursor)
        except ValueError as exc:
            raise click.BadParameter(f"{cursor!r} {exc}", param_hint="--cursor") from None
    try:
        flt = DeliveryFilter(
            company_ids=list(companies) or None,
            providers=list(providers) or None,
            statuses=list(statuses) or None,
            since=bound(since, "--since"),
            until=bound(until, "--until", end=True),
            error_kinds=list(error_kinds) or None,
            event_ids=list(event_ids) or None,
            user_id=user_id,
            search=search,
            metadata=_metadata(metadata),
        )
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--search/--metadata") from None
    result = list_deliveries(engine(), flt, page=page or 1, limit=limit, cursor=cursor)
    if as_json:
        if result.page is None:
            pagination = {"limit": limit, "hasNext": result.next_cursor is not None, "nextCursor": result.next_cursor}
        else:
            pagination = {"page": result.page, "limit": limit, "total": result.total, "totalPages": result.total_pages}
        echo_json({"data": result.rows, "pagination": pagination})
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
    if result.page is not None:
        click.echo(f"page {result.page} of {max(result.total_pages, 1)} ({result.total} deliveries)")
    if result.next_cursor is not None:
        click.echo(f"next page: --cursor {result.next_cursor}")


def _metadata(pairs: tuple[str, ...]) -> dict[str, str]:
    found: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise click.BadParameter(f"{pair!r} is not KEY=VALUE", param_hint="--metadata")
        if key in found:
            raise click.BadParameter(f"{key!r} is given more than once", param_hint="--metadata")
        found[key] = value
    return found


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
        "confirmation",
        "confirmed_at",
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
