"""`impactin db upgrade|status`."""

import click

from impactin_pipelines.cli.common import engine
from impactin_pipelines.cli.output import echo_json
from impactin_pipelines.store import migrations


@click.group()
def db() -> None:
    """The warehouse schema."""


@db.command()
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def upgrade(as_json: bool) -> None:
    """Apply the SQL migrations in sql/ that are not applied yet (idempotent)."""
    eng = engine(require_schema=False)
    applied = migrations.upgrade(eng)
    version = migrations.current_version(eng)
    if as_json:
        echo_json({"applied": [f"{m.version:04d}_{m.name}" for m in applied], "version": version})
        return
    for m in applied:
        click.echo(f"applied {m.version:04d}_{m.name}")
    click.echo(f"schema at version {version}" + ("" if applied else " (nothing to do)"))


@db.command()
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def status(as_json: bool) -> None:
    """Show the applied and the available schema versions."""
    eng = engine(require_schema=False)
    have = migrations.current_version(eng)
    applied = migrations.applied_versions(eng)
    pending = [f"{m.version:04d}_{m.name}" for m in migrations.available() if m.version not in applied]
    if as_json:
        echo_json({"version": have, "pending": pending})
    else:
        click.echo(f"schema at version {have}; pending: {', '.join(pending) or 'none'}")
