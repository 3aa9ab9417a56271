"""The API on a real socket (uvicorn on a background thread, ephemeral port) over the `engine` fixture's
warehouse (SQLite and PostgreSQL), delivering to the sandbox over loopback. Clients are plain `requests`."""

from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import requests
from sqlalchemy.engine import Engine

from impactin_pipelines.api import build_app
from impactin_pipelines.api.server import BackgroundServer
from impactin_pipelines.connectors.registry import ConnectorFactory
from impactin_pipelines.domain.providers import Provider
from impactin_pipelines.sandbox.server import SandboxServer
from impactin_pipelines.services.extract import outbox_row
from impactin_pipelines.settings import ApiSettings
from impactin_pipelines.store.api_keys import ApiKeyStore
from impactin_pipelines.store.outbox import Outbox
from tests.support import event, factory_for

BASE = "/v1/impact-in"
T0 = datetime(2025, 11, 1, 12, 0, tzinfo=UTC)


@dataclass
class Api:
    url: str
    engine: Engine
    sandbox: SandboxServer
    factory: ConnectorFactory
    keys: dict[str, str]  # "admin", "acme", "globex" -> bearer token
    http: requests.Session = field(default_factory=requests.Session)

    def call(self, method: str, path: str, *, key: str | None = "admin", **kwargs: Any) -> requests.Response:
        headers = dict(kwargs.pop("headers", {}))
        if key is not None:
            headers.setdefault("Authorization", f"Bearer {self.keys.get(key, key)}")
        response = self.http.request(method, self.url + path, headers=headers, timeout=30, **kwargs)
        assert "Traceback" not in response.text and 'File "' not in response.text, response.text
        return response

    def get(self, path: str, key: str | None = "admin", **params: Any) -> requests.Response:
        return self.call("GET", path, key=key, params=params or None)

    def post(self, path: str, body: Any = None, key: str | None = "admin", **kwargs: Any) -> requests.Response:
        return self.call("POST", path, key=key, json=body, **kwargs)

    def sent(self, provider: str = "benevity") -> list[dict[str, Any]]:
        return self.sandbox.providers[provider].snapshot()["requests"]


def start_api(engine: Engine, factory: ConnectorFactory, settings: ApiSettings) -> BackgroundServer:
    return BackgroundServer(build_app(engine, factory=factory, settings=settings)).start()


@pytest.fixture(scope="module")
def shared_sandbox() -> Iterator[SandboxServer]:
    with SandboxServer() as server:
        yield server


@pytest.fixture
def sandbox(shared_sandbox: SandboxServer) -> SandboxServer:
    """One sandbox per module (stopping one costs half a second), reset for every test."""
    for provider in shared_sandbox.providers.values():
        provider.reset()
    return shared_sandbox


@pytest.fixture
def api_settings() -> ApiSettings:
    return ApiSettings(rate_limit_per_minute=100_000)


@pytest.fixture
def api(engine: Engine, sandbox: SandboxServer, api_settings: ApiSettings) -> Iterator[Api]:
    factory = factory_for(engine, sandbox)
    store = ApiKeyStore(engine)
    keys = {
        "admin": store.create(admin=True, label="tests").token,
        "acme": store.create(company_id="acme").token,
        "globex": store.create(company_id="globex").token,
    }
    server = start_api(engine, factory, api_settings)
    client = Api(server.url, engine, sandbox, factory, keys)
    try:
        yield client
    finally:
        client.http.close()
        server.stop()
        factory.close()


def seed(
    engine: Engine,
    company: str,
    n: int,
    *,
    provider: str = "benevity",
    start: datetime = T0,
    step: timedelta = timedelta(hours=1),
    prefix: str = "evt",
) -> list[str]:
    """n pending outbox rows with real payloads, created `step` apart from `start`; returns their event ids."""
    ids = []
    for i in range(n):
        raw = event(f"{prefix}_{company}_{provider}_{i:03d}", company)
        Outbox(engine).add([outbox_row(raw, Provider(provider))], now=start + i * step)
        ids.append(raw["event_id"])
    return ids
