"""`impactin providers check`."""

import click

from impactin_pipelines.cli.common import engine
from impactin_pipelines.cli.output import echo_json, table
from impactin_pipelines.domain.providers import PROVIDERS
from impactin_pipelines.services.provider_checks import check_providers


@click.group()
def providers() -> None:
    """The CSR providers as configured for each company."""


@providers.command("check")
@click.option("--company", "companies", multiple=True, help="Only this company (repeatable). Default: all.")
@click.option("--provider", "provider_names", multiple=True, type=click.Choice(PROVIDERS), help="Only this provider.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def check(companies: tuple[str, ...], provider_names: tuple[str, ...], as_json: bool) -> None:
    """Can each enabled integration authenticate with its provider? Sends no impact data.

    Exits 1 when any configuration fails, so monitoring can run it as is.
    """
    results = check_providers(engine(), company_ids=companies or None, providers=provider_names or None)
    if as_json:
        echo_json(
            {
                "ok": all(r.ok for r in results),
                "data": [
                    {"company": r.company_id, "provider": r.provider, "ok": r.ok, "detail": r.detail, **r.extra}
                    for r in results
                ],
            }
        )
    elif not results:
        click.echo("no enabled integration matches the selection")
    else:
        rows = [[r.company_id, r.provider, "ok" if r.ok else "FAILED", r.detail] for r in results]
        click.echo(table(["company", "provider", "auth", "detail"], rows, max_width=100))
    if not all(r.ok for r in results):
        raise SystemExit(1)
