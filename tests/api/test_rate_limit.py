"""The API's own rate limit: per key, answered 429 with Retry-After; failed authentications per address."""

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
