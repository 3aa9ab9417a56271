"""Fixtures: a fresh warehouse per test on SQLite and on the real PostgreSQL server, and the sandbox.

PostgreSQL tests never skip: when the server cannot be reached they fail, with the command that starts it.
"""

import logging
import os
import uuid
from collections.abc import Iterator

import hypothesis
import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine
from sqlalchemy.engine.url import make_url

from impactin_pipelines.connectors.ratelimit import close_shared_limiters
from impactin_pipelines.sandbox.server import SandboxServer
from impactin_pipelines.store import migrations
from impactin_pipelines.store.engine import make_engine

# CI gates on a fixed set of examples (no flaky discovery there, no deadlines on a loaded machine); locally
# hypothesis keeps exploring.
hypothesis.settings.register_profile("ci", derandomize=True, deadline=None, print_blob=True)
hypothesis.settings.register_profile("dev", deadline=None)
hypothesis.settings.load_profile("ci" if os.environ.get("CI") else "dev")

ADMIN_URL = os.environ.get("IMPACTIN_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres")
BACKENDS = ["sqlite", "postgres"]


@pytest.fixture(autouse=True)
def _isolated_environment(monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory) -> None:
    """No test sees the developer's provider credentials or state."""
    for name in list(os.environ):
        if name.startswith(("BENEVITY_", "GOODERA_", "WORKDAY_", "IMPACTIN_")) and name != "IMPACTIN_TEST_POSTGRES_URL":
            monkeypatch.delenv(name)
    # plain http to the loopback sandbox needs no switch: a test must not pass only because the developer set one
    monkeypatch.delenv("OAUTHLIB_INSECURE_TRANSPORT", raising=False)
    monkeypatch.setenv("IMPACTIN_STATE_DIR", str(tmp_path_factory.mktemp("state")))
    monkeypatch.delenv("DAGSTER_HOME", raising=False)


@pytest.fixture(autouse=True)
def _no_shared_limiter_left_behind() -> Iterator[None]:
    """Rate limiters are shared per process and bucket location (connectors/ratelimit); each test's are closed after
    it, so none outlives the database or state folder it was built on, nor leaks its slots into the next test."""
    yield
    close_shared_limiters()


@pytest.fixture(autouse=True)
def _no_log_handlers_left_behind() -> Iterator[None]:
    """A Dagster run in this process installs the `impactin` stderr handler once per process, bound to the stderr
    of that moment; a later test capturing stderr must get its own, so handlers a test added are removed."""
    loggers = [logging.getLogger(), logging.getLogger("impactin")]
    before = [list(logger.handlers) for logger in loggers]
    yield
    for logger, kept in zip(loggers, before, strict=True):
        for handler in [h for h in logger.handlers if h not in kept]:
            logger.removeHandler(handler)


@pytest.fixture(scope="session")
def postgres_database() -> Iterator[str]:
    """A database of our own for this test session (per xdist worker), dropped at the end."""
    admin = sa.create_engine(make_url(ADMIN_URL), isolation_level="AUTOCOMMIT")
    name = f"impactin_test_{os.environ.get('PYTEST_XDIST_WORKER', 'main')}_{uuid.uuid4().hex[:8]}"
    try:
        with admin.connect() as conn:
            conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
    except sa.exc.OperationalError as exc:
        pytest.fail(
            f"PostgreSQL is not reachable at {ADMIN_URL} ({exc.orig}). Start it with "
            "`pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start` or set "
            "IMPACTIN_TEST_POSTGRES_URL.",
            pytrace=False,
        )
    yield make_url(ADMIN_URL).set(database=name).render_as_string(hide_password=False)
    with admin.connect() as conn:
        conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    admin.dispose()


def fresh_postgres_url(database_url: str) -> str:
    """A fresh schema in the session database, as a URL whose connections use it (subprocesses too)."""
    schema = f"t_{uuid.uuid4().hex[:12]}"
    engine = sa.create_engine(make_url(database_url))
    with engine.begin() as conn:
        conn.exec_driver_sql(f'CREATE SCHEMA "{schema}"')
    engine.dispose()
    url = make_url(database_url).update_query_dict({"options": f"-csearch_path={schema}"})
    return url.render_as_string(hide_password=False)


@pytest.fixture(params=BACKENDS)
def warehouse_url(request: pytest.FixtureRequest, tmp_path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'warehouse.db'}"
    return fresh_postgres_url(request.getfixturevalue("postgres_database"))


def _migrated(url: str) -> Iterator[Engine]:
    engine = make_engine(url)
    migrations.upgrade(engine)
    yield engine
    engine.dispose()


@pytest.fixture
def engine(warehouse_url: str) -> Iterator[Engine]:
    """A migrated warehouse, once on SQLite and once on PostgreSQL."""
    yield from _migrated(warehouse_url)


@pytest.fixture
def sqlite_engine(tmp_path) -> Iterator[Engine]:
    yield from _migrated(f"sqlite:///{tmp_path / 'warehouse.db'}")


@pytest.fixture
def pg_engine(postgres_database: str) -> Iterator[Engine]:
    yield from _migrated(fresh_postgres_url(postgres_database))


@pytest.fixture
def sandbox() -> Iterator[SandboxServer]:
    with SandboxServer() as server:
        yield server
