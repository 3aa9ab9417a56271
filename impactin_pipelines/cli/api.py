"""`impactin api` (serve the HTTP API) and `impactin api-keys create|list|revoke`."""

import click

from impactin_pipelines.cli.common import engine, require_encryption_key
from impactin_pipelines.cli.output import echo_json, table
from impactin_pipelines.settings import ApiSettings
from impactin_pipelines.store import source
from impactin_pipelines.store.api_keys import ApiKey, ApiKeyStore


@click.command("api")
@click.option(
    "--host",
    default=ApiSettings.default("host"),
    show_default=True,
    envvar=ApiSettings.env_var("host"),
    help="Address to bind.",
)
@click.option(
    "--port",
    type=click.IntRange(0, 65535),
    default=ApiSettings.default("port"),
    show_default=True,
    envvar=ApiSettings.env_var("port"),
)
@click.option("--log-level", type=click.Choice(["debug", "info", "warning", "error"]), default="info")
def api(host: str, port: int, log_level: str) -> None:
    """Serve the /v1/impact-in HTTP API (keys: `impactin api-keys create`)."""
    from impactin_pipelines.api import build_app
    from impactin_pipelines.api.server import serve

    try:
        settings = ApiSettings.from_env()
    except ValueError as exc:
        raise click.ClickException(str(exc)) from None
    require_encryption_key()
    eng = engine()
    if not ApiKeyStore(eng).list(include_revoked=False):
        click.echo("warning: no API key exists yet; every request will get 401 (`impactin api-keys create`)", err=True)
    serve(build_app(eng, settings=settings), host, port, log_level=log_level)


@click.group("api-keys")
def api_keys() -> None:
    """Keys for the HTTP API: a company key sees only its company, an admin key sees all."""


@api_keys.command("create")
@click.option("--company", "company_id", help="Scope the key to this company.")
@click.option("--admin", is_flag=True, help="A key that sees and acts on every company.")
@click.option("--label", help="A note to recognise the key by (who or what uses it).")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def create(company_id: str | None, admin: bool, label: str | None, as_json: bool) -> None:
    """Create a key and print it ONCE: only its hash is stored, it cannot be shown again."""
    if admin == (company_id is not None):
        raise click.UsageError("give exactly one of --company C or --admin")
    eng = engine()
    try:
        new = ApiKeyStore(eng).create(company_id=company_id, admin=admin, label=label)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--company" if company_id else "--label") from None
    if company_id is not None and not any(i.company_id == company_id for i in source.integrations(eng)):
        click.echo(f"warning: company {company_id!r} has no enabled integration yet", err=True)
    if as_json:
        echo_json({**_row(new.key), "key": new.token})
        return
    click.echo(new.token)
    click.echo(f"key id {new.key.key_id}, scope {new.key.scope}. Store it now: it is not shown again.", err=True)


@api_keys.command("list")
@click.option("--all", "include_revoked", is_flag=True, help="Include revoked keys.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def list_keys(include_revoked: bool, as_json: bool) -> None:
    """Keys (never their secrets)."""
    keys = ApiKeyStore(engine()).list(include_revoked=include_revoked)
    if as_json:
        echo_json([_row(k) for k in keys])
        return
    headers = ["key id", "scope", "label", "created", "last used", "revoked"]
    rows = [[k.key_id, k.scope, k.label, k.created_at, k.last_used_at, k.revoked_at] for k in keys]
    click.echo(table(headers, rows))


@api_keys.command("revoke")
@click.argument("key_id")
def revoke(key_id: str) -> None:
    """Revoke a key by its id (the part after `imk_`); it stops working at once."""
    if not ApiKeyStore(engine()).revoke(key_id):
        raise click.ClickException(f"no live API key with id {key_id!r}")
    click.echo(f"revoked {key_id}")


def _row(key: ApiKey) -> dict[str, object]:
    return {
        "keyId": key.key_id,
        "scope": key.scope,
        "companyId": key.company_id,
        "admin": key.is_admin,
        "label": key.label,
        "createdAt": key.created_at,
        "lastUsedAt": key.last_used_at,
        "revoked": key.revoked,
        "revokedAt": key.revoked_at,
    }
