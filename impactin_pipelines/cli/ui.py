"""`impactin ui`: the sandbox providers and the Dagster UI together, on the local state, stopped together."""

import os
import signal
import subprocess
import sys
from pathlib import Path

import click

from impactin_pipelines.settings import state_dir

LOCATION = "impactin"  # the code location's name, as in workspace.yaml and deploy/
# `dagster dev` warns that `dg dev` supersedes it (`dg dev` needs a dg project, and a user can do nothing about
# it). A -W message is a literal, case-insensitive prefix; no category, as -W is parsed before dagster is importable.
QUIET_DEV = "ignore:Function `dev_command` is superseded"


def workspace_file(folder: Path) -> Path:
    """A workspace for the installed package (no checkout needed), with the location's name."""
    path = folder / "workspace.yaml"
    path.write_text(
        "load_from:\n"
        "  - python_module:\n"
        "      module_name: impactin_pipelines.definitions\n"
        f"      location_name: {LOCATION}\n"
    )
    return path


def dev_command(workspace: Path, host: str, port: int) -> list[str]:
    return [
        sys.executable,
        "-W",
        QUIET_DEV,
        "-m",
        "dagster",
        "dev",
        "-w",
        str(workspace),
        "--host",
        host,
        "--port",
        str(port),
    ]


@click.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Address of the Dagster UI.")
@click.option("--port", type=int, default=3000, show_default=True, help="Port of the Dagster UI.")
@click.option("--sandbox-port", type=int, default=0, help="Port of the sandbox providers (default: any free one).")
@click.option("--no-sandbox", is_flag=True, help="Use the provider variables of this environment, no sandbox.")
def ui(host: str, port: int, sandbox_port: int, no_sandbox: bool) -> None:
    """Start the Dagster UI (webserver and daemon) on the local state (.impactin, as `impactin demo` and
    `impactin run` use it) with the sandbox providers serving it, so runs launched from the UI deliver. Ctrl-C
    stops both."""
    from impactin_pipelines.defs.event_log import use_batched_dagster_events
    from impactin_pipelines.defs.orchestration.runner import ensure_dagster_home
    from impactin_pipelines.sandbox.server import SandboxServer

    home = ensure_dagster_home()
    env = dict(os.environ)  # DAGSTER_HOME included
    # The UI runs from DAGSTER_HOME: pin the state folder (and so the default warehouse) to this one.
    env["IMPACTIN_STATE_DIR"] = str(state_dir())
    use_batched_dagster_events(env)  # the webserver and the daemon create runs: they write the planned events
    sandbox = None if no_sandbox else SandboxServer(port=sandbox_port).start()
    if sandbox is not None:
        env.update(sandbox.env())
        click.echo(f"sandbox providers on {sandbox.url}")
    # Started in the background by a non-interactive shell, this process (and so its child) would ignore SIGINT:
    # take it back, so Ctrl-C, `kill -INT` and the SIGTERM below stop dagster dev, which stops its own children.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    # Run from DAGSTER_HOME: a dagster.yaml in the working folder that is not DAGSTER_HOME's only earns a warning.
    child = subprocess.Popen(dev_command(workspace_file(home), host, port), cwd=home, env=env)  # noqa: S603 (our own argv)
    click.echo(f"Dagster UI on http://{host}:{port} (DAGSTER_HOME={home}); Ctrl-C stops it and the sandbox")
    # `kill PID` stops it like Ctrl-C: dagster dev stops its webserver and daemon on SIGINT.
    signal.signal(signal.SIGTERM, lambda *_: child.send_signal(signal.SIGINT))
    try:
        code = child.wait()
    except KeyboardInterrupt:  # the terminal sent SIGINT to the child too; give it time to stop its own children
        code = _stop(child)
    finally:
        if sandbox is not None:
            sandbox.stop()
    if code not in (0, -signal.SIGINT, -signal.SIGTERM, 130):
        raise SystemExit(code)


def _stop(child: "subprocess.Popen[bytes]") -> int:
    try:
        try:
            return child.wait(timeout=2)
        except subprocess.TimeoutExpired:  # the SIGINT came to this process only (not from a terminal)
            child.send_signal(signal.SIGINT)
        return child.wait(timeout=30)
    except subprocess.TimeoutExpired:
        child.terminate()
        try:
            return child.wait(timeout=10)
        except subprocess.TimeoutExpired:
            child.kill()
            return child.wait()
    except KeyboardInterrupt:  # a second Ctrl-C: stop now
        child.kill()
        return child.wait()
