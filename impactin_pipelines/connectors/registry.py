"""Builds one connector per (company, provider) for a run, sharing HTTP pools per provider.

Each provider's connector factory comes from its registered `ProviderSpec`.
"""

import threading
from collections.abc import Callable, Iterable
from functools import cached_property
from typing import Any

import requests
from sqlalchemy.engine import Engine

from impactin_pipelines.connectors.base import Connector, ConnectorContext
from impactin_pipelines.connectors.config import ConfigResolver, parse_settings
from impactin_pipelines.connectors.http import new_session
from impactin_pipelines.domain.errors import ConfigError
from impactin_pipelines.domain.providers import Provider
from impactin_pipelines.providers import REGISTRY
from impactin_pipelines.providers.env import ProviderEnv
from impactin_pipelines.security.crypto import KeyRing, load_keyring
from impactin_pipelines.settings import DeliverySettings
from impactin_pipelines.store import source

Builder = Callable[[ConfigResolver, ConnectorContext], Connector]


class ConnectorFactory:
    def __init__(
        self,
        engine: Engine,
        *,
        settings: DeliverySettings | None = None,
        env: ProviderEnv | None = None,
        keyring: Callable[[], KeyRing] | None = None,
    ) -> None:
        self.engine = engine
        self.settings = settings or DeliverySettings.from_env()
        self.env = env or ProviderEnv.from_env()
        self._keyring_loader = keyring or load_keyring
        self._lock = threading.Lock()
        self._sessions: dict[Provider, requests.Session] = {}
        self._connectors: dict[tuple[str, Provider], Connector | ConfigError] = {}
        self._preloaded: dict[tuple[str, Provider], Any] = {}  # stored settings read ahead (None: no integration)

    @cached_property
    def _keyring(self) -> KeyRing:
        return self._keyring_loader()

    def keyring(self) -> KeyRing:
        return self._keyring

    def connector(self, company_id: str, provider: Provider, settings_raw: Any = None) -> Connector:
        """The company's connector, built once per factory. A config problem raises ConfigError every time."""
        key = (company_id, provider)
        with self._lock:
            found = self._connectors.get(key)
            if found is None:
                found = self._build(company_id, provider, settings_raw)
                self._connectors[key] = found
        if isinstance(found, ConfigError):
            raise found
        return found

    def preload(self, provider: Provider, company_ids: Iterable[str]) -> None:
        """Read the stored settings of the companies whose connector is not built yet, in one query, so that
        building each of them reads nothing more. A run calls it with the companies of each claim batch: one
        query per batch instead of one per company, on the thread that keeps the send threads fed."""
        with self._lock:
            known = self._connectors.keys() | self._preloaded.keys()
            wanted = sorted({c for c in company_ids if (c, provider) not in known})
        if not wanted:
            return
        found = source.integration_settings(self.engine, provider.value, wanted)
        with self._lock:
            for company_id in wanted:
                self._preloaded.setdefault((company_id, provider), found.get(company_id))

    def _build(self, company_id: str, provider: Provider, settings_raw: Any) -> Connector | ConfigError:
        try:
            if settings_raw is None and (company_id, provider) in self._preloaded:
                settings_raw = self._preloaded.pop((company_id, provider))
            elif settings_raw is None:
                integration = source.integration(self.engine, company_id, provider.value)
                settings_raw = integration.settings if integration else None
            resolver = ConfigResolver(
                company_id=company_id,
                provider=provider.value,
                settings=parse_settings(settings_raw, company_id=company_id, provider=provider.value),
                env=self.env,
                keyring=self.keyring,
            )
            spec = REGISTRY.get(provider)
            if spec is None:
                return ConfigError(f"no connector is registered for provider {provider.value!r}")
            session = self._sessions.get(provider)
            if session is None:
                session = self._sessions[provider] = new_session(self.settings.concurrency)
            ctx = ConnectorContext(
                company_id=company_id,
                engine=self.engine,
                settings=self.settings,
                session=session,
                keyring=self.keyring,
            )
            return spec.connector(resolver, ctx)
        except ConfigError as exc:
            return exc

    def close(self) -> None:
        with self._lock:
            for connector in self._connectors.values():
                if not isinstance(connector, ConfigError):
                    connector.close()
            for session in self._sessions.values():
                session.close()
            self._connectors.clear()
            self._preloaded.clear()
            self._sessions.clear()
