"""The API's rate limit holds across processes: two `impactin api` processes on one warehouse (as two replicas
behind a load balancer) share each caller's budget, for API keys and for failed authentications alike."""

import itertools
from concurrent.futures import ThreadPoolExecutor

import requests
import sqlalchemy as sa

from impactin_pipelines.store.api_keys import ApiKeyStore
from impactin_pipelines.store.schema import impact_api_rate_hits
from tests.api.test_api_keys_cli import serving

LIMIT = 7
PATH = "/v1/impact-in/deliveries"
WRONG_KEY = "imk_000000000000_" + "B" * 43


def _statuses(urls: list[str], token: str, n: int) -> list[int]:
    """n requests spread over both replicas, four at a time (as a load balancer would hand them out)."""
    targets = list(itertools.islice(itertools.cycle(urls), n))

    def call(url: str) -> int:
        return requests.get(url + PATH, headers={"Authorization": f"Bearer {token}"}, timeout=30).status_code

    with ThreadPoolExecutor(4) as pool:
        return list(pool.map(call, targets))


def test_two_api_processes_share_each_callers_budget(engine, warehouse_url, tmp_path):
    acme = ApiKeyStore(engine).create(company_id="acme").token
    globex = ApiKeyStore(engine).create(company_id="globex").token
    env = {"IMPACTIN_API_RATE_LIMIT_PER_MINUTE": str(LIMIT)}
    with (
        serving(warehouse_url, tmp_path / "a", **env) as first,
        serving(warehouse_url, tmp_path / "b", **env) as second,
    ):
        answers = _statuses([first, second], acme, 3 * LIMIT)
        assert sorted(answers) == [200] * LIMIT + [429] * (2 * LIMIT), answers  # not 2 x LIMIT: one budget
        limited = requests.get(second + PATH, headers={"Authorization": f"Bearer {acme}"}, timeout=30)
        assert limited.status_code == 429 and 1 <= int(limited.headers["Retry-After"]) <= 60

        assert _statuses([second, first], globex, 2) == [200, 200]  # another key has its own budget

        logins = _statuses([first, second], WRONG_KEY, 2 * LIMIT)
        assert sorted(logins) == [401] * LIMIT + [429] * LIMIT, logins  # failed logins: one budget per address

    with engine.connect() as conn:
        callers = conn.execute(sa.select(impact_api_rate_hits.c.caller).distinct()).scalars().all()
    assert len(callers) == 3 and not any(acme in c or globex in c for c in callers)  # never a secret in a row
