"""The secret scan: run the pipeline (all three providers, both Workday protocols, per-company encrypted credentials,
provider errors that echo our credentials back) and the API with known secret values, then read everything that was
written and find none of them, nor any access or refresh token the fake token endpoints issued.

Scanned: the `impactin` CLI's stdout and stderr (`impactin run --log-level DEBUG`, so every library's DEBUG lines
too; JSON log lines on SQLite, text on PostgreSQL, so both formats are covered), the API process's own output, every
API response (bodies and headers), every column of every table in the warehouse, the Dagster run storage and event
log (run configs, tags, every event with its metadata, through Dagster's API) and the raw bytes of every file the
run left behind (the Dagster home, the state folder, the SQLite warehouse and its WAL).

The provider secrets contain `" \\ & < > / % +`, a space and non-ASCII letters, so every encoding changes them, and
the providers' error answers quote them JSON-escaped, XML-escaped, percent-encoded and as HTTP Basic. The scan looks
for every spelling of `tests.secret_spellings` of each secret (the Basic ones with its client id or user name).
"""

import html
import json
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote_plus

import dagster as dg
import pytest
import requests
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from impactin_pipelines.providers.benevity.fake import BenevitySandbox
from impactin_pipelines.providers.goodera.fake import GooderaSandbox
from impactin_pipelines.providers.workday.fake import WorkdaySandbox
from impactin_pipelines.sandbox.core import Request, Response
from impactin_pipelines.sandbox.oauth import OAuthTokenIssuer
from impactin_pipelines.sandbox.server import SandboxServer
from impactin_pipelines.security.crypto import KeyRing
from impactin_pipelines.store.api_keys import parse_token
from impactin_pipelines.store.schema import impact_provider_tokens
from impactin_pipelines.store.source import integrations
from tests.cli_support import IMPACTIN, cli_env, run_cli
from tests.secret_spellings import b64, json_escaped, spellings
from tests.support import add_events, add_integration, event, events, rows

BENEVITY_API_KEY = 'scan-bnv-key/"7f3a91"\\&<x>%2B+'  # header values: printable ASCII
BENEVITY_SIGNATURE_SECRET = 'scan-bnv-signing&<p>/91c2de\\%+"'
GOODERA_CLIENT_ID = "scan-goodera-client"
GOODERA_CLIENT_SECRET = 'scan gdr-secret+5d1e77/&<"é%>\\'
WORKDAY_USERNAME = "isu-scan@sandbox_tenant"
WORKDAY_PASSWORD = 'scan-wd-pass&lt;a8b4c0<p>"/%+\\ü'
WORKDAY_CLIENT_ID = "scan-workday-client"
WORKDAY_CLIENT_SECRET = 'scan-wd-client/2c6f13"&<>%20+\\'
NEW_KEY = "tQk8bHn1yG0mJ2vX6cR4pW9sZ3aL5eD7fU1iO0kE2jA="
OLD_KEY = "Zp3nR6tW9yB2cF5hK8mQ1sV4xA7dG0jL3oT6uY9bE2w="

SECRETS: dict[str, tuple[str, str | None]] = {  # name: (secret, the user it goes with in HTTP Basic)
    "BENEVITY_API_KEY": (BENEVITY_API_KEY, None),
    "BENEVITY_SIGNATURE_SECRET": (BENEVITY_SIGNATURE_SECRET, None),
    "GOODERA_CLIENT_SECRET": (GOODERA_CLIENT_SECRET, GOODERA_CLIENT_ID),
    "WORKDAY_PASSWORD": (WORKDAY_PASSWORD, WORKDAY_USERNAME),
    "WORKDAY_CLIENT_SECRET": (WORKDAY_CLIENT_SECRET, WORKDAY_CLIENT_ID),
    "IMPACTIN_ENCRYPTION_KEY (new)": (NEW_KEY, None),
    "IMPACTIN_ENCRYPTION_KEY (old)": (OLD_KEY, None),
}
API = "/v1/impact-in"


def record_tokens(issuer: OAuthTokenIssuer, issued: list[str]) -> None:
    """Keep every access and refresh token the fake hands out (it forgets refresh tokens itself)."""
    answer = issuer.token_response

    def token_response(request: Request) -> Response:
        response = answer(request)
        if response.status == 200:
            doc = json.loads(response.body)
            issued.extend([doc["access_token"], doc["refresh_token"]])
        return response

    # wraps this fake's handler in place (mypy refuses any assignment to a method)
    issuer.token_response = token_response  # type: ignore[method-assign]


@pytest.fixture
def scan_sandbox() -> Iterator[tuple[SandboxServer, list[str]]]:
    workday = WorkdaySandbox(
        username=WORKDAY_USERNAME,
        password=WORKDAY_PASSWORD,
        client_id=WORKDAY_CLIENT_ID,
        client_secret=WORKDAY_CLIENT_SECRET,
    )
    goodera = GooderaSandbox(GOODERA_CLIENT_ID, GOODERA_CLIENT_SECRET)
    issued: list[str] = []
    for issuer in (goodera.oauth, workday.oauth):
        record_tokens(issuer, issued)
    providers = [BenevitySandbox(BENEVITY_API_KEY, BENEVITY_SIGNATURE_SECRET), goodera, workday]
    with SandboxServer(providers=providers) as server:
        yield server, issued


def _seed(engine: Engine) -> None:
    """acme: Benevity from the environment, Goodera with its client secret only in settings (encrypted). globex:
    Benevity with its own encrypted key and signing secret. initech: Workday SOAP, password only in settings.
    umbrella: Workday REST."""
    keyring = KeyRing([OLD_KEY])  # stored under the old key: the rotation below moves them

    def enc(value: str) -> dict[str, str]:
        return {"encrypted": keyring.encrypt(value)}

    add_integration(engine, "acme", "benevity")
    add_integration(engine, "acme", "goodera", settings={"client_secret": enc(GOODERA_CLIENT_SECRET)})
    add_integration(
        engine,
        "globex",
        "benevity",
        settings={"api_key": enc(BENEVITY_API_KEY), "signature_secret": enc(BENEVITY_SIGNATURE_SECRET)},
    )
    add_integration(engine, "initech", "workday", settings={"protocol": "soap", "password": enc(WORKDAY_PASSWORD)})
    add_integration(engine, "umbrella", "workday", settings={"protocol": "rest"})
    add_events(
        engine,
        [
            *events("acme", 3),
            event("acme-bad", "acme", value="NaN"),
            *events("globex", 2),
            *events("initech", 3),
            *events("umbrella", 2),
        ],
    )


def _faults(sandbox: SandboxServer) -> None:
    """Providers whose error answers quote our credentials back, spelled the way their formats spell them (JSON
    strings, HTML pages, SOAP faults, echoed form bodies, character references, HTTP Basic): whatever we store or
    print of them is scrubbed. (Goodera's API gets its turn in the API session, once a token is stored: a fault
    queued now would hit the token endpoint first.)"""
    key, signing = BENEVITY_API_KEY, BENEVITY_SIGNATURE_SECRET
    page = f"<html><body><p>X-API-Key {html.escape(key)} refused (signed with {html.escape(signing)})</p></body></html>"
    echo = {
        "error": "invalid",
        "echo": f"X-API-Key: {key} signed {signing}",
        "form": f"api_key={quote_plus(key)}&signing_secret={quote_plus(signing)}",
        "xml": "".join(f"&#{ord(c)};" for c in signing),
    }
    sandbox.providers["benevity"].configure(
        {
            "fail_next": [
                {"status": 503, "retry_after": "0", "body": page, "content_type": "text/html"},
                {"status": 400, "body": json.dumps(echo)},
            ]
        }
    )
    secret, client = GOODERA_CLIENT_SECRET, GOODERA_CLIENT_ID
    request = f"client_id={client}&client_secret={quote_plus(secret)}; Authorization: Basic {b64(f'{client}:{secret}')}"
    refused = {"error": "invalid_client", "error_description": f"client secret {secret} is unknown ({request})"}
    sandbox.providers["goodera"].configure({"token_fail_next": {"status": 401, "body": json.dumps(refused)}})
    password = WORKDAY_PASSWORD  # the fault's XML escapes it, and its JSON spelling inside it
    basic = b64(f"{WORKDAY_USERNAME}:{password}")
    message = f"password {password} is not accepted (as sent: {json_escaped(password)}; Basic {basic})"
    secret, client = WORKDAY_CLIENT_SECRET, WORKDAY_CLIENT_ID
    busy = {
        "error": "temporarily_unavailable",
        "error_description": f"busy; retry client_secret={quote_plus(secret)} or Basic {b64(f'{client}:{secret}')}",
    }
    sandbox.providers["workday"].configure(
        {
            "soap_fault_next": {"kind": "client", "message": message},
            "token_fail_next": {"status": 503, "body": json.dumps(busy)},
        }
    )


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _api_session(
    sandbox: SandboxServer,
    env: dict[str, str],
    admin: str,
    company: str,
    ids: list[str],
    rejected: list[str],
    folder: Path,
) -> tuple[list[str], str]:
    """Start `impactin api`, exercise every route (and its refusals), stop it; returns (responses, its output)."""
    port = _free_port()
    output = folder / "api-output.log"  # a file, not a pipe: a chatty process can never block on it
    with output.open("w") as sink:
        process = subprocess.Popen(
            [*IMPACTIN, "api", "--port", str(port), "--log-level", "debug"], env=env, stdout=sink, stderr=sink
        )
    base = f"http://127.0.0.1:{port}"
    seen: list[str] = []
    try:
        for _ in range(200):  # up to ~20 s for the process to listen
            try:
                requests.get(base + "/health/liveness", timeout=1)
                break
            except requests.ConnectionError:
                time.sleep(0.1)
        http = requests.Session()
        auth = {"Authorization": f"Bearer {admin}"}

        def call(method: str, path: str, headers: dict[str, str] | None = None, **kwargs: Any) -> requests.Response:
            response = http.request(method, base + path, headers=headers or auth, timeout=60, **kwargs)
            seen.append(f"{method} {path} {response.status_code} {dict(response.headers)} {response.text}")
            return response

        for path in ("/health", "/health/liveness", "/health/readiness", "/openapi.json"):
            call("GET", path, headers={})
        listed = call("GET", f"{API}/deliveries", params={"limit": 100}).json()["data"]
        assert len(listed) == len(ids)
        for delivery_id in ids:
            assert call("GET", f"{API}/deliveries/{delivery_id}").status_code == 200
        call("GET", f"{API}/stats")
        failed = [i for i in rejected if any(d["id"] == i and d["status"] == "failed" for d in listed)]
        assert failed, "the faults left rejected rows to replay"
        call("POST", f"{API}/deliveries/{failed[0]}/replay")
        call("POST", f"{API}/deliveries/bulk-replay", json={"ids": failed})
        call("POST", f"{API}/deliveries/retry-all-failed", json={"companyId": "globex"})
        deliver = {
            "companyId": "acme",
            "provider": "goodera",
            "event": {
                "eventId": "api-evt-1",
                "userId": "user_9",
                "eventType": "volunteer_hours",
                "timestamp": "2025-11-14T10:00:00Z",
                "value": 2,
                "unit": "hours",
                "outcomeScores": {"community_engagement": 0.5},
            },
        }
        # Goodera refuses the stored token, quoting the client secret: 401 -> a new token -> delivered
        echo = json.dumps(
            {
                "error": "invalid_token",
                "client_secret": GOODERA_CLIENT_SECRET,
                "form": quote_plus(GOODERA_CLIENT_SECRET),
            }
        )
        sandbox.providers["goodera"].configure({"fail_next": {"status": 401, "body": echo}})
        created = call("POST", f"{API}/deliver", headers={"Authorization": f"Bearer {company}"}, json=deliver)
        assert created.status_code == 201 and created.json()["data"]["status"] == "success", created.text
        call("GET", f"{API}/deliveries", headers={"Authorization": f"Bearer {admin}x"})  # a wrong key: 401
        call("GET", f"{API}/deliveries", headers={"Authorization": f"Bearer {company}"}, params={"companyId": "globex"})
    finally:
        process.terminate()  # the process this test started, by its handle
        process.wait(timeout=30)
    return seen, output.read_text()


def _tables(engine: Engine) -> dict[str, list[str]]:
    """Every value of every column of every table, as text."""
    found: dict[str, list[str]] = {}
    with engine.connect() as conn:
        for name in sa.inspect(conn).get_table_names():
            quoted = conn.dialect.identifier_preparer.quote(name)
            values = conn.exec_driver_sql(f"SELECT * FROM {quoted}").all()  # raw values, no type processing
            found[name] = [_as_text(value) for row in values for value in row]
    return found


def _as_text(value: object) -> str:
    """Text as stored (repr would double every backslash and hide a secret that has one)."""
    if isinstance(value, str):
        return value
    if isinstance(value, bytes | memoryview):
        return bytes(value).decode("utf-8", "surrogateescape")
    return repr(value)


def _dagster_records(home: Path) -> list[str]:
    """Run configs, tags and every event-log entry (messages, metadata, errors), through Dagster's own API."""
    texts: list[str] = []
    with dg.DagsterInstance.from_config(str(home)) as instance:
        for run in instance.get_runs():
            texts.append(json.dumps(run.run_config, default=str))
            texts.append(json.dumps(dict(run.tags)))
            texts.extend(dg.serialize_value(entry) for entry in instance.all_logs(run.run_id))
    return texts


def _needles(secrets: dict[str, tuple[str, str | None]]) -> dict[str, bytes]:
    """Every spelling of every secret (HTTP Basic with the user it goes with), as bytes to find in any text or file."""
    needles: dict[str, bytes] = {}
    for name, (secret, user) in secrets.items():
        seen: set[str] = set()
        for how, value in spellings(secret, user).items():
            if value not in seen:
                seen.add(value)
                needles[f"{name} ({how})"] = value.encode("utf-8")
    return needles


def _leaks(text: str | bytes, needles: dict[str, bytes]) -> list[str]:
    data = text if isinstance(text, bytes) else text.encode("utf-8", "surrogateescape")
    return [name for name, value in needles.items() if value in data]


def test_no_secret_or_token_is_written_anywhere(engine, warehouse_url, tmp_path, scan_sandbox) -> None:
    sandbox, issued = scan_sandbox
    log_format = "json" if engine.dialect.name == "sqlite" else "text"
    _seed(engine)
    _faults(sandbox)
    env = cli_env(
        tmp_path,
        warehouse_url,
        sandbox,
        IMPACTIN_ENCRYPTION_KEY=f"{NEW_KEY},{OLD_KEY}",
        IMPACTIN_LOG_FORMAT=log_format,
        GOODERA_RATE_LIMIT="6000/minute",
    )
    for only_in_settings in ("GOODERA_CLIENT_SECRET", "WORKDAY_PASSWORD"):
        del env[only_in_settings]
    outputs: dict[str, str] = {}

    def cli(*args: str, scan: bool = True) -> Any:
        done = run_cli(list(args), env)
        if scan:
            outputs[" ".join(args)] = done.stdout + done.stderr
        else:
            outputs[" ".join(args) + " (stderr)"] = done.stderr
        return done

    run = cli("run", "--log-level", "DEBUG", "--json")
    # Goodera's token endpoint refuses the credentials on purpose (its error echoes them), so rows fail for
    # configuration and `impactin run` says so with exit 1; a crash would be another code.
    assert run.returncode == 1, run.stderr[-3000:]
    assert json.loads(run.stdout)["configFailures"], run.stdout[-3000:]
    if log_format == "json":
        lines = [line for line in run.stderr.splitlines() if line.strip()]
        assert lines and all(line.startswith("{") for line in lines)  # really the JSON format, at DEBUG
        assert any('"level": "DEBUG"' in line for line in lines)
    else:
        assert "DEBUG " in run.stderr
    by_status = {(r["company_id"], r["provider"], r["status"], r["error_kind"]) for r in rows(engine)}
    assert ("umbrella", "workday", "success", None) in by_status
    assert ("initech", "workday", "failed", "rejected") in by_status  # the SOAP fault quoting the password
    assert any(r["status"] == "failed" and r["error_kind"] == "rejected" for r in rows(engine, provider="benevity"))
    goodera = [r for r in rows(engine, provider="goodera") if r["payload"]]  # the token endpoint quoting the secret
    assert goodera and all("client secret *** is unknown" in r["last_error"] for r in goodera)

    sandbox.providers["goodera"].configure({"expire_tokens": True})  # the next Goodera call gets a fresh token
    every = rows(engine)
    show = [r["id"] for r in every if r["error_kind"] == "rejected"]
    cli("deliveries", "list", "--json", "--limit", "100")
    cli("deliveries", "show", show[0], "--json")
    cli("deliveries", "show", show[1])
    samples = [next(r["id"] for r in every if r["provider"] == p and r["payload"]) for p in ("benevity", "goodera")]
    dry = cli("replay", *samples, *show, "--dry-run", "--json")  # every provider's request, secrets masked
    assert len(json.loads(dry.stdout)["results"]) == 4, dry.stdout
    cli("replay", show[0], "--json")
    cli("stats", "--json")
    cli("providers", "check", "--json")
    rotated = cli("keys", "rotate", "--json")
    assert rotated.returncode == 0 and json.loads(rotated.stdout)["secrets"]["rotated"] == 4, rotated.stdout
    admin = cli("api-keys", "create", "--admin", scan=False).stdout.strip()
    company = cli("api-keys", "create", "--company", "acme", scan=False).stdout.strip()
    assert admin.startswith("imk_") and company.startswith("imk_")
    responses, api_output = _api_session(sandbox, env, admin, company, [r["id"] for r in rows(engine)], show, tmp_path)
    outputs["api --log-level debug"] = api_output

    assert len(issued) >= 6  # access and refresh tokens: Goodera's check and its 401, Workday REST's run and check
    secrets = dict(SECRETS)
    secrets.update({f"issued token #{i}": (token, None) for i, token in enumerate(issued)})
    for name, key in (("admin API key", admin), ("company API key", company)):
        secrets[name] = (key, None)
        parsed = parse_token(key)
        assert parsed is not None
        secrets[f"{name} (secret part)"] = (parsed[1], None)
    needles = _needles(secrets)

    # the scan can see what it looks for: every spelling, and the secrets are stored, encrypted, and the ciphertexts
    # open to them
    assert all(len(value) >= 16 for value in needles.values())
    assert _leaks(f"x{GOODERA_CLIENT_SECRET}x", needles) == ["GOODERA_CLIENT_SECRET (literal)"]
    assert "GOODERA_CLIENT_SECRET (JSON)" in _leaks(json.dumps({"s": GOODERA_CLIENT_SECRET}), needles)
    assert "WORKDAY_PASSWORD (HTML (html.escape))" in _leaks(html.escape(WORKDAY_PASSWORD), needles)
    assert "WORKDAY_CLIENT_SECRET (form (quote_plus))" in _leaks(quote_plus(WORKDAY_CLIENT_SECRET), needles)
    basic = b64(f"{GOODERA_CLIENT_ID}:{GOODERA_CLIENT_SECRET}")
    assert _leaks(f"Basic {basic}", needles) == ["GOODERA_CLIENT_SECRET (HTTP Basic)"]
    current = KeyRing([NEW_KEY])
    with engine.connect() as conn:
        stored = conn.execute(sa.select(impact_provider_tokens.c.access_token_encrypted)).scalars().all()
    assert len(stored) == 2 and {current.decrypt(c) for c in stored} <= set(issued)
    acme = json.loads(next(i.settings for i in integrations(engine) if i.provider == "goodera"))
    assert current.decrypt(acme["client_secret"]["encrypted"]) == GOODERA_CLIENT_SECRET
    tables = _tables(engine)
    assert {"impact_provider_tokens", "company_integrations", "impact_delivery_attempts", "impact_api_keys"} <= set(
        tables
    )

    found: dict[str, list[str]] = {}
    for where, text in outputs.items():
        found[f"CLI `impactin {where}`"] = _leaks(text, needles)
    for i, text in enumerate(responses):
        found[f"API response #{i}: {text[:60]}"] = _leaks(text, needles)
    for table, values in tables.items():
        found[f"table {table}"] = _leaks(" ".join(values), needles)
    home = tmp_path / "dagster_home"
    records = _dagster_records(home)
    assert records and any("impact_deliveries" in r for r in records)  # the event log was read
    found["Dagster runs and event log"] = _leaks("\n".join(records), needles)
    files = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert any(p.suffix == ".db" for p in files) and any(home in p.parents for p in files)
    for path in files:
        found[f"file {path.relative_to(tmp_path)}"] = _leaks(path.read_bytes(), needles)
    leaks = {where: names for where, names in found.items() if names}
    assert leaks == {}, json.dumps(leaks, indent=2)
