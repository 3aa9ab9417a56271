"""The API's own rate limit: per key, answered 429 with Retry-After; failed authentications per address."""

import re

import pytest

from impactin_pipelines.settings import ApiSettings
from tests.api.conftest import BASE

LIMIT = 3


@pytest.fixture
def api_settings() -> ApiSettings:
    return ApiSettings(rate_limit_per_minute=LIMIT)


def test_each_key_gets_its_own_budget_and_429_says_when_to_come_back(api):
    for _ in range(LIMIT):
        assert api.get(f"{BASE}/deliveries", key="acme").status_code == 200
    limited = api.get(f"{BASE}/deliveries", key="acme")
    assert limited.status_code == 429
    assert limited.json()["error"] == "Too many requests"
    assert 1 <= int(limited.headers["Retry-After"]) <= 60
    assert api.post(f"{BASE}/deliveries/bulk-replay", {"ids": []}, key="acme").status_code == 429  # every route

    assert api.get(f"{BASE}/deliveries", key="globex").status_code == 200  # another key is not affected
    for _ in range(LIMIT + 2):
        assert api.get("/health/liveness", key=None).status_code == 200  # probes are never limited


def test_failed_authentications_are_limited_per_address(api):
    answers = [api.get(f"{BASE}/deliveries", key="imk_000000000000_" + "B" * 43).status_code for _ in range(LIMIT + 1)]
    assert answers == [401] * LIMIT + [429]
    assert api.get(f"{BASE}/deliveries", key="admin").status_code == 200  # a valid key still gets through


WRONG_KEY = "imk_000000000000_" + "B" * 43


def _failed_logins(api, *forwarded_for: str) -> list[int]:
    """Statuses of requests with a wrong key, each claiming to be forwarded for the given address."""
    headers = [{"X-Forwarded-For": address} for address in forwarded_for]
    return [api.call("GET", f"{BASE}/deliveries", key=WRONG_KEY, headers=h).status_code for h in headers]


def test_forwarded_for_from_a_peer_that_is_no_configured_proxy_is_ignored(api):
    """By default no proxy is trusted: a client naming a new address in each request is still one client."""
    assert _failed_logins(api, *(f"203.0.113.{i}" for i in range(LIMIT + 2))) == [401] * LIMIT + [429, 429]


@pytest.mark.parametrize("proxies", [("127.0.0.1",), ("10.9.0.0/16", "127.0.0.0/8")])
def test_forwarded_for_from_a_configured_proxy_names_the_client(api_with_proxies, proxies):
    api = api_with_proxies(proxies)
    assert _failed_logins(api, *["203.0.113.1"] * (LIMIT + 1)) == [401] * LIMIT + [429]
    assert _failed_logins(api, "203.0.113.2") == [401]  # another client behind the proxy has its own budget
    # the proxy appends the address it saw: what the client wrote before it is not believed
    assert _failed_logins(api, "198.51.100.7, 203.0.113.1") == [429]


@pytest.fixture
def api_with_proxies(engine, sandbox):
    """The API trusting these proxies; the test client (127.0.0.1) plays the proxy."""
    from impactin_pipelines.store.api_keys import ApiKeyStore
    from tests.api.conftest import Api, start_api
    from tests.support import factory_for

    started = []

    def start(proxies):
        factory = factory_for(engine, sandbox)
        server = start_api(engine, factory, ApiSettings(rate_limit_per_minute=LIMIT, trusted_proxies=proxies))
        started.append((server, factory))
        keys = {"admin": ApiKeyStore(engine).create(admin=True).token}
        return Api(server.url, engine, sandbox, factory, keys)

    yield start
    for server, factory in started:
        server.stop()
        factory.close()


def test_trusted_proxies_are_addresses_or_networks():
    env = {"IMPACTIN_API_TRUSTED_PROXIES": " 10.0.0.5, 10.1.0.0/16 ,, 2001:db8::/32"}
    assert ApiSettings.from_env(env).trusted_proxies == ("10.0.0.5/32", "10.1.0.0/16", "2001:db8::/32")
    assert ApiSettings.from_env({}).trusted_proxies == ()
    for bad in ("*", "proxy.internal", "10.0.0.300"):
        with pytest.raises(ValueError, match=f"IMPACTIN_API_TRUSTED_PROXIES: '{re.escape(bad)}' is not an IP"):
            ApiSettings.from_env({"IMPACTIN_API_TRUSTED_PROXIES": f"10.0.0.1,{bad}"})
