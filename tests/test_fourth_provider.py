"""A provider defined and registered here, and nowhere else, runs end to end: extract (with a quarantined event),
deliver (with a rejection), replay, the connectivity check, statistics, the CLI's choices and the API (list with
`provider=fourth`, POST /deliver, stats), on SQLite and PostgreSQL. Nothing outside this module names it: the
registry is the one list of providers."""

import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
import requests
from click.testing import CliRunner
from pydantic import SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict
from sqlalchemy.engine import Engine

from impactin_pipelines.api import build_app
from impactin_pipelines.api.server import BackgroundServer
from impactin_pipelines.connectors.base import (
    AttemptResult,
    ConnectivityResult,
    ConnectorContext,
    OutboundDelivery,
    PreparedRequest,
)
from impactin_pipelines.connectors.config import ConfigResolver
from impactin_pipelines.connectors.http import exchange, require_secure_url
from impactin_pipelines.connectors.registry import ConnectorFactory
from impactin_pipelines.domain.errors import InvalidEvent
from impactin_pipelines.domain.events import ImpactEvent
from impactin_pipelines.domain.providers import PROVIDERS, Provider
from impactin_pipelines.providers import PayloadBuilder, ProviderSpec, register, unregister
from impactin_pipelines.providers.env import ProviderEnv
from impactin_pipelines.sandbox.core import ProviderSandbox, Request, Response
from impactin_pipelines.sandbox.server import SandboxServer
from impactin_pipelines.security.redaction import Redactor
from impactin_pipelines.services.deliver import DeliveryRun
from impactin_pipelines.services.extract import extract
from impactin_pipelines.services.provider_checks import check_providers
from impactin_pipelines.services.replay import replay_one
from impactin_pipelines.services.stats import delivery_stats
from impactin_pipelines.settings import ApiSettings
from impactin_pipelines.store.api_keys import ApiKeyStore
from tests.support import add_events, add_integration, event, fast_settings, rows, statuses

NAME = "fourth"
TOKEN = "fourth-sandbox-token"
ROOT = Path(__file__).resolve().parents[1]


# -- the provider: settings, mapping, connector, fake ------------------------------------------------------------
class FourthSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="FOURTH_", env_ignore_empty=True, extra="ignore", frozen=True)

    api_url: str | None = None
    api_token: SecretStr | None = None


def fourth_payload(event: ImpactEvent) -> dict[str, Any]:
    if event.unit == "trees":
        raise InvalidEvent("unit", event.unit, "is not a unit fourth accepts")
    return {"ref": event.event_id, "user": event.user_id, "amount": str(event.value), "unit": event.unit}


def payload_for(settings: Mapping[str, Any], env: ProviderEnv) -> PayloadBuilder:
    return fourth_payload


class FourthConnector:
    def __init__(self, url: str, token: str, ctx: ConnectorContext) -> None:
        self.provider = Provider(NAME)
        self.url, self.token, self.ctx = url, token, ctx
        self.redactor = Redactor([token])

    def prepare(self, delivery: OutboundDelivery) -> PreparedRequest:
        headers = {
            "Content-Type": "application/json",
            "Authorization": f"Bearer {self.token}",
            "X-Idempotency-Key": delivery.delivery_id,
        }
        body = delivery.payload.encode()
        return PreparedRequest("POST", f"{self.url}/events", headers, body, frozenset({"authorization"}))

    def send(self, delivery: OutboundDelivery) -> AttemptResult:
        result, _ = exchange(self.ctx.session, self.prepare(delivery), timeout=self.ctx.timeout, redactor=self.redactor)
        return result

    def check(self) -> ConnectivityResult:
        request = PreparedRequest("GET", f"{self.url}/ping", {"Authorization": f"Bearer {self.token}"}, b"")
        result, _ = exchange(self.ctx.session, request, timeout=self.ctx.timeout, redactor=self.redactor)
        return ConnectivityResult(NAME, self.ctx.company_id, result.http_status == 200, f"HTTP {result.http_status}")

    def close(self) -> None:
        return None


def build(resolver: ConfigResolver, ctx: ConnectorContext) -> FourthConnector:
    url = resolver.value("api_url", "FOURTH_API_URL")
    token = resolver.secret("api_token", "FOURTH_API_TOKEN")
    resolver.done()
    assert url and token
    return FourthConnector(require_secure_url("FOURTH_API_URL", url), token, ctx)


class FourthFake(ProviderSandbox):
    name = NAME

    def env(self, base_url: str) -> dict[str, str]:
        return {"FOURTH_API_URL": base_url, "FOURTH_API_TOKEN": TOKEN}

    def route(self, request: Request) -> Response:
        if request.header("Authorization") != f"Bearer {TOKEN}":
            return Response.json(401, {"error": "bad token"})
        if request.method == "GET" and request.path == "/ping":
            return Response.json(200, {"ok": True})
        if request.method != "POST" or request.path != "/events":
            return Response.json(404, {"error": "not_found"})
        parsed = self.read_json_event(request, lambda doc: None if isinstance(doc, dict) and doc.get("ref") else "ref")
        if isinstance(parsed, Response):
            return parsed
        key, doc = parsed
        if doc["ref"] in self.faults.reject_events:
            return Response.json(422, {"error": "rejected"})
        return self.accept_response(key, {"id": f"f4_{len(self.accepted) + 1}", "ref": doc["ref"], "body": doc})


SPEC = ProviderSpec(name=NAME, settings=FourthSettings, payload_for=payload_for, connector=build, fake=FourthFake)


def register_fourth() -> None:
    register(SPEC)


# -- the run -----------------------------------------------------------------------------------------------------
@pytest.fixture
def fourth() -> Iterator[None]:
    register_fourth()
    try:
        yield
    finally:
        unregister(NAME)


def test_a_fourth_provider_runs_end_to_end_through_every_entry_point(fourth: None, engine: Engine) -> None:
    assert NAME in PROVIDERS and Provider.parse("FOURTH") == NAME
    with SandboxServer() as sandbox:  # the registry's fakes, the fourth among them
        fake = sandbox.providers[NAME]
        env = ProviderEnv.from_env(sandbox.env())
        assert env.get("FOURTH_API_TOKEN") == TOKEN and TOKEN not in repr(env)
        add_integration(engine, "acme", NAME)
        add_events(engine, [event(f"evt_{i}") for i in range(3)] + [event("evt_trees", unit="trees")])

        report = extract(engine, "acme", Provider(NAME), env=env)
        assert (report.new_rows, report.invalid, report.error) == (4, 1, None)
        [quarantined] = rows(engine, event_id="evt_trees")
        assert (quarantined["error_kind"], quarantined["last_error"]) == (
            "invalid_event",
            "invalid event evt_trees: unit='trees': is not a unit fourth accepts",
        )

        factory = ConnectorFactory(engine, env=env, settings=fast_settings())
        try:
            fake.configure({"reject_events": ["evt_1"]})
            DeliveryRun(engine, factory, provider=Provider(NAME), company_ids=["acme"]).run()
            assert statuses(engine, NAME) == {"success": 2, "failed": 2}
            sent = fake.snapshot()["accepted"]
            assert sorted(r["body"]["ref"] for r in sent) == ["evt_0", "evt_2"]
            assert sent[0]["body"] == {"ref": sent[0]["ref"], "user": "user_456", "amount": "5.0", "unit": "hours"}

            fake.reset()
            [rejected] = rows(engine, event_id="evt_1")
            assert rejected["error_kind"] == "rejected"
            result = replay_one(engine, factory, rejected["id"])
            assert (result.success, result.new_status) == (True, "success")
            assert [r["ref"] for r in fake.snapshot()["accepted"]] == ["evt_1"]

            [checked] = check_providers(engine, providers=[NAME], env=env, settings=fast_settings())
            assert (checked.provider, checked.ok, checked.detail) == (NAME, True, "HTTP 200")

            by_provider = {(r["provider"], r["status"]): r["count"] for r in delivery_stats(engine)["byProvider"]}
            assert by_provider == {(NAME, "success"): 3, (NAME, "failed"): 1}

            _through_the_api(engine, factory, fake)
        finally:
            factory.close()


def _through_the_api(engine: Engine, factory: ConnectorFactory, fake: ProviderSandbox) -> None:
    admin = ApiKeyStore(engine).create(admin=True, label="fourth").token
    server = BackgroundServer(build_app(engine, factory=factory, settings=ApiSettings())).start()
    http = requests.Session()
    http.headers["Authorization"] = f"Bearer {admin}"
    base = f"{server.url}/v1/impact-in"
    try:
        query: dict[str, str | int] = {"provider": NAME, "limit": 100}
        listed = http.get(f"{base}/deliveries", params=query, timeout=30)
        assert listed.status_code == 200, listed.text
        stored = sorted(r["delivery_id"] for r in rows(engine, provider=NAME))
        assert len(stored) == 4 and sorted(d["deliveryId"] for d in listed.json()["data"]) == stored
        assert {d["provider"] for d in listed.json()["data"]} == {NAME}

        body = {
            "companyId": "acme",
            "provider": NAME,
            "event": {
                "eventId": "evt_api",
                "userId": "user_9",
                "eventType": "volunteer_hours",
                "timestamp": "2025-11-14T10:00:00Z",
                "value": 2,
                "unit": "hours",
            },
        }
        delivered = http.post(f"{base}/deliver", json=body, timeout=30)
        assert delivered.status_code == 201, delivered.text
        data = delivered.json()["data"]
        assert (data["provider"], data["status"], data["payload"]["ref"]) == (NAME, "success", "evt_api")
        assert fake.snapshot()["accepted"][-1]["ref"] == "evt_api"

        stats = http.get(f"{base}/stats", timeout=30).json()["data"]
        assert {(r["provider"], r["status"], r["count"]) for r in stats["byProvider"]} == {
            (NAME, "success", 4),
            (NAME, "failed", 1),
        }
        unknown = http.get(f"{base}/deliveries", params={"provider": "fifth"}, timeout=30)
        assert unknown.status_code == 400 and "fourth" in unknown.text and "fifth" in unknown.text
    finally:
        http.close()
        server.stop()


def test_the_cli_offers_a_registered_provider(fourth: None) -> None:
    from impactin_pipelines.cli import cli

    result = CliRunner().invoke(cli, ["deliveries", "list", "--help"])
    assert result.exit_code == 0 and "[benevity|goodera|workday|fourth]" in result.output
    refused = CliRunner().invoke(cli, ["deliveries", "list", "--provider", "fifth"])
    assert refused.exit_code == 2 and "'fifth' is not one of 'benevity', 'goodera', 'workday', 'fourth'" in (
        refused.output
    )


def test_dagster_definitions_built_after_registration_partition_and_configure_it() -> None:
    """The provider partition dimension and the provider resource are built when the definitions are imported:
    a provider registered before that (as a plugin module would be) is a partition with its variables."""
    script = (
        "from tests.test_fourth_provider import register_fourth\n"
        "register_fourth()\n"
        "import json\n"
        "from impactin_pipelines.definitions import defs\n"
        "from impactin_pipelines.defs.orchestration.partitions import provider_partitions\n"
        "from impactin_pipelines.defs.resources import ProvidersResource\n"
        "print(json.dumps([provider_partitions.get_partition_keys(), sorted(ProvidersResource.model_fields)]))\n"
    )
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr
    keys, fields = json.loads(done.stdout.strip().splitlines()[-1])
    assert keys == ["benevity", "goodera", "workday", NAME]
    assert {"FOURTH_API_URL", "FOURTH_API_TOKEN", "BENEVITY_API_URL", "WORKDAY_PROTOCOL"} <= set(fields)


def test_no_code_outside_a_provider_folder_names_a_provider() -> None:
    """Provider-specific behaviour is reached through the registry, never by testing which provider it is."""
    package = ROOT / "impactin_pipelines"
    pattern = re.compile(r"Provider\.(BENEVITY|GOODERA|WORKDAY)|isinstance\([^)]*Sandbox\)")
    found = [
        f"{path.relative_to(ROOT)}:{n}"
        for path in package.rglob("*.py")
        if "providers" not in path.relative_to(package).parts[:1] and path.name != "providers.py"
        for n, line in enumerate(path.read_text().splitlines(), 1)
        if pattern.search(line)
    ]
    assert found == []
