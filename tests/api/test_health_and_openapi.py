"""Health probes (readiness really asks the database), the OpenAPI document, and errors that leak nothing."""

from collections.abc import Iterator

import pytest
import requests
import sqlalchemy as sa
from openapi_spec_validator import validate
from sqlalchemy.engine import Engine

from impactin_pipelines.api.app import ROUTES, build_app
from impactin_pipelines.api.openapi import document
from impactin_pipelines.api.server import BackgroundServer
from impactin_pipelines.settings import ApiSettings
from impactin_pipelines.store.api_keys import impact_api_keys
from impactin_pipelines.store.engine import make_engine
from tests.api.conftest import BASE

A_KEY = "imk_0123456789ab_" + "A" * 43


def test_health_probes_answer_without_a_key(api):
    for path, status in (("/health", "ok"), ("/health/readiness", "ready")):
        response = api.get(path, key=None)
        assert response.status_code == 200
        assert response.json() == {
            "status": status,
            "service": "impact-in",
            "checks": {"database": "ok", "schema": "ok"},
        }
    live = api.get("/health/liveness", key=None)
    assert live.status_code == 200 and live.json() == {"status": "alive", "service": "impact-in"}


@pytest.fixture
def unmigrated(warehouse_url: str) -> Iterator[Engine]:
    engine = make_engine(warehouse_url)
    yield engine
    engine.dispose()


def test_readiness_reports_a_schema_that_needs_upgrading(unmigrated):
    with _server(unmigrated) as server:
        response = requests.get(server.url + "/health/readiness", timeout=10)
        assert response.status_code == 503
        assert response.json()["status"] == "unavailable"
        assert "impactin db upgrade" in response.json()["checks"]["schema"]
        assert requests.get(server.url + "/health/liveness", timeout=10).status_code == 200


@pytest.fixture(params=["sqlite", "postgres"])
def unreachable(request: pytest.FixtureRequest, tmp_path) -> Iterator[Engine]:
    if request.param == "sqlite":
        garbage = tmp_path / "not-a-database.db"
        garbage.write_bytes(b"this is not sqlite" * 100)
        url = f"sqlite:///{garbage}"
    else:
        url = "postgresql+psycopg://postgres:s3cret-password@127.0.0.1:1/nowhere?connect_timeout=2"
    engine = make_engine(url)
    yield engine
    engine.dispose()


def test_an_unreachable_database_is_503_everywhere_and_leaks_nothing(unreachable):
    with _server(unreachable) as server:
        for path in ("/health", "/health/readiness"):
            response = requests.get(server.url + path, timeout=10)
            assert response.status_code == 503
            assert response.json()["checks"]["database"].startswith("unavailable")
        assert requests.get(server.url + "/health/liveness", timeout=10).status_code == 200
        response = requests.get(
            server.url + f"{BASE}/deliveries", headers={"Authorization": f"Bearer {A_KEY}"}, timeout=10
        )
        assert response.status_code == 503 and response.json()["error"] == "Service unavailable"
        for answer in (response, requests.get(server.url + "/health", timeout=10)):
            for leak in ("s3cret", "127.0.0.1:1", "nowhere", "not-a-database", "Traceback"):
                assert leak not in answer.text


def test_an_unexpected_failure_is_a_bare_500_or_503_without_sql_or_trace(api):
    with api.engine.begin() as conn:
        conn.exec_driver_sql("DROP TABLE impact_delivery_attempts")
        conn.exec_driver_sql("DROP TABLE impact_deliveries")
    response = api.get(f"{BASE}/deliveries")
    assert response.status_code in (500, 503)
    assert set(response.json()) <= {"error", "message", "ref"}
    for leak in ("impact_deliveries", "SELECT", "sqlalchemy", "psycopg", "sqlite3"):
        assert leak.lower() not in response.text.lower()


def _server(engine: Engine) -> BackgroundServer:
    """Not started: the caller's `with` starts and stops it (the app owns and closes its factory)."""
    return BackgroundServer(build_app(engine, settings=ApiSettings()))


def test_openapi_document_is_valid_and_describes_every_route(api):
    doc = document()
    validate(doc)  # raises on any violation of the OpenAPI 3.1 schema
    served = api.get("/openapi.json")
    assert served.status_code == 200 and served.json() == doc
    assert api.get("/openapi.json", key=None).status_code == 401

    routes = {(route.path, method.lower()) for route in ROUTES for method in route.methods if method != "HEAD"}
    described = {(path, method) for path, ops in doc["paths"].items() for method in ops}
    assert routes == described
    for path, ops in doc["paths"].items():
        for method, op in ops.items():
            public = path.startswith(("/health", "/v1/impact-in/webhooks/"))  # webhooks: signed, no API key
            assert (op.get("security") == []) is public, (path, method)
            if not public:
                assert {"401", "429"} <= set(op["responses"]), (path, method)


def test_openapi_request_schemas_match_what_the_api_accepts(api):
    schemas = document()["components"]["schemas"]
    assert set(schemas["DeliverBody"]["required"]) == {"companyId", "provider", "event"}
    assert set(schemas["EventBody"]["properties"]) == {
        "eventId",
        "userId",
        "eventType",
        "timestamp",
        "value",
        "unit",
        "outcomeScores",
        "metadata",
    }
    assert schemas["BulkReplayBody"]["properties"]["ids"]["maxItems"] == 100
    assert schemas["EventBody"]["properties"]["value"]["type"] == "number"


def test_api_keys_table_matches_the_migration(engine):
    in_db = {c["name"] for c in sa.inspect(engine).get_columns(impact_api_keys.name)}
    assert {c.name for c in impact_api_keys.columns} == in_db
