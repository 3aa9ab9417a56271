"""Resolve one integration's configuration: per-company settings first, then the providers' environment variables.

Per-company secrets live in `company_integrations.settings` only encrypted (`{"encrypted": "<fernet token>"}`);
a plain-text secret there is refused rather than used.
"""

import json
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from impactin_pipelines.domain.errors import ConfigError

if TYPE_CHECKING:  # the providers import this module while they register
    from impactin_pipelines.providers.env import ProviderEnv
from impactin_pipelines.security.crypto import DecryptionError, KeyRing


def parse_settings(raw: Any, *, company_id: str, provider: str) -> dict[str, Any]:
    """`company_integrations.settings` as a dict; broken JSON is a config error for that integration only."""
    if raw is None or raw == "":
        return {}
    if isinstance(raw, str | bytes):
        try:
            raw = json.loads(raw)
        except ValueError as exc:
            raise ConfigError(
                f"company_integrations.settings for {company_id}/{provider} is not valid JSON ({exc})"
            ) from None
    if raw is None:
        return {}
    if not isinstance(raw, Mapping):
        raise ConfigError(f"company_integrations.settings for {company_id}/{provider} must be a JSON object")
    return dict(raw)


class ConfigResolver:
    """Collects every missing name, so one error tells the operator everything to fix."""

    def __init__(
        self,
        *,
        company_id: str,
        provider: str,
        settings: Mapping[str, Any],
        env: "ProviderEnv",
        keyring: Callable[[], KeyRing],
    ) -> None:
        self.company_id = company_id
        self.provider = provider
        self.settings = settings
        self.env = env
        self._keyring = keyring
        self.missing: list[str] = []
        self.secrets: list[str] = []

    def from_settings(self, *keys: str) -> bool:
        """Whether the company's settings give any of these keys (otherwise they come from the environment)."""
        return any(self.settings.get(key) not in (None, "") for key in keys)

    def value(self, key: str, env_var: str, *, default: str | None = None, required: bool = True) -> str | None:
        raw = self.settings.get(key)
        if raw is not None and not isinstance(raw, str | int | float):
            raise ConfigError(f"settings.{key} for {self.company_id}/{self.provider} must be a string")
        value = str(raw) if raw not in (None, "") else (self.env.get(env_var) or default)
        if value is None and required:
            self.missing.append(env_var)
        return value

    def secret(self, key: str, env_var: str, *, required: bool = True) -> str | None:
        raw = self.settings.get(key)
        if raw is None:
            value = self.env.get(env_var)
        elif isinstance(raw, Mapping) and isinstance(raw.get("encrypted"), str):
            try:
                value = self._keyring().decrypt(raw["encrypted"])
            except DecryptionError as exc:
                raise ConfigError(f"settings.{key} for {self.company_id}/{self.provider}: {exc}") from None
        else:
            raise ConfigError(
                f"settings.{key} for {self.company_id}/{self.provider} must be stored encrypted "
                '({"encrypted": "..."}); plain-text secrets are refused'
            )
        if value:
            self.secrets.append(value)
        elif required:
            self.missing.append(env_var)
        return value

    def done(self) -> None:
        if self.missing:
            names = ", ".join(dict.fromkeys(self.missing))
            raise ConfigError(
                f"{self.provider} is not configured for company {self.company_id}: missing {names} "
                f"(set the environment variable or the company's settings)",
                missing=tuple(dict.fromkeys(self.missing)),
            )
