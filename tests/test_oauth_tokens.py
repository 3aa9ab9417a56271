"""OAuth2 client credentials against the fake token endpoint over loopback, tokens in the real warehouse (both
backends): first fetch, encryption at rest, reuse across instances and processes, expiry skew, 401 invalidation,
single-flight refresh across threads and processes, and the two ways a token endpoint fails."""

import dataclasses
import json
import os
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime, timedelta

import pytest
import requests
import sqlalchemy as sa

from impactin_pipelines.connectors.http import new_session
from impactin_pipelines.connectors.oauth import OAuthClientCredentials, TokenEndpointUnavailable, TokenRejected
from impactin_pipelines.domain.errors import ConfigError
from impactin_pipelines.providers.goodera.fake import CLIENT_ID, CLIENT_SECRET
from impactin_pipelines.sandbox.core import Request
from impactin_pipelines.sandbox.oauth import OAuthTokenIssuer
from impactin_pipelines.sandbox.server import SandboxServer
from impactin_pipelines.security.crypto import generate_key, load_keyring
from impactin_pipelines.store.schema import impact_provider_tokens
from impactin_pipelines.store.tokens import credential_key

KEY = generate_key()

CHILD = """
import os
from impactin_pipelines.connectors.http import new_session
from impactin_pipelines.connectors.oauth import OAuthClientCredentials
from impactin_pipelines.security.crypto import load_keyring
from impactin_pipelines.settings import warehouse_url
from impactin_pipelines.store.engine import make_engine

oauth = OAuthClientCredentials(
    engine=make_engine(warehouse_url()), keyring=load_keyring, company_id="acme", provider="goodera",
    token_url=os.environ["GOODERA_TOKEN_URL"], client_id=os.environ["GOODERA_CLIENT_ID"],
    client_secret=os.environ["GOODERA_CLIENT_SECRET"], session=new_session(), timeout=(5.0, 20.0),
)
print(oauth.bearer())
"""


@pytest.fixture(autouse=True)
def _env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("IMPACTIN_ENCRYPTION_KEY", KEY)


def goodera(sandbox):
    return sandbox.providers["goodera"]


def oauth_for(engine, sandbox, *, company: str = "acme", **overrides) -> OAuthClientCredentials:
    args = {
        "engine": engine,
        "keyring": load_keyring,
        "company_id": company,
        "provider": "goodera",
        "token_url": sandbox.provider_url("goodera") + "/oauth/token",
        "client_id": CLIENT_ID,
        "client_secret": CLIENT_SECRET,
        "session": new_session(),
        "timeout": (2.0, 5.0),
        **overrides,
    }
    return OAuthClientCredentials(**args)


def token_requests(sandbox) -> int:
    return goodera(sandbox).oauth.stats()["token_requests"]


def stored_row(engine) -> dict:
    t = impact_provider_tokens
    with engine.connect() as conn:
        row = conn.execute(sa.select(t).where(t.c.provider == "goodera")).one()
    return dict(row._mapping)


def set_times(engine, *, issued_ago_s: float, expires_in_s: float) -> None:
    now = datetime.now(UTC)
    with engine.begin() as conn:
        conn.execute(
            sa.update(impact_provider_tokens).values(
                updated_at=now - timedelta(seconds=issued_ago_s), expires_at=now + timedelta(seconds=expires_in_s)
            )
        )


def child_env(engine, sandbox) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GOODERA_", "BENEVITY_", "WORKDAY_"))}
    env.update(sandbox.env())
    env["IMPACTIN_WAREHOUSE_URL"] = engine.url.render_as_string(hide_password=False)
    return env


def run_children(engine, sandbox, n: int) -> list[str]:
    env = child_env(engine, sandbox)
    children = [
        subprocess.Popen(
            [sys.executable, "-c", CHILD], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        for _ in range(n)
    ]
    tokens = []
    for child in children:
        out, err = child.communicate(timeout=60)
        assert child.returncode == 0, err[-2000:]
        tokens.append(out.strip())
    return tokens


# -- first fetch, storage -----------------------------------------------------------------------------------------
def test_first_fetch_is_form_encoded_and_stored_encrypted(engine, sandbox) -> None:
    oauth = oauth_for(engine, sandbox)
    token = oauth.bearer()
    assert goodera(sandbox).oauth.is_valid(token)
    assert goodera(sandbox).oauth.stats()["auth_methods"] == ["body"]  # the guide's form: credentials in the body
    row = stored_row(engine)
    assert row["credential_key"] == credential_key(oauth.token_url, CLIENT_ID)
    assert CLIENT_ID not in row["credential_key"]
    for column, value in row.items():  # neither the token nor the secret is readable in any column
        assert token not in str(value) and CLIENT_SECRET not in str(value), column
    assert load_keyring().decrypt(row["access_token_encrypted"]) == token
    assert row["refresh_token_encrypted"] and load_keyring().decrypt(row["refresh_token_encrypted"]).startswith("ref_")
    assert row["token_type"] == "Bearer"
    assert timedelta(seconds=3590) < row["expires_at"] - row["updated_at"] <= timedelta(seconds=3600)
    assert oauth.bearer() == token and token_requests(sandbox) == 1  # the next call is served from memory


def test_a_new_instance_reuses_the_stored_token(engine, sandbox) -> None:
    token = oauth_for(engine, sandbox).bearer()
    assert oauth_for(engine, sandbox).bearer() == token
    assert token_requests(sandbox) == 1


def test_two_processes_reuse_the_stored_token(engine, sandbox) -> None:
    token = oauth_for(engine, sandbox).bearer()
    assert run_children(engine, sandbox, 2) == [token, token]
    assert token_requests(sandbox) == 1


def test_changed_credentials_never_reuse_a_token(engine, sandbox) -> None:
    first = oauth_for(engine, sandbox).bearer()
    moved = sandbox.provider_url("goodera") + "/oauth/token?v=2"  # another token URL, same fake endpoint
    second = oauth_for(engine, sandbox, token_url=moved).bearer()
    assert second != first and token_requests(sandbox) == 2
    with engine.connect() as conn:  # each credentials' own row
        keys = set(conn.execute(sa.select(impact_provider_tokens.c.credential_key)).scalars())
    assert keys == {credential_key(oauth_for(engine, sandbox).token_url, CLIENT_ID), credential_key(moved, CLIENT_ID)}


def test_companies_sharing_credentials_share_one_token(engine, sandbox) -> None:
    """A client-credentials token is the client's: a thousand companies on the platform's credentials cost the
    token endpoint one request, not a thousand. Other credentials (token URL, client id, scope) get their own."""
    shared = [oauth_for(engine, sandbox, company=company).bearer() for company in ("acme", "globex", "initech")]
    assert len(set(shared)) == 1 and token_requests(sandbox) == 1
    moved = sandbox.provider_url("goodera") + "/oauth/token?v=2"
    own = oauth_for(engine, sandbox, company="umbrella", token_url=moved).bearer()
    scoped = oauth_for(engine, sandbox, company="hooli", scope="impact:write").bearer()
    assert len({shared[0], own, scoped}) == 3 and token_requests(sandbox) == 3
    with engine.connect() as conn:  # one row per credentials
        keys = conn.execute(sa.select(impact_provider_tokens.c.credential_key)).scalars().all()
    url = sandbox.provider_url("goodera") + "/oauth/token"
    assert sorted(keys) == sorted(
        [
            credential_key(url, CLIENT_ID),
            credential_key(moved, CLIENT_ID),
            credential_key(url, CLIENT_ID, "impact:write"),
        ]
    )


def test_a_company_with_credentials_of_its_own_has_a_token_of_its_own(engine, sandbox) -> None:
    """Connectors of companies on the environment's credentials share a token; one whose settings give any of its
    credentials (here its own copy of the secret) fetches its own, so its settings alone decide whether it works."""
    from impactin_pipelines.domain.providers import Provider
    from tests.support import add_integration, factory_for

    add_integration(engine, "acme", "goodera")
    add_integration(engine, "globex", "goodera")
    own = {"client_secret": {"encrypted": load_keyring().encrypt(CLIENT_SECRET)}}
    add_integration(engine, "initech", "goodera", settings=own)
    factory = factory_for(engine, sandbox)
    bearer = {c: factory.connector(c, Provider.GOODERA).oauth.bearer() for c in ("acme", "globex", "initech")}  # type: ignore[attr-defined]
    factory.close()
    assert bearer["acme"] == bearer["globex"] != bearer["initech"]
    assert token_requests(sandbox) == 2


def test_undecryptable_token_is_replaced(engine, sandbox, monkeypatch) -> None:
    old = oauth_for(engine, sandbox).bearer()
    monkeypatch.setenv("IMPACTIN_ENCRYPTION_KEY", generate_key())  # the old key was rotated away
    new = oauth_for(engine, sandbox).bearer()
    assert new != old and token_requests(sandbox) == 2
    assert load_keyring().decrypt(stored_row(engine)["access_token_encrypted"]) == new


# -- plain http: loopback only, and no process-wide switch -------------------------------------------------------
def test_a_loopback_token_url_works_over_plain_http_with_no_switch(engine, sandbox) -> None:
    assert "OAUTHLIB_INSECURE_TRANSPORT" not in os.environ
    url = sandbox.provider_url("goodera") + "/oauth/token"
    localhost = url.replace("127.0.0.1", "localhost")
    for company, token_url in (("acme", url), ("globex", localhost)):
        assert token_url.startswith("http://")
        assert goodera(sandbox).oauth.is_valid(
            oauth_for(engine, sandbox, company=company, token_url=token_url).bearer()
        )
    assert "OAUTHLIB_INSECURE_TRANSPORT" not in os.environ  # and nothing set it on the way
    assert "OAUTHLIB_INSECURE_TRANSPORT" not in SandboxServer.env_for("http://127.0.0.1:1")  # nor tells anyone to


class _Recorder(requests.adapters.HTTPAdapter):
    def __init__(self) -> None:
        super().__init__()
        self.sent: list[str] = []

    def send(self, request, *args, **kwargs):
        self.sent.append(request.url)
        raise requests.exceptions.ConnectionError("the test sends nothing")


@pytest.mark.parametrize("switch_set", [False, True])
def test_plain_http_to_any_other_host_is_refused_before_anything_is_sent(
    engine, sandbox, monkeypatch, switch_set
) -> None:
    if switch_set:  # oauthlib's switch changes nothing: the rule is ours
        monkeypatch.setenv("OAUTHLIB_INSECURE_TRANSPORT", "1")
    recorder, session = _Recorder(), new_session()
    session.mount("http://", recorder)
    session.mount("https://", recorder)
    for url in ("http://10.0.0.1/oauth/token", "http://goodera.example.com/oauth/token"):
        with pytest.raises(ConfigError, match=r"token URL='http://[^']+' must use https") as raised:
            oauth_for(engine, sandbox, token_url=url, session=session).bearer()
        assert not isinstance(raised.value, TokenRejected)
    assert recorder.sent == []


# -- a 401 from the API: stale or current ---------------------------------------------------------------------------
def test_refused_tells_a_stale_token_from_a_current_one(engine, sandbox) -> None:
    oauth = oauth_for(engine, sandbox)
    first = oauth.token()
    assert oauth.refused(first) is False  # a current token the API turned down: it is forgotten ...
    second = oauth.token()
    assert second.access_token != first.access_token and token_requests(sandbox) == 2  # ... and re-fetched
    assert oauth_for(engine, sandbox).refused(first) is True  # a late 401 for a token already replaced
    assert oauth.token() == second and oauth_for(engine, sandbox).token() == second  # which stays in use
    expired = dataclasses.replace(second, expires_at=datetime.now(UTC) - timedelta(seconds=1))
    assert oauth.refused(expired) is True  # past its expiry when the answer came
    assert oauth.token() != second and token_requests(sandbox) == 3


# -- expiry ---------------------------------------------------------------------------------------------------------
def test_a_token_inside_the_skew_is_refetched_one_outside_is_reused(engine, sandbox) -> None:
    first = oauth_for(engine, sandbox).bearer()
    set_times(engine, issued_ago_s=3480, expires_in_s=120)  # two minutes left: outside the 60 s skew
    assert oauth_for(engine, sandbox, skew_s=60).bearer() == first
    set_times(engine, issued_ago_s=3570, expires_in_s=30)  # 30 s left: inside the skew
    second = oauth_for(engine, sandbox, skew_s=60).bearer()
    assert second != first and token_requests(sandbox) == 2
    assert stored_row(engine)["expires_at"] > datetime.now(UTC) + timedelta(seconds=3000)


def test_short_lived_tokens_are_not_refetched_on_every_call(engine, sandbox) -> None:
    goodera(sandbox).configure({"token_expires_in": 30})  # shorter than the skew: refresh at half-life instead
    oauth = oauth_for(engine, sandbox, skew_s=60)
    assert len({oauth.bearer() for _ in range(5)}) == 1
    assert token_requests(sandbox) == 1


def test_the_fake_refuses_a_token_once_it_expires() -> None:
    clock = [1000.0]
    issuer = OAuthTokenIssuer("id", "secret", expires_in=10, clock=lambda: clock[0])
    form = b"grant_type=client_credentials&client_id=id&client_secret=secret"
    response = issuer.token_response(
        Request("POST", "/oauth/token", {"content-type": "application/x-www-form-urlencoded"}, form)
    )
    token = json.loads(response.body)["access_token"]
    api = Request("POST", "/x", {"authorization": f"Bearer {token}"}, b"")
    assert issuer.refuse_bearer(api) is None
    clock[0] += 10
    refused = issuer.refuse_bearer(api)
    assert refused is not None and refused.status == 401 and b"invalid_token" in refused.body


# -- 401 from the API -------------------------------------------------------------------------------------------------
def test_invalidate_refetches_once_and_only_the_token_it_names(engine, sandbox) -> None:
    oauth = oauth_for(engine, sandbox)
    first = oauth.bearer()
    goodera(sandbox).configure({"expire_tokens": True})  # the provider forgot it: the API now answers 401
    oauth.invalidate(first)
    second = oauth.bearer()
    assert second != first and goodera(sandbox).oauth.is_valid(second)
    other = oauth_for(engine, sandbox)  # a late 401 for the old token elsewhere must not throw the new one away
    other.invalidate(first)
    assert other.bearer() == second and oauth.bearer() == second
    assert token_requests(sandbox) == 2


# -- single flight -----------------------------------------------------------------------------------------------------
def test_concurrent_threads_fetch_once(engine, sandbox) -> None:
    goodera(sandbox).configure({"latency_ms": 300})  # a slow token endpoint widens the race
    instances = [oauth_for(engine, sandbox) for _ in range(6)]
    barrier = threading.Barrier(len(instances))
    tokens: list[str] = []

    def ask(oauth: OAuthClientCredentials) -> None:
        barrier.wait(timeout=10)
        tokens.append(oauth.bearer())

    threads = [threading.Thread(target=ask, args=(o,)) for o in instances]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert len(tokens) == 6 and len(set(tokens)) == 1
    assert token_requests(sandbox) == 1


def test_concurrent_processes_fetch_once(engine, sandbox) -> None:
    goodera(sandbox).configure({"latency_ms": 1500})  # longer than the children's start-up spread
    tokens = run_children(engine, sandbox, 3)
    assert len(set(tokens)) == 1 and goodera(sandbox).oauth.is_valid(tokens[0])
    assert token_requests(sandbox) == 1


def test_threads_queued_behind_a_failed_refresh_share_its_error(engine, sandbox) -> None:
    goodera(sandbox).configure({"latency_ms": 300, "token_fail_next": {"status": 503, "count": 10}})
    instances = [oauth_for(engine, sandbox) for _ in range(4)]
    barrier = threading.Barrier(len(instances))
    errors: list[BaseException] = []

    def ask(oauth: OAuthClientCredentials) -> None:
        barrier.wait(timeout=10)
        try:
            oauth.bearer()
        except TokenEndpointUnavailable as exc:
            errors.append(exc)

    threads = [threading.Thread(target=ask, args=(o,)) for o in instances]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert len(errors) == 4 and all(getattr(e, "http_status", None) == 503 for e in errors)
    assert token_requests(sandbox) == 1


# -- a token endpoint that fails ---------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "fault",
    [
        {"status": 503, "retry_after": "7"},
        {"status": 502, "body": "<html>bad gateway</html>", "content_type": "text/html"},
        {"status": 429, "retry_after": "3"},
    ],
)
def test_token_endpoint_errors_are_retryable(engine, sandbox, fault) -> None:
    goodera(sandbox).configure({"token_fail_next": fault})
    with pytest.raises(TokenEndpointUnavailable) as raised:
        oauth_for(engine, sandbox).bearer()
    assert raised.value.http_status == fault["status"]
    if fault.get("retry_after"):
        assert raised.value.retry_after_s == float(fault["retry_after"])
    assert "unavailable" in str(raised.value) and CLIENT_SECRET not in str(raised.value)
    assert oauth_for(engine, sandbox).bearer()  # and a new run asks again, and works


def test_after_an_outage_the_next_ask_waits_out_the_cool_down(engine, sandbox) -> None:
    goodera(sandbox).configure({"token_fail_next": {"status": 503, "retry_after": "5", "count": 2}})
    oauth = oauth_for(engine, sandbox)
    waits: list[float] = []
    oauth._sleep = lambda seconds: waits.append(float(seconds))  # record the cool-down instead of sitting through it
    for _ in range(2):
        with pytest.raises(TokenEndpointUnavailable, match="HTTP 503"):
            oauth.bearer()
    assert oauth.bearer()  # the third ask gets a token
    assert [round(w) for w in waits] == [5, 5]  # each ask after a failure honoured its Retry-After first
    assert token_requests(sandbox) == 3


def test_token_endpoint_timeout_and_refused_connection_are_retryable(engine, sandbox) -> None:
    goodera(sandbox).configure({"token_fail_next": {"mode": "hang", "seconds": 1.5}})
    with pytest.raises(TokenEndpointUnavailable, match="timeout"):
        oauth_for(engine, sandbox, timeout=(1.0, 0.3)).bearer()
    with pytest.raises(TokenEndpointUnavailable, match="connection"):
        oauth_for(engine, sandbox, token_url="http://127.0.0.1:9/oauth/token").bearer()


def test_refused_credentials_are_a_config_error_without_the_secret(engine, sandbox) -> None:
    wrong = "a-wrong-but-long-secret-value"
    oauth = oauth_for(engine, sandbox, client_secret=wrong)
    with pytest.raises(TokenRejected) as raised:
        oauth.bearer()
    assert isinstance(raised.value, ConfigError) and raised.value.http_status == 401
    with pytest.raises(TokenRejected):  # the same run asks no more with credentials the provider refused
        oauth.bearer()
    assert token_requests(sandbox) == 1
    assert "refused the client credentials" in str(raised.value) and "invalid_client" in str(raised.value)
    assert wrong not in str(raised.value) and CLIENT_SECRET not in str(raised.value)
    # a non-JSON 401 (requests-oauthlib loses the status there) is still a refusal, not an outage
    goodera(sandbox).configure({"token_fail_next": {"status": 401, "body": "denied", "content_type": "text/plain"}})
    with pytest.raises(TokenRejected, match="HTTP 401"):
        oauth_for(engine, sandbox, company="globex").bearer()
    with engine.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(impact_provider_tokens)).scalar_one() == 0


def test_a_refusal_answers_other_companies_offering_the_same_secret_for_a_while(engine, sandbox, monkeypatch) -> None:
    """In a process, a refusal answers every company offering the same secret the same way, without a request, for
    REFUSAL_MEMORY_S; another secret, another method, or the same secret after that, is asked about again."""
    from impactin_pipelines.connectors import oauth as oauth_module

    monkeypatch.setattr(oauth_module, "REFUSAL_MEMORY_S", 1.0)
    wrong = "a-wrong-but-long-secret-value"
    with pytest.raises(TokenRejected, match="credentials of the environment"):
        oauth_for(engine, sandbox, client_secret=wrong).bearer()
    with pytest.raises(TokenRejected):
        oauth_for(engine, sandbox, company="globex", client_secret=wrong).bearer()
    assert token_requests(sandbox) == 1
    with pytest.raises(TokenRejected):  # the same secret sent the other way: the server may think otherwise
        oauth_for(engine, sandbox, company="globex", client_secret=wrong, auth_method="client_secret_basic").bearer()
    assert token_requests(sandbox) == 2
    time.sleep(1.1)
    with pytest.raises(TokenRejected):  # past the memory: asked again, in case the provider fixed its side
        oauth_for(engine, sandbox, company="hooli", client_secret=wrong).bearer()
    assert token_requests(sandbox) == 3
    assert oauth_for(engine, sandbox, company="initech").bearer()  # another secret is asked about (and works)
    assert token_requests(sandbox) == 4


def test_a_token_url_that_is_not_a_token_endpoint_is_a_config_error(engine, sandbox) -> None:
    with pytest.raises(ConfigError, match="HTTP 404"):
        oauth_for(engine, sandbox, token_url=sandbox.provider_url("goodera") + "/not/here").bearer()
