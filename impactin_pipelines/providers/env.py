"""The environment view of every registered provider's settings: variable name -> value.

Each provider declares its variables once, as a pydantic-settings model in its folder; this view, the connectors'
config resolution and the Dagster provider resource are all derived from those models.
"""

import os
from collections.abc import Mapping
from typing import Any

from pydantic import SecretStr
from pydantic_settings import BaseSettings


def _plain(value: Any) -> str | None:
    if isinstance(value, SecretStr):
        value = value.get_secret_value()
    return value or None


class ProviderEnv:
    """The providers' variables, verbatim (e.g. `BENEVITY_API_URL`). Per-company settings override them.

    `ProviderEnv(**variables)` takes the given values only; `ProviderEnv.from_env()` reads the process environment
    through each provider's settings model; `from_env(mapping)` reads that mapping instead.
    """

    def __init__(self, **variables: str | None) -> None:
        from impactin_pipelines.providers import all_variables, specs

        known = all_variables()
        unknown = sorted(set(variables) - set(known))
        if unknown:
            raise TypeError(f"unknown provider variable(s): {', '.join(unknown)}")
        self._models: dict[str, BaseSettings] = {}
        for spec in specs():
            values = {field: variables.get(var) or None for field, var in spec.variables().items()}
            self._models[spec.name] = spec.settings.model_validate(values)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> "ProviderEnv":
        from impactin_pipelines.providers import all_variables, specs

        if env is None or env is os.environ:
            view = cls()
            view._models = {spec.name: spec.settings() for spec in specs()}
            return view
        return cls(**{var: env.get(var) or None for var in all_variables()})

    def settings(self, provider: str) -> BaseSettings:
        """One provider's settings model."""
        return self._models[str(provider)]

    def get(self, name: str) -> str | None:
        """A variable's value (None when unset or not a provider variable)."""
        from impactin_pipelines.providers import all_variables

        found = all_variables().get(name)
        if found is None or found[0].name not in self._models:
            return None
        spec, field = found
        return _plain(getattr(self._models[spec.name], field))

    def variables(self) -> dict[str, str | None]:
        from impactin_pipelines.providers import all_variables

        return {var: self.get(var) for var in all_variables()}

    def __getattr__(self, name: str) -> str | None:
        if name.startswith("_") or not name.isupper():
            raise AttributeError(name)
        from impactin_pipelines.providers import all_variables

        if name not in all_variables():
            raise AttributeError(name)
        return self.get(name)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ProviderEnv) and self.variables() == other.variables()

    def __hash__(self) -> int:
        return hash(tuple(self.variables().items()))

    def __repr__(self) -> str:  # never print secrets, even by accident
        present = [var for var, value in self.variables().items() if value]
        return f"ProviderEnv(set={present})"
