"""XML and TLS hardening, proven against real servers on loopback.

XML: a SOAP reply carrying a DTD, an external entity or a billion-laughs bomb is refused unparsed, never expanded,
and never fetches anything; the delivery is not marked success. It is *retried* (not failed as rejected): such a
reply says nothing about whether Workday stored the report, a retry is safe because Workday dedups on
External_Reference_ID, and the retries are bounded (attempts per run, runs per row, then failed/exhausted, which
the failure-rate check reports). The fake Workday refuses the same documents in requests.

TLS: every provider call verifies certificates, whatever the environment says; a real HTTPS server on 127.0.0.1
with a self-signed certificate (made here with `cryptography`) is refused as `config` ("certificate verify failed")
before any HTTP request is read. Plain http is allowed only to a host that is loopback by name (localhost, 127.x,
::1); any other http URL is refused before a socket is opened. Nothing in product code outside the sandbox can turn
verification off.
"""

import ipaddress
import re
import socket
import ssl
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import requests
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from zeep import Settings
from zeep.exceptions import DTDForbidden, EntitiesForbidden, XMLSyntaxError
from zeep.loader import parse_xml

from impactin_pipelines.connectors.http import new_session, require_secure_url
from impactin_pipelines.connectors.registry import ConnectorFactory
from impactin_pipelines.domain.errors import ConfigError
from impactin_pipelines.domain.providers import Provider
from impactin_pipelines.providers.env import ProviderEnv
from impactin_pipelines.providers.workday import fake
from impactin_pipelines.providers.workday import soap as workday_soap
from impactin_pipelines.services.deliver import DeliveryRun
from impactin_pipelines.services.extract import extract
from tests.support import add_events, add_integration, attempts, deliver, events, fast_settings, rows

PRODUCT = Path(__file__).resolve().parents[1] / "impactin_pipelines"
SOAP_ENV = "http://schemas.xmlsoap.org/soap/envelope/"


@pytest.fixture(autouse=True)
def _env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OAUTHLIB_INSECURE_TRANSPORT", "1")  # as the sandbox sets it; http must still be refused


# -- hostile XML ---------------------------------------------------------------------------------------------------
def _reply(inner: str, doctype: str) -> str:
    return (
        f'<?xml version="1.0"?>{doctype}<env:Envelope xmlns:env="{SOAP_ENV}" xmlns:wd="urn:com.workday/bsvc">'
        "<env:Body><wd:Submit_CSR_Impact_Report_Response><wd:CSR_Impact_Report_Reference>"
        f'<wd:ID wd:type="WID">{inner}</wd:ID></wd:CSR_Impact_Report_Reference>'
        "</wd:Submit_CSR_Impact_Report_Response></env:Body></env:Envelope>"
    )


def _laughs(levels: int = 9) -> str:
    """lol1 is ten lol, lol2 ten lol1, ...: lol9 is 10^9 'lol' (3 GB) if anything expands it."""
    entities = ['<!ENTITY lol0 "lol">']
    entities += [f'<!ENTITY lol{i} "{f"&lol{i - 1};" * 10}">' for i in range(1, levels + 1)]
    return f"<!DOCTYPE lolz [{''.join(entities)}]>"


BILLION_LAUGHS = _reply("&lol9;", _laughs())
THOUSAND_LAUGHS = _reply("&lol3;", _laughs(3))  # small enough for libxml2's own amplification guard to let through
FILE_ENTITY = _reply("&xxe;", '<!DOCTYPE r [<!ENTITY xxe SYSTEM "file:///etc/passwd">]>')
PLAIN_DTD = _reply("wd_000001", "<!DOCTYPE env:Envelope [<!ELEMENT env:Envelope ANY>]>")


def _fetching(sandbox: Any) -> tuple[str, str]:
    """Documents whose DTD or entity would be fetched from the sandbox's Benevity path (which logs every request)."""
    url = sandbox.provider_url("benevity") + "/evil.dtd"
    return (
        _reply("&remote;", f'<!DOCTYPE r [<!ENTITY remote SYSTEM "{url}">]>'),
        _reply("wd_000001", f'<!DOCTYPE env:Envelope SYSTEM "{url}">'),
    )


def test_entity_bombs_are_refused_at_parse_time_whatever_their_size() -> None:
    """libxml2 refuses the billion-laughs bomb on its own (entity amplification limit); a smaller bomb that it would
    let through is refused by our settings' DTD rule and, without that rule, by the entity rule. Both are set."""
    settings = workday_soap.ZEEP_SETTINGS
    assert settings.forbid_dtd and settings.forbid_entities and settings.forbid_external
    assert BILLION_LAUGHS.count("<!ENTITY") == 10 and "&lol8;" * 10 in BILLION_LAUGHS
    # zeep annotates `content` as str but hands it to lxml, which takes the bytes a transport returns: hence the
    # ignores below.
    with pytest.raises(XMLSyntaxError, match="amplification"):
        parse_xml(BILLION_LAUGHS.encode(), None, settings=settings)  # type: ignore[arg-type]
    with pytest.raises(DTDForbidden):
        parse_xml(THOUSAND_LAUGHS.encode(), None, settings=settings)  # type: ignore[arg-type]
    with pytest.raises(EntitiesForbidden):
        parse_xml(THOUSAND_LAUGHS.encode(), None, settings=Settings(strict=True, forbid_dtd=False))  # type: ignore[arg-type]


HOSTILE_REPLIES = {
    "billion_laughs": BILLION_LAUGHS,
    "thousand_laughs": THOUSAND_LAUGHS,
    "file_entity": FILE_ENTITY,
    "plain_dtd": PLAIN_DTD,
}
# How each refusal reads on a 2xx. libxml2 rejects the big bomb as malformed XML before zeep's DTD rule runs.
REFUSED = "HTTP 200 but the reply was refused (DTDForbidden)"
REFUSED_AS = {"billion_laughs": "HTTP 200 but the body is not a SOAP envelope"}


@pytest.mark.parametrize("status", [200, 500])
@pytest.mark.parametrize("name", [*HOSTILE_REPLIES, "remote_entity", "remote_dtd"])
def test_a_hostile_soap_reply_is_refused_unexpanded_and_retried(engine, sandbox, name: str, status: int) -> None:
    remote_entity, remote_dtd = _fetching(sandbox)
    body = {**HOSTILE_REPLIES, "remote_entity": remote_entity, "remote_dtd": remote_dtd}[name]
    add_integration(engine, "acme", "workday")
    add_events(engine, events("acme", 1))
    extract(engine, "acme", Provider.WORKDAY)
    workday = sandbox.providers["workday"]
    workday.configure({"fail_next": {"status": status, "body": body, "content_type": "text/xml", "count": 3}})
    factory = ConnectorFactory(engine, env=ProviderEnv.from_env(sandbox.env()), settings=fast_settings())
    deliver(engine, factory, "workday")

    [row] = rows(engine)
    assert (row["status"], row["error_kind"], row["attempt_count"]) == ("retrying", "transient", 3)
    tried = attempts(engine, row["delivery_id"])
    assert [a["outcome"] for a in tried] == ["retryable"] * 3 and {a["http_status"] for a in tried} == {status}
    if status == 200:  # a 2xx we cannot read: retried, with the reason
        assert all(a["error"] == REFUSED_AS.get(name, REFUSED) for a in tried)
    for a in tried:
        assert a["response_excerpt"] == body[:2000]  # stored as received: nothing was expanded or inlined
    stored = " ".join(str(v) for r in [row, *tried] for v in r.values())
    assert "lollollollol" not in stored and "root:" not in stored
    assert sandbox.providers["benevity"].snapshot()["requests"] == []  # no DTD or entity was fetched

    DeliveryRun(engine, factory, provider=Provider.WORKDAY, company_ids=["acme"], only_ids=[row["id"]]).run()
    factory.close()
    assert rows(engine)[0]["status"] == "success"  # once the provider answers sanely, it goes out, once
    assert len(workday.snapshot()["accepted"]) == 1


@pytest.mark.parametrize("name", ["billion_laughs", "file_entity", "remote_dtd"])
def test_the_fake_workday_refuses_hostile_requests(sandbox, name: str) -> None:
    """The other direction (the fake parses what we send with the same rules): a DTD-bearing request is a SOAP
    Client fault, nothing is stored, nothing is fetched. (tests/test_workday_soap.py has the file-entity form.)"""
    body = {**HOSTILE_REPLIES, "remote_dtd": _fetching(sandbox)[1]}[name]
    url = workday_soap.endpoint_for(sandbox.provider_url("workday"), fake.TENANT_ID)
    response = requests.post(url, data=body.encode(), headers={"Content-Type": "text/xml"}, timeout=10)
    assert response.status_code == 500 and ("DTDForbidden" in response.text or "amplification" in response.text)
    assert "lollollol" not in response.text and "root:" not in response.text
    assert sandbox.providers["workday"].snapshot()["accepted"] == []
    assert sandbox.providers["benevity"].snapshot()["requests"] == []


# -- a real HTTPS server with a certificate nobody trusts -----------------------------------------------------------
def _self_signed(folder: Path) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "impactin test server")])
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(hours=1))
        .not_valid_after(now + timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(True, False, False, False, False, True, False, False, False), critical=True
        )  # digital_signature, key_cert_sign
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = folder / "cert.pem", folder / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return cert_path, key_path


@dataclass
class Recorder:
    """What a server on loopback saw: HTTP requests read, TLS handshakes that failed."""

    url: str
    requests: list[str] = field(default_factory=list)
    handshake_failures: list[str] = field(default_factory=list)


def _serve(context: ssl.SSLContext | None, host: str = "127.0.0.1") -> tuple[Recorder, ThreadingHTTPServer]:
    recorder = Recorder("")

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:
            return

        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            self.rfile.read(length)
            recorder.requests.append(f"{self.command} {self.path}")
            body = b'{"access_token": "tls-test-token", "token_type": "Bearer", "expires_in": 3600, "id": "x"}'
            self.send_response(201)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    class Server(ThreadingHTTPServer):
        daemon_threads = True

        def get_request(self) -> tuple[socket.socket, Any]:
            sock, address = self.socket.accept()
            if context is None:
                return sock, address
            return context.wrap_socket(sock, server_side=True, do_handshake_on_connect=False), address

        def handle_error(self, request: Any, client_address: Any) -> None:
            import sys

            error = sys.exc_info()[1]
            recorder.handshake_failures.append(f"{type(error).__name__}: {error}")

    server = Server((host, 0), Handler)
    scheme = "https" if context else "http"
    recorder.url = f"{scheme}://127.0.0.1:{server.server_address[1]}"
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    return recorder, server


@pytest.fixture
def https_server(tmp_path: Path) -> Iterator[tuple[Recorder, Path]]:
    cert, key = _self_signed(tmp_path)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    recorder, server = _serve(context)
    try:
        yield recorder, cert
    finally:
        server.shutdown()
        server.server_close()


def _pointed_at(url: str, sandbox: Any, target: str) -> dict[str, str]:
    """The sandbox's credentials, with one provider's endpoints (API and token URL) moved to `url`."""
    env = sandbox.env()
    if target == "benevity":
        env["BENEVITY_API_URL"] = url
    elif target == "goodera":
        env.update(GOODERA_API_URL=url, GOODERA_TOKEN_URL=url + "/oauth/token")
    elif target == "workday-soap":
        env.update(WORKDAY_API_URL=url, WORKDAY_PROTOCOL="soap")
    else:
        env.update(WORKDAY_API_URL=url, WORKDAY_TOKEN_URL=url + "/ccx/oauth2/token", WORKDAY_PROTOCOL="rest")
    return env


TARGETS = ["benevity", "goodera", "workday-soap", "workday-rest"]


def _deliver_to(engine, env: dict[str, str], target: str) -> dict[str, Any]:
    provider = target.split("-")[0]
    add_integration(engine, "acme", provider)
    add_events(engine, events("acme", 1))
    extract(engine, "acme", Provider(provider), env=ProviderEnv.from_env(env))
    factory = ConnectorFactory(engine, env=ProviderEnv.from_env(env), settings=fast_settings())
    try:
        deliver(engine, factory, provider)
    finally:
        factory.close()
    [row] = rows(engine)
    return row


@pytest.mark.parametrize(
    "knobs",
    [{}, {"CURL_CA_BUNDLE": "", "REQUESTS_CA_BUNDLE": "", "PYTHONHTTPSVERIFY": "0"}],
    ids=["default", "env-knobs-that-disable-verification-elsewhere"],
)
@pytest.mark.parametrize("target", TARGETS)
def test_an_untrusted_certificate_is_refused_as_config_before_any_request(
    engine, sandbox, https_server, monkeypatch, target: str, knobs: dict[str, str]
) -> None:
    recorder, _ = https_server
    for name, value in knobs.items():
        monkeypatch.setenv(name, value)
    row = _deliver_to(engine, _pointed_at(recorder.url, sandbox, target), target)
    assert (row["status"], row["error_kind"]) == ("failed", "config")
    assert "certificate verify failed" in row["last_error"] and "self-signed" in row["last_error"], row["last_error"]
    assert recorder.requests == []  # the TLS handshake failed: not one byte of HTTP was read
    assert recorder.handshake_failures, "the client did connect and refuse the certificate"


def test_the_same_server_is_reached_once_its_certificate_is_trusted(engine, sandbox, https_server, monkeypatch) -> None:
    """The control: trusting the certificate (REQUESTS_CA_BUNDLE names a CA file, the supported way for a private
    CA; verification stays on) makes the same delivery reach the server, so the refusal above was verification."""
    recorder, cert = https_server
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(cert))
    row = _deliver_to(engine, _pointed_at(recorder.url, sandbox, "benevity"), "benevity")
    assert row["status"] == "success" and recorder.requests == ["POST /api/v1/impact-events"]


# -- plain http only on loopback ------------------------------------------------------------------------------------
@pytest.fixture
def http_server() -> Iterator[Recorder]:
    recorder, server = _serve(None)
    try:
        yield recorder
    finally:
        server.shutdown()
        server.server_close()


def _elsewhere_names(port: int) -> list[str]:
    """http URLs for this very server under names that are not loopback by themselves: the machine's host name and
    0.0.0.0 both reach it (so a request, if sent, would be seen), but neither is provably loopback."""
    host = socket.gethostname()
    socket.gethostbyname(host)  # resolvable, or this test cannot prove anything: fail loudly
    return [f"http://{host}:{port}", f"http://0.0.0.0:{port}"]


@pytest.mark.parametrize("target", TARGETS)
def test_plain_http_to_a_host_not_loopback_is_refused_before_sending(engine, sandbox, http_server, target: str) -> None:
    port = int(http_server.url.rsplit(":", 1)[1])
    for url in _elsewhere_names(port):
        assert requests.post(url + "/probe", timeout=5).status_code == 201  # it does reach the server ...
    http_server.requests.clear()
    for n, url in enumerate(_elsewhere_names(port)):
        company = f"c{n}"
        provider = target.split("-")[0]
        env = _pointed_at(url, sandbox, target)
        add_integration(engine, company, provider)
        add_events(engine, events(company, 1))
        extract(engine, company, Provider(provider), env=ProviderEnv.from_env(env))
        factory = ConnectorFactory(engine, env=ProviderEnv.from_env(env), settings=fast_settings())
        deliver(engine, factory, provider, [company])
        factory.close()
        [row] = rows(engine, company_id=company)
        assert (row["status"], row["error_kind"], row["attempt_count"]) == ("failed", "config", 0)
        assert "must use https (plain http is allowed only on loopback)" in row["last_error"], row["last_error"]
    assert http_server.requests == []  # ... but we never sent it there


def test_loopback_names_may_use_plain_http() -> None:
    for url in ("http://127.0.0.1:1", "http://localhost:1", "http://[::1]:1", "http://127.8.9.10:1"):
        assert require_secure_url("X_URL", url) == url
    for url in ("http://10.0.0.1", "http://vm", "http://0.0.0.0", "http://127.0.0.1.example.com", "ftp://x"):
        with pytest.raises(ConfigError, match=r"X_URL="):
            require_secure_url("X_URL", url)
    assert new_session().verify is True


# -- nothing can turn verification off ------------------------------------------------------------------------------
INSECURE = re.compile(
    r"verify\s*=\s*False|\.verify\s*=|OAUTHLIB_INSECURE_TRANSPORT|CERT_NONE|check_hostname\s*=\s*False"
    r"|_create_unverified_context|disable_warnings|InsecureRequestWarning"
)


def test_no_switch_turns_tls_verification_off_anywhere() -> None:
    """Not even the sandbox: loopback token URLs work over plain http without a process-wide switch."""
    offenders = [
        f"{path.relative_to(PRODUCT.parent)}:{n}: {line.strip()}"
        for path in sorted(PRODUCT.rglob("*.py"))
        for n, line in enumerate(path.read_text().splitlines(), 1)
        if INSECURE.search(line)
    ]
    assert offenders == []
    assert len(list(PRODUCT.rglob("*.py"))) > 50  # the scan saw the product code
    samples = (
        'os.environ["OAUTHLIB_INSECURE_TRANSPORT"] = "1"',
        "session.verify = False",
        "requests.get(u, verify=False)",
    )
    assert all(INSECURE.search(sample) for sample in samples)  # and the pattern does find what it looks for
