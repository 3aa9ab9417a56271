"""`impactin providers check`."""

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
