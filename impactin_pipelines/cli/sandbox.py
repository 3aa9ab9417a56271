"""`impactin sandbox`: the fake providers on loopback, in the foreground."""

import shlex
import signal
import sys
import threading
from types import FrameType

import click

from impactin_pipelines.sandbox.server import SandboxServer

DEFAULT_PORT = 8765


def _stop_on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt  # the same clean stop as Ctrl-C


@click.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Loopback address to bind.")
@click.option("--port", type=int, default=DEFAULT_PORT, show_default=True)
@click.option("--env", "print_env", is_flag=True, help="Only print the environment for this address, then exit.")
@click.option(
    "--webhooks",
    metavar="URL",
    help="Send signed delivery callbacks to URL/<provider> (e.g. http://127.0.0.1:3007/v1/impact-in/webhooks).",
)
def sandbox(host: str, port: int, print_env: bool, webhooks: str | None) -> None:
    """Serve faithful fakes of Benevity, Goodera and Workday, and print the environment that points at them."""
    if print_env:
        for name, value in SandboxServer.env_for(f"http://{host}:{port}").items():
            click.echo(f"export {name}={shlex.quote(value)}")
        return
    server = SandboxServer(host, port)
    if webhooks:
        for name, fake in server.providers.items():
            fake.configure({"callbacks": {"url": f"{webhooks.rstrip('/')}/{name}"}})
    server.start()  # serving in its own thread: the main thread only waits for a signal to stop
    try:
        # SIGTERM and SIGINT stop it whatever it inherited: as PID 1 of a container, or started in the background
        # or by a parent that ignores them, the default action would leave it running. Installed before "ready", so
        # whoever waits for that line and then stops the sandbox is never ignored.
        signal.signal(signal.SIGTERM, _stop_on_sigterm)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        click.echo(f"sandbox listening on {server.url}; faults: POST {server.url}/_sandbox/<provider>/faults", err=True)
        for name, value in server.env().items():
            click.echo(f"export {name}={shlex.quote(value)}")
        click.echo(f"# sandbox ready at {server.url}")
        sys.stdout.flush()
        threading.Event().wait()  # until Ctrl-C or SIGTERM
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()
