"""The providers' HTTP session reads the environment's proxy settings once per origin, and still honours them."""

import pytest
import requests

from impactin_pipelines.connectors.http import new_session


def test_proxies_from_the_environment_still_apply_and_no_proxy_still_bypasses(sandbox, monkeypatch) -> None:
    url = sandbox.env()["BENEVITY_API_URL"]
    monkeypatch.setenv("HTTP_PROXY", "http://127.0.0.1:9")  # nothing listens there
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    with pytest.raises(requests.exceptions.ProxyError):
        new_session().get(url, timeout=5)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    assert new_session().get(url, timeout=5).status_code < 600  # straight to the sandbox


def test_the_environment_is_read_once_per_origin(sandbox, monkeypatch) -> None:
    calls: list[str] = []
    real = requests.sessions.get_environ_proxies

    def counting(url: str, no_proxy: str | None = None) -> dict[str, str]:
        calls.append(url)
        return real(url, no_proxy=no_proxy)

    monkeypatch.setattr(requests.sessions, "get_environ_proxies", counting)
    session = new_session()
    url = sandbox.env()["BENEVITY_API_URL"]
    for path in ("/a", "/b", "/c"):
        session.get(url + path, timeout=5)
    session.get(url, timeout=5, verify=False)  # explicit settings are never taken from the cache
    assert len(calls) == 2
