"""`impactin demo`: fresh local state, sample data, the sandbox providers, one delivery run, the result."""

import logging
import os
import shutil
import sys
from pathlib import Path

import click

from impactin_pipelines.cli.output import table
from impactin_pipelines.cli.run import execute, print_summary
from impactin_pipelines.settings import state_dir
from impactin_pipelines.store import migrations
from impactin_pipelines.store.engine import make_engine

# Files of the embedded default that the demo owns and recreates each time.
DEMO_STATE = ("warehouse.db", "warehouse.db-wal", "warehouse.db-shm", "dagster_home", "ratelimit.db")


def command_path() -> str:
    """How to type `impactin` from here without an activated virtual environment: the script next to this
    interpreter, relative to the working folder when inside it (`.venv/bin/impactin` from a checkout)."""
    script = Path(sys.executable).parent / "impactin"
    if not script.exists():
        return "impactin"
    try:
        return str(script.relative_to(Path.cwd()))
    except ValueError:
        return str(script)


@click.command()
@click.option("--events-per-company", type=click.IntRange(1, 10_000), default=12, show_default=True)
def demo(events_per_company: int) -> None:
    """Create fresh embedded state (SQLite warehouse, Dagster home), seed sample events for several companies,
    start the sandbox providers, run the delivery job and show what was delivered. Safe to run again."""
    from impactin_pipelines.cli import configure_logging
    from impactin_pipelines.sandbox.demo_data import seed
    from impactin_pipelines.sandbox.server import SandboxServer

    configure_logging(logging.ERROR)  # retries are part of the show; the summary tells the story
    state = state_dir()
    if os.environ.pop("IMPACTIN_WAREHOUSE_URL", None):
        click.echo("note: the demo always uses the embedded SQLite warehouse; IMPACTIN_WAREHOUSE_URL is ignored")
    os.environ.pop("DAGSTER_HOME", None)
    for name in DEMO_STATE:
        path = state / name
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()
    engine = make_engine(f"sqlite:///{state / 'warehouse.db'}")
    migrations.upgrade(engine)
    total = seed(engine, per_company=events_per_company)
    click.echo(f"state in {state}: seeded {total} events (2 of them malformed on purpose)")

    with SandboxServer() as sandbox:
        os.environ.update(sandbox.env())
        # A flaky moment at Benevity: the first requests get 503, retries absorb it.
        sandbox.providers["benevity"].configure({"fail_next": {"status": 503, "count": 2}, "latency_ms": 5})
        # Goodera's real quota (100/minute, spread evenly) would make the demo wait ~15 s for 24 requests.
        sandbox.providers["goodera"].configure({"rate_limit": {"limit": 50, "window_s": 1}})
        os.environ["GOODERA_RATE_LIMIT"] = "40/1s"
        click.echo(f"sandbox providers on {sandbox.url}; running the delivery job through Dagster ...\n")
        summary = execute(engine, companies=[], providers=[], trigger="demo", log_level="ERROR")
        print_summary(summary)
        accepted = [
            [name, len(p.snapshot()["accepted"]), len(p.snapshot()["requests"])]
            for name, p in sandbox.providers.items()
        ]
    click.echo()
    click.echo(table(["sandbox provider", "accepted events", "requests received"], accepted))
    impactin = command_path()
    click.echo(
        f"\nnext: `{impactin} deliveries list --status failed` shows the quarantined events;\n"
        f"      `{impactin} ui` (`make ui` in a checkout) opens the Dagster UI on this state, sandbox included."
    )
    if not summary["ok"]:
        raise SystemExit(1)
