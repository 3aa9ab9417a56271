"""Fixtures of the fault-injection suite: the provider cases, OAuth over the loopback sandbox, an encryption key."""

import pytest

from impactin_pipelines.sandbox.server import SandboxServer
from impactin_pipelines.security.crypto import generate_key
from tests.reliability.ledger import CASES, GOODERA_QUOTA, Case


@pytest.fixture(autouse=True)
def _reliability_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("IMPACTIN_ENCRYPTION_KEY", generate_key())


@pytest.fixture(params=CASES, ids=str)
def case(request: pytest.FixtureRequest, sandbox: SandboxServer) -> Case:
    sandbox.providers["goodera"].configure({"rate_limit": GOODERA_QUOTA})
    return request.param


@pytest.fixture(params=[c for c in CASES if c.oauth], ids=str)
def oauth_case(request: pytest.FixtureRequest, sandbox: SandboxServer) -> Case:
    """The providers that authenticate with OAuth2 client credentials: Goodera and Workday REST."""
    sandbox.providers["goodera"].configure({"rate_limit": GOODERA_QUOTA})
    return request.param
