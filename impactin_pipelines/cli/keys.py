"""`impactin keys generate|encrypt|rotate`: the Fernet keys that encrypt OAuth tokens and per-company credentials."""

import sys

import click

from impactin_pipelines.cli.common import engine
from impactin_pipelines.cli.output import echo_json
from impactin_pipelines.domain.errors import ConfigError
from impactin_pipelines.security.crypto import KEY_ENV, KeyRing, generate_key, load_keyring
from impactin_pipelines.services.key_rotation import RotationReport, rotate_secrets


@click.group()
def keys() -> None:
    """Encryption keys for secrets at rest (IMPACTIN_ENCRYPTION_KEY)."""


def _keyring() -> KeyRing:
    try:
        return load_keyring()
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from None


@keys.command()
def generate() -> None:
    """Print a new key (for IMPACTIN_ENCRYPTION_KEY, or to put first in it when rotating)."""
    click.echo(generate_key())


@keys.command()
def encrypt() -> None:
    """Encrypt a secret read from standard input (never an argument: shells keep those) for company settings:
    prints {"encrypted": "..."} to store as e.g. settings.client_secret."""
    if sys.stdin.isatty():
        secret = click.prompt("secret", hide_input=True, err=True)
    else:
        secret = sys.stdin.read().rstrip("\r\n")
    if not secret:
        raise click.ClickException("no secret on standard input")
    echo_json({"encrypted": _keyring().encrypt(secret)})


@keys.command()
@click.option("--dry-run", is_flag=True, help="Count what would be re-encrypted; write nothing.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def rotate(dry_run: bool, as_json: bool) -> None:
    """Re-encrypt every stored secret (OAuth tokens, per-company credentials) under the first key of
    IMPACTIN_ENCRYPTION_KEY. Safe while runs go on; idempotent.

    \b
    1. set IMPACTIN_ENCRYPTION_KEY="<new>,<old>" everywhere (new key from `impactin keys generate`)
    2. impactin keys rotate        (exit 0: every per-company secret opens with <new>)
    3. set IMPACTIN_ENCRYPTION_KEY="<new>" everywhere
    """
    keyring = _keyring()
    if keyring.key_count == 1:
        click.echo(
            f'warning: {KEY_ENV} holds one key, so nothing can be moved off an old one (set it to "new,old" to '
            "rotate); checking that every secret opens with it",
            err=True,
        )
    report = rotate_secrets(engine(), keyring, dry_run=dry_run)
    if as_json:
        echo_json(report.as_dict())
    else:
        _print(report)
    if not report.ok:
        raise SystemExit(1)


def _print(report: RotationReport) -> None:
    verb = "would be re-encrypted" if report.dry_run else "re-encrypted"
    for name, tally in (("OAuth tokens", report.tokens), ("per-company secrets", report.secrets)):
        click.echo(
            f"{name}: {tally.rotated} {verb}, {tally.current} already under the current key, "
            f"{len(tally.unreadable)} unreadable"
        )
    for problem in [*report.secrets.unreadable, *report.unparsed_settings]:
        click.echo(f"error: {problem}", err=True)
    for where in report.busy:
        click.echo(f"error: {where} kept changing during the rotation; run it again", err=True)
    for where in report.tokens.unreadable:
        click.echo(f"warning: token {where}", err=True)
    if report.ok and not report.dry_run:
        click.echo(f"every per-company secret opens with the current key: the old key can leave {KEY_ENV}")
    elif not report.ok:
        click.echo(f"keep the old key in {KEY_ENV} until the errors above are fixed", err=True)
