"""`impactin providers check|status|pause|resume`."""

import click

from impactin_pipelines.cli.common import ProviderChoice, engine
from impactin_pipelines.cli.output import echo_json, table
from impactin_pipelines.services.provider_checks import check_providers


@click.group()
def providers() -> None:
    """The CSR providers as configured for each company."""


@providers.command("check")
@click.option("--company", "companies", multiple=True, help="Only this company (repeatable). Default: all.")
@click.option("--provider", "provider_names", multiple=True, type=ProviderChoice(), help="Only this provider.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def check(companies: tuple[str, ...], provider_names: tuple[str, ...], as_json: bool) -> None:
    """Can each enabled integration authenticate with its provider? Sends no impact data.

    Each integration is `ok` (authentication proven), `not proven` (the provider answered, but in a way that cannot
    tell good credentials from bad ones) or `failed`. Exits 1 unless every one is ok, so monitoring can run it as is.
    """
    results = check_providers(engine(), company_ids=companies or None, providers=provider_names or None)
    if as_json:
        echo_json(
            {
                "ok": all(r.ok for r in results),
                "data": [
                    {
                        "company": r.company_id,
                        "provider": r.provider,
                        "ok": r.ok,
                        "auth": r.verdict,
                        "detail": r.detail,
                        **r.extra,
                    }
                    for r in results
                ],
            }
        )
    elif not results:
        click.echo("no enabled integration matches the selection")
    else:
        # the detail is the reason: printed whole, on one line
        rows = [
            [r.company_id, r.provider, r.verdict if r.ok else r.verdict.upper(), " ".join(r.detail.split())]
            for r in results
        ]
        click.echo(table(["company", "provider", "auth", "detail"], rows, max_width=None))
    if not all(r.ok for r in results):
        raise SystemExit(1)


def _circuit_rows(provider_names: tuple[str, ...]) -> list[dict[str, object]]:
    from impactin_pipelines.connectors.circuit import describe, provider_state
    from impactin_pipelines.providers import provider_names as registered
    from impactin_pipelines.store.circuits import snapshot
    from impactin_pipelines.store.outbox import utcnow

    names = provider_names or registered()
    stored = snapshot(engine(), names)
    now = utcnow()
    rows: list[dict[str, object]] = []
    for name in names:
        mine = [x for x in stored if x.provider == name]
        if not mine:
            rows.append({"provider": name, "scope": "-", "state": "closed", "company": None, "detail": "closed"})
        for x in mine:
            rows.append(
                {
                    "provider": name,
                    "scope": x.scope,
                    "state": x.state.value,
                    "provider_state": provider_state(mine, name).value,
                    "failures": x.failures,
                    "trips": x.trips,
                    "open_until": x.open_until,
                    "company": x.company_id,
                    "detail": describe(x, now),
                }
            )
    return rows


@providers.command("status")
@click.argument("provider_names", nargs=-1, type=ProviderChoice())
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def status(provider_names: tuple[str, ...], as_json: bool) -> None:
    """Each provider's circuit breakers (one per credential) and operators' pauses.

    closed: sending; open: a run of transient failures stopped sending until the cool-down ends; half_open: one
    probe request decides; paused: stopped by an operator until `impactin providers resume`. Exits 0 in every state:
    this is a report.
    """
    rows = _circuit_rows(provider_names)
    if as_json:
        echo_json({"ok": True, "data": rows})
        return
    shown = [[r["provider"], r["scope"], r["state"], r["company"] or "", r["detail"]] for r in rows]
    click.echo(table(["provider", "scope", "state", "company", "detail"], shown, max_width=None))


@providers.command("pause")
@click.argument("provider_name", type=ProviderChoice())
@click.option("--company", default=None, help="Only this company's deliveries to the provider. Default: all.")
@click.option("--reason", default=None, help="A note shown by `providers status` (e.g. the provider's ticket).")
def pause(provider_name: str, company: str | None, reason: str | None) -> None:
    """Stop sending to a provider (a maintenance window) until resumed. Runs hold its rows: nothing is sent and no
    attempt is spent, so they go out on the first run after `impactin providers resume`."""
    from impactin_pipelines.store.circuits import CircuitStore

    CircuitStore(engine()).pause(provider_name, company, reason=reason)
    click.echo(f"{provider_name}{f' for {company}' if company else ''}: paused until `impactin providers resume`")


@providers.command("resume")
@click.argument("provider_name", type=ProviderChoice())
@click.option("--company", default=None, help="End the pause of this company only (as paused).")
def resume(provider_name: str, company: str | None) -> None:
    """End an operator's pause: the next run sends the held rows. Exits 1 when there was no such pause."""
    from impactin_pipelines.store.circuits import CircuitStore

    whom = f"{provider_name}{f' for {company}' if company else ''}"
    if not CircuitStore(engine()).resume(provider_name, company):
        raise click.ClickException(f"{whom} is not paused (see `impactin providers status`)")
    click.echo(f"{whom}: resumed")
