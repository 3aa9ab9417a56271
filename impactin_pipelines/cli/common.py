"""Shared CLI plumbing: the engine, date options, friendly errors."""

from collections.abc import Sequence
from datetime import datetime
from typing import Any

import click
from sqlalchemy.engine import Engine

from impactin_pipelines.domain.errors import ConfigError
from impactin_pipelines.domain.periods import parse_bound
from impactin_pipelines.security.crypto import load_keyring
from impactin_pipelines.settings import warehouse_url
from impactin_pipelines.store import migrations
from impactin_pipelines.store.engine import make_engine


class ProviderChoice(click.Choice):
    """A registered provider's name; the choices are read from the registry when the option is parsed."""

    def __init__(self) -> None:
        super().__init__((), case_sensitive=True)

    @property  # type: ignore[override]
    def choices(self) -> Sequence[str]:
        from impactin_pipelines.providers import provider_names

        return provider_names()

    @choices.setter
    def choices(self, value: Any) -> None:  # click.Choice assigns its own list in __init__
        return


def engine(*, require_schema: bool = True) -> Engine:
    eng = make_engine(warehouse_url())
    if require_schema:
        have, want = migrations.current_version(eng), migrations.latest_version()
        if have < want:
            raise click.ClickException(
                f"the warehouse schema is at version {have}, this code needs {want}: run `impactin db upgrade`"
            )
    return eng


def require_encryption_key() -> None:
    """Refuse to start a long-lived command on an unusable IMPACTIN_ENCRYPTION_KEY (malformed, empty, or missing
    for a non-embedded warehouse): started, it would fail every row that needs a secret at rest (OAuth tokens,
    encrypted company credentials) as `config`, one by one. The message names the variable, never the key."""
    try:
        load_keyring()
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from None


def bound(value: str | None, name: str, *, end: bool = False) -> datetime | None:
    if value is None:
        return None
    try:
        return parse_bound(value, name, end=end)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint=name) from None
