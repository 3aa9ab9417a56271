"""The providers' HTTP session reads the environment's proxy settings once per origin, and still honours them."""

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import requests

from impactin_pipelines.connectors.base import AttemptResult, PreparedRequest
from impactin_pipelines.connectors.http import exchange, new_session
from impactin_pipelines.domain.statuses import AttemptOutcome
from impactin_pipelines.security.redaction import Redactor


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


# -- the send path: exchange() through Session.send_body ----------------------------------------------------------
class _Recorder(BaseHTTPRequestHandler):
    seen: list[dict[str, object]]

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        self.seen.append({"path": self.path, "headers": dict(self.headers), "body": body})
        if self.path == "/moved":
            self.send_response(302)
            self.send_header("Location", "/elsewhere")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        reply = b'{"ok": true}'
        self.send_response(201)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(reply)))
        self.end_headers()
        self.wfile.write(reply)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def recorder() -> Iterator[tuple[str, list[dict[str, object]]]]:
    seen: list[dict[str, object]] = []
    handler = type("Handler", (_Recorder,), {"seen": seen})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", seen
    finally:
        server.shutdown()
        server.server_close()


def _send(url: str, headers: dict[str, str] | None = None, body: bytes = b'{"event": "e1"}') -> AttemptResult:
    request = PreparedRequest("POST", url, headers or {"Content-Type": "application/json"}, body)
    session = new_session()
    try:
        result, _ = exchange(session, request, timeout=(5.0, 5.0), redactor=Redactor())
    finally:
        session.close()
    return result


def test_a_send_carries_exactly_the_stored_bytes_and_headers(recorder) -> None:
    base, seen = recorder
    body = '{"note": "café ✓"}'.encode()
    result = _send(base + "/v1/events?x=1", {"Idempotency-Key": "k-1", "Content-Type": "application/json"}, body)
    assert result.outcome is AttemptOutcome.SUCCESS and result.http_status == 201
    assert result.response_body == '{"ok": true}'
    [request] = seen
    headers = request["headers"]
    assert isinstance(headers, dict)
    assert request["path"] == "/v1/events?x=1" and request["body"] == body
    assert headers["Idempotency-Key"] == "k-1" and headers["Content-Length"] == str(len(body))
    assert headers["User-Agent"].startswith("impactin-pipelines/")


def test_a_redirect_is_reported_not_followed(recorder) -> None:
    base, seen = recorder
    result = _send(base + "/moved")
    assert result.outcome is not AttemptOutcome.SUCCESS
    assert result.error is not None and "unexpected redirect to /elsewhere" in result.error
    assert [r["path"] for r in seen] == ["/moved"]  # nothing sent to where it pointed


def test_netrc_credentials_never_reach_a_provider(recorder, tmp_path, monkeypatch) -> None:
    base, seen = recorder
    netrc = tmp_path / "netrc"
    netrc.write_text("machine 127.0.0.1 login someone password hunter2\n")
    netrc.chmod(0o600)
    monkeypatch.setenv("NETRC", str(netrc))
    assert requests.utils.get_netrc_auth(base) == ("someone", "hunter2")  # requests itself would use them
    assert _send(base + "/v1/events").outcome is AttemptOutcome.SUCCESS
    headers = seen[0]["headers"]
    assert isinstance(headers, dict) and "Authorization" not in headers


def test_a_header_value_with_a_newline_is_refused_before_anything_is_sent(recorder) -> None:
    base, seen = recorder
    result = _send(base + "/v1/events", {"X-Note": "ok\r\nX-Injected: 1"})
    assert result.outcome is AttemptOutcome.CONFIG and result.http_status is None  # retrying cannot fix it
    assert result.error is not None and "'X-Note'" in result.error and "X-Injected" in result.error
    request = PreparedRequest("POST", base, {"Authorization": "Bearer s3cr3t\n"}, b"{}", frozenset({"authorization"}))
    secret, _ = exchange(new_session(), request, timeout=(5.0, 5.0), redactor=Redactor())
    assert secret.outcome is AttemptOutcome.CONFIG and secret.error is not None
    assert "'Authorization'" in secret.error and "s3cr3t" not in secret.error
    assert seen == []


def test_proxies_apply_to_the_send_path_and_no_proxy_bypasses_them(recorder, monkeypatch) -> None:
    base, seen = recorder
    monkeypatch.setenv("HTTP_PROXY", "http://127.0.0.1:9")  # nothing listens there
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    refused = _send(base + "/v1/events")
    assert refused.outcome is AttemptOutcome.RETRYABLE and (refused.error or "").startswith("proxy error: ")
    assert seen == []
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    assert _send(base + "/v1/events").outcome is AttemptOutcome.SUCCESS
    assert len(seen) == 1


def test_a_url_that_cannot_be_parsed_is_a_configuration_error() -> None:
    result = _send("http://[::1/v1/events")
    assert result.outcome is AttemptOutcome.CONFIG and result.error is not None and "invalid URL" in result.error
