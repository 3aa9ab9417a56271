"""`impactin reconcile [--company C] [--provider P] [--since] [--until] [--repair] [--json]`."""

from datetime import UTC, datetime, timedelta
from typing import Any

import click

from impactin_pipelines.cli.common import ProviderChoice, bound, engine
from impactin_pipelines.cli.output import echo_json, table
from impactin_pipelines.connectors.readback import Period
from impactin_pipelines.connectors.registry import ConnectorFactory
from impactin_pipelines.providers import provider_names
from impactin_pipelines.services import reconcile as service
from impactin_pipelines.store import source

DEFAULT_LOOKBACK = timedelta(hours=48)
SETTLE = timedelta(minutes=10)  # younger deliveries may not be in the provider's list yet


def as_document(results: list[service.Reconciliation]) -> dict[str, Any]:
    return {
        "data": [
            {
                "companyId": r.company_id,
                "provider": r.provider,
                "since": r.period.since.isoformat(),
                "until": r.period.until.isoformat(),
                "ours": r.ours,
                "held": r.held,
                "error": r.error,
                "requeued": r.requeued,
                "differences": [{**x.as_row(), "id": x.row_id} for x in r.differences],
            }
            for r in results
        ]
    }


@click.command()
@click.option("--company", help="Only this company (default: every enabled integration).")
@click.option("--provider", type=ProviderChoice(), help="Only this provider.")
@click.option("--since", help="Delivered at or after (YYYY-MM-DD or ISO datetime; default: 48 hours ago).")
@click.option("--until", help="Delivered before (a date includes that whole day; default: 10 minutes ago).")
@click.option("--repair", is_flag=True, help="Re-queue the rows a provider lacks (same idempotency key).")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def reconcile(
    company: str | None, provider: str | None, since: str | None, until: str | None, repair: bool, as_json: bool
) -> None:
    """Ask each provider what it holds for the period and compare it with our success rows: missing at the
    provider, held but not in our log, payload differs. Exits 1 on any difference or read-back error."""
    now = datetime.now(UTC)
    end = bound(until, "--until", end=True) or now - SETTLE
    start = bound(since, "--since") or end - DEFAULT_LOOKBACK
    if start >= end:
        raise click.BadParameter("must be before --until", param_hint="--since")
    eng = engine()
    pairs = [
        (i.company_id, i.provider)
        for i in source.integrations(eng)
        if i.provider in provider_names()
        and (company is None or i.company_id == company)
        and (provider is None or i.provider == provider)
    ]
    if not pairs:
        raise click.ClickException("no enabled integration matches --company/--provider")
    factory = ConnectorFactory(eng)
    try:
        results = [service.reconcile(eng, factory, c, p, Period(start, end), repair=repair, now=now) for c, p in pairs]
    finally:
        factory.close()
    if as_json:
        echo_json(as_document(results))
    else:
        _print(results, repair)
    if not all(r.ok for r in results):
        raise SystemExit(1)


def _print(results: list[service.Reconciliation], repair: bool) -> None:
    period = results[0].period
    since, until = (moment.isoformat(timespec="seconds") for moment in (period.since, period.until))
    click.echo(f"period: delivered {since} .. {until}")
    summary = [
        [r.company_id, r.provider, r.ours, r.held, len(r.failing), r.requeued if repair else "-", r.error or "ok"]
        for r in results
    ]
    click.echo(table(["company", "provider", "ours", "held", "differences", "requeued", "read-back"], summary))
    found = [(r, x) for r in results for x in r.differences]
    if found:
        click.echo()
        click.echo(
            table(
                ["company", "provider", "problem", "row id", "event id", "ref", "detail"],
                [
                    [r.company_id, r.provider, x.problem, x.row_id or "-", x.event_id or "-", x.ref, x.detail]
                    for r, x in found
                ],
                max_width=None,
            )
        )
