"""The `impactin` command."""

import logging
import warnings

import click

from impactin_pipelines.cli.api import api, api_keys
from impactin_pipelines.cli.db import db
from impactin_pipelines.cli.deliveries import deliveries
from impactin_pipelines.cli.demo import demo
from impactin_pipelines.cli.keys import keys
from impactin_pipelines.cli.providers import providers
from impactin_pipelines.cli.replay import replay
from impactin_pipelines.cli.run import run
from impactin_pipelines.cli.sandbox import sandbox
from impactin_pipelines.cli.stats import stats
from impactin_pipelines.observability import console_handler


def configure_logging(level: int) -> None:
    """One stderr handler; its level (not the loggers') decides what the console shows."""
    root = logging.getLogger()
    if not root.handlers:
        root.addHandler(console_handler())  # IMPACTIN_LOG_FORMAT=json: one JSON object per line
    for handler in root.handlers:
        handler.setLevel(level)
    root.setLevel(min(root.level or logging.WARNING, level))


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def cli() -> None:
    """Deliver TEEI impact events to Benevity, Goodera and Workday, and see what happened."""
    warnings.filterwarnings("ignore", module="dagster")
    try:
        configure_logging(logging.WARNING)
    except ValueError as exc:  # a bad IMPACTIN_LOG_FORMAT
        raise click.ClickException(str(exc)) from None


for command in (db, run, demo, sandbox, deliveries, stats, replay, api, api_keys, providers, keys):
    cli.add_command(command)


def main() -> None:
    cli()
