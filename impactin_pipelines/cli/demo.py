"""`impactin demo`: fresh local state, sample data, the sandbox providers, one delivery run, the result."""

import logging
import os
import shutil
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click
from sqlalchemy.engine import Engine

from impactin_pipelines.cli.output import table
from impactin_pipelines.cli.run import execute, print_summary
from impactin_pipelines.settings import state_dir
from impactin_pipelines.store import migrations
from impactin_pipelines.store.engine import make_engine

if TYPE_CHECKING:
    from impactin_pipelines.sandbox.server import SandboxServer

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
    from impactin_pipelines.api import build_app
    from impactin_pipelines.api.routes import webhooks
    from impactin_pipelines.api.server import BackgroundServer
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
        with BackgroundServer(build_app(engine)) as api:  # receives the providers' signed confirmations
            for name, fake in sandbox.providers.items():
                fake.configure({"callbacks": {"url": f"{api.url}{webhooks.PATH_PREFIX}{name}"}})
            summary = execute(engine, companies=[], providers=[], trigger="demo", log_level="ERROR")
            print_summary(summary)
            _wait_for_callbacks(sandbox)
        accepted = [
            [name, len(p.snapshot()["accepted"]), len(p.snapshot()["requests"]), _confirmed(p.snapshot())]
            for name, p in sandbox.providers.items()
        ]
        checked = _reconcile_all(engine)
    click.echo()
    click.echo(table(["sandbox provider", "accepted events", "requests received", "confirmations"], accepted))
    click.echo()
    click.echo(table(["company", "provider", "delivered", "held (whole list)", "differences", "read-back"], checked))
    impactin = command_path()
    click.echo(
        f"\nnext: `{impactin} deliveries list --status failed` shows the quarantined events;\n"
        f"      `{impactin} ui` (`make ui` in a checkout) opens the Dagster UI on this state, sandbox included."
    )
    if not summary["ok"]:
        raise SystemExit(1)


def _confirmed(snapshot: dict[str, Any]) -> int:
    return sum(1 for c in snapshot["callbacks"] if c["status"] == 200)


def _wait_for_callbacks(sandbox: "SandboxServer", timeout_s: float = 10.0) -> None:
    """The fakes send their callbacks from timers: give them until each accepted event has had its answer."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        snaps = [p.snapshot() for p in sandbox.providers.values()]
        if all(len(s["callbacks"]) >= len(s["accepted"]) for s in snaps):
            return
        time.sleep(0.05)


def _reconcile_all(engine: Engine) -> list[list[Any]]:
    """Ask every sandbox provider what it holds for the demo's deliveries (services/reconcile)."""
    from impactin_pipelines.connectors.readback import Period
    from impactin_pipelines.connectors.registry import ConnectorFactory
    from impactin_pipelines.providers import provider_names
    from impactin_pipelines.services.reconcile import reconcile
    from impactin_pipelines.store.source import integrations

    now = datetime.now(UTC)
    period = Period(now - timedelta(hours=1), now + timedelta(minutes=1))
    factory = ConnectorFactory(engine)
    try:
        found = [
            reconcile(engine, factory, i.company_id, i.provider, period)
            for i in integrations(engine)
            if i.provider in provider_names()
        ]
    finally:
        factory.close()
    return [[r.company_id, r.provider, r.ours, r.held, len(r.failing), r.error or "ok"] for r in found]
