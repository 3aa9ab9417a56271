"""The `impactin` command.

Subcommands are imported when they run, so `impactin db upgrade` does not pay for zeep, Dagster or the API
server; `impactin --help` reads each command's one-line help from the table below without importing any of them.
"""

import importlib
import logging
import warnings

import click

# name -> (module:attribute, one-line help shown by `impactin --help`)
COMMANDS: dict[str, tuple[str, str]] = {
    "db": ("impactin_pipelines.cli.db:db", "Warehouse schema: apply migrations, show the version."),
    "run": ("impactin_pipelines.cli.run:run", "Extract and deliver now, through Dagster, and print the result."),
    "demo": ("impactin_pipelines.cli.demo:demo", "Fresh embedded state, sample events, sandbox providers, one run."),
    "sandbox": ("impactin_pipelines.cli.sandbox:sandbox", "Serve fakes of Benevity, Goodera and Workday on loopback."),
    "deliveries": ("impactin_pipelines.cli.deliveries:deliveries", "List and show rows of the delivery log."),
    "stats": ("impactin_pipelines.cli.stats:stats", "Delivery statistics by provider, status and error kind."),
    "replay": ("impactin_pipelines.cli.replay:replay", "Send failed or chosen deliveries again, same idempotency key."),
    "ui": ("impactin_pipelines.cli.ui:ui", "The Dagster UI and the sandbox providers on the local state."),
    "api": ("impactin_pipelines.cli.api:api", "Serve the /v1/impact-in HTTP API."),
    "api-keys": ("impactin_pipelines.cli.api:api_keys", "Create, list and revoke per-company API keys."),
    "providers": ("impactin_pipelines.cli.providers:providers", "Provider connectivity, circuit breakers, pauses."),
    "keys": ("impactin_pipelines.cli.keys:keys", "Encryption keys: generate, encrypt a secret, rotate."),
    "reconcile": ("impactin_pipelines.cli.reconcile:reconcile", "Compare what providers hold with our deliveries."),
}


class LazyGroup(click.Group):
    """A group whose subcommands live in `COMMANDS` and are imported on first use."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in COMMANDS:
            return None
        module_name, attribute = COMMANDS[cmd_name][0].split(":")
        command = getattr(importlib.import_module(module_name), attribute)
        assert isinstance(command, click.Command), f"{module_name}:{attribute} is not a click command"
        return command

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        with formatter.section("Commands"):
            formatter.write_dl([(name, COMMANDS[name][1]) for name in self.list_commands(ctx)])


def configure_logging(level: int) -> None:
    """One stderr handler; its level (not the loggers') decides what the console shows."""
    from impactin_pipelines.observability import console_handler

    root = logging.getLogger()
    if not root.handlers:
        root.addHandler(console_handler())  # IMPACTIN_LOG_FORMAT=json: one JSON object per line
    for handler in root.handlers:
        handler.setLevel(level)
    root.setLevel(min(root.level or logging.WARNING, level))


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
def cli() -> None:
    """Deliver TEEI impact events to Benevity, Goodera and Workday, and see what happened."""
    warnings.filterwarnings("ignore", module="dagster")
    try:
        configure_logging(logging.WARNING)
    except ValueError as exc:  # a bad IMPACTIN_LOG_FORMAT
        raise click.ClickException(str(exc)) from None


def main() -> None:
    cli()
