"""`impactin api-keys create|list|revoke` and `impactin api`, run as an operator would."""

import contextlib
import re
import socket
import time
from collections.abc import Iterator

import requests
from click.testing import CliRunner

from impactin_pipelines.cli import cli
from impactin_pipelines.store.api_keys import ApiKeyStore
from tests.cli_support import cli_env, run_cli, start_cli

TOKEN = re.compile(r"^imk_[0-9a-f]{12}_[A-Za-z0-9_-]{43}$")


def invoke(args, monkeypatch, warehouse_url):
    monkeypatch.setenv("IMPACTIN_WAREHOUSE_URL", warehouse_url)
    return CliRunner().invoke(cli, args, catch_exceptions=False)


def test_create_prints_the_key_once_and_list_never_shows_it(engine, warehouse_url, monkeypatch):
    created = invoke(["api-keys", "create", "--company", "acme", "--label", "ops"], monkeypatch, warehouse_url)
    assert created.exit_code == 0, created.output
    token = created.stdout.strip()
    assert TOKEN.match(token)
    assert "not shown again" in created.stderr
    key = ApiKeyStore(engine).authenticate(token)
    assert key is not None and key.company_id == "acme" and not key.is_admin and key.label == "ops"

    admin = invoke(["api-keys", "create", "--admin", "--json"], monkeypatch, warehouse_url)
    assert admin.exit_code == 0 and '"admin": true' in admin.stdout and '"key": "imk_' in admin.stdout

    listed = invoke(["api-keys", "list"], monkeypatch, warehouse_url)
    assert listed.exit_code == 0 and key.key_id in listed.stdout and "company:acme" in listed.stdout
    as_json = invoke(["api-keys", "list", "--json"], monkeypatch, warehouse_url)
    for output in (listed.stdout, as_json.stdout):
        assert token not in output and token.split("_", 2)[2] not in output

    revoked = invoke(["api-keys", "revoke", key.key_id], monkeypatch, warehouse_url)
    assert revoked.exit_code == 0 and ApiKeyStore(engine).authenticate(token) is None
    assert invoke(["api-keys", "revoke", key.key_id], monkeypatch, warehouse_url).exit_code == 1
    assert key.key_id not in invoke(["api-keys", "list"], monkeypatch, warehouse_url).stdout
    assert key.key_id in invoke(["api-keys", "list", "--all"], monkeypatch, warehouse_url).stdout


def test_create_needs_exactly_one_scope_and_a_valid_company(engine, warehouse_url, monkeypatch):
    for args in ([], ["--admin", "--company", "acme"]):
        result = invoke(["api-keys", "create", *args], monkeypatch, warehouse_url)
        assert result.exit_code == 2 and "exactly one of --company C or --admin" in result.output
    bad = invoke(["api-keys", "create", "--company", "acme|benevity"], monkeypatch, warehouse_url)
    assert bad.exit_code == 2 and "company_id" in bad.output
    assert ApiKeyStore(engine).list() == []


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def serving(warehouse_url: str, tmp_path, **env: str) -> Iterator[str]:
    """`impactin api` in a subprocess; yields its URL once it answers, stops it after."""
    port = _free_port()
    process = start_cli(["api", "--port", str(port)], cli_env(tmp_path, warehouse_url, **env))
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        while True:
            try:
                if requests.get(url + "/health/liveness", timeout=2).status_code == 200:
                    break
            except requests.ConnectionError:
                pass
            assert process.poll() is None and time.monotonic() < deadline, "impactin api did not come up"
            time.sleep(0.1)
        yield url
    finally:
        process.terminate()
        process.wait(timeout=20)


def test_impactin_api_serves_the_api(engine, warehouse_url, tmp_path):
    token = ApiKeyStore(engine).create(company_id="acme").token
    with serving(warehouse_url, tmp_path) as url:
        listed = requests.get(
            url + "/v1/impact-in/deliveries", headers={"Authorization": f"Bearer {token}"}, timeout=10
        )
        assert listed.status_code == 200 and listed.json()["pagination"]["total"] == 0
        assert requests.get(url + "/v1/impact-in/deliveries", timeout=10).status_code == 401


def test_impactin_api_ignores_forwarding_headers_unless_the_peer_is_a_configured_proxy(engine, warehouse_url, tmp_path):
    """uvicorn alone would believe X-Forwarded-For from loopback: every local client could pick its address."""

    def failed_logins(url: str, *addresses: str) -> list[int]:
        headers = [{"Authorization": "Bearer imk_000000000000_" + "B" * 43, "X-Forwarded-For": a} for a in addresses]
        return [requests.get(url + "/v1/impact-in/deliveries", headers=h, timeout=10).status_code for h in headers]

    with serving(warehouse_url, tmp_path, IMPACTIN_API_RATE_LIMIT_PER_MINUTE="2") as url:
        assert failed_logins(url, "203.0.113.1", "203.0.113.2", "203.0.113.3") == [401, 401, 429]
        host, port = url.removeprefix("http://").split(":")
        with socket.create_connection((host, int(port)), timeout=10) as conn:
            conn.sendall(b"NOT HTTP\r\n\r\n")
            assert b"content-type: application/json" in conn.recv(4096).lower()
    proxied = {"IMPACTIN_API_RATE_LIMIT_PER_MINUTE": "2", "IMPACTIN_API_TRUSTED_PROXIES": "127.0.0.1"}
    with serving(warehouse_url, tmp_path, **proxied) as url:
        assert failed_logins(url, "203.0.113.1", "203.0.113.2", "203.0.113.3", "203.0.113.1") == [401] * 4
        assert failed_logins(url, "203.0.113.1") == [429]


def test_impactin_api_refuses_a_bad_setting_with_its_name(engine, warehouse_url, monkeypatch):
    monkeypatch.setenv("IMPACTIN_API_RATE_LIMIT_PER_MINUTE", "lots")
    result = invoke(["api"], monkeypatch, warehouse_url)
    assert result.exit_code == 1 and "IMPACTIN_API_RATE_LIMIT_PER_MINUTE='lots' is not an integer" in result.output


def test_impactin_api_refuses_a_trusted_proxy_that_is_no_address(engine, warehouse_url, tmp_path):
    """`*` would trust everyone's X-Forwarded-For; a host name cannot be checked against a peer address."""
    for bad in ("*", "proxy.internal"):
        env = cli_env(tmp_path, warehouse_url, IMPACTIN_API_TRUSTED_PROXIES=f"10.0.0.1, {bad}")
        result = run_cli(["api", "--port", str(_free_port())], env, timeout=60)  # a server that starts never exits
        assert result.returncode == 1, result.stderr
        assert f"IMPACTIN_API_TRUSTED_PROXIES: '{bad}' is not an IP address" in result.stderr
