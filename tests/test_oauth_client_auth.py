"""OAuth2 client authentication as servers we did not write ask for it: `client_secret_post` (Goodera's documented
request, the default) and `client_secret_basic` (RFC 6749 2.3.1, which every server must support), chosen per
provider by GOODERA_TOKEN_AUTH_METHOD / WORKDAY_TOKEN_AUTH_METHOD or per company by `settings.token_auth_method`.

The token endpoint here is Authlib's, accepting exactly one method; tokens it issues are handed to the sandbox APIs so
deliveries and checks run end to end over loopback, on both backends."""

import json
import time

import pytest

from impactin_pipelines.connectors.http import new_session
from impactin_pipelines.connectors.oauth import OAuthClientCredentials, TokenRejected
from impactin_pipelines.connectors.registry import ConnectorFactory
from impactin_pipelines.domain.errors import ConfigError
from impactin_pipelines.domain.providers import Provider
from impactin_pipelines.providers.env import ProviderEnv
from impactin_pipelines.sandbox.oauth import IssuedToken
from impactin_pipelines.security.crypto import generate_key, load_keyring
from impactin_pipelines.services.extract import extract
from impactin_pipelines.services.provider_checks import check_providers
from tests.cli_support import cli_env, run_cli
from tests.oauth_server import AuthlibTokenEndpoint, authlib_token_endpoint
from tests.support import add_events, add_integration, attempts, deliver, events, fast_settings, rows, statuses

POST, BASIC = "client_secret_post", "client_secret_basic"
OTHER = {POST: BASIC, BASIC: POST}
SECRET = "an independent server's secret: 50% of it +/= & more"  # characters Basic must form-encode
KEY = generate_key()


@pytest.fixture(autouse=True)
def _env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("IMPACTIN_ENCRYPTION_KEY", KEY)


@pytest.fixture(params=[BASIC, POST])
def only(request: pytest.FixtureRequest) -> str:
    """The one method the token endpoint accepts."""
    return request.param


def endpoint_for(sandbox, provider: str, method: str):
    """Authlib's token endpoint for the sandbox provider's client; the provider's API accepts what it issues."""
    fake = sandbox.providers[provider]

    def register(access_token: str, expires_in: int) -> None:
        now = time.time()
        with fake.oauth.lock:
            fake.oauth.tokens[access_token] = IssuedToken(fake.client_id, now, now + expires_in, None)

    return authlib_token_endpoint(method, client_id=fake.client_id, client_secret=SECRET, on_token=register)


def oauth_for(engine, endpoint: AuthlibTokenEndpoint, method: str, company: str = "acme") -> OAuthClientCredentials:
    return OAuthClientCredentials(
        engine=engine,
        keyring=load_keyring,
        company_id=company,
        provider="goodera",
        token_url=endpoint.url,
        client_id=endpoint.client_id,
        client_secret=SECRET,
        session=new_session(),
        timeout=(2.0, 5.0),
        auth_method=method,
    )


def goodera_env(sandbox, endpoint: AuthlibTokenEndpoint, **more: str) -> dict[str, str]:
    return {
        **sandbox.env(),
        "GOODERA_TOKEN_URL": endpoint.url,
        "GOODERA_CLIENT_SECRET": SECRET,
        "GOODERA_RATE_LIMIT": "1000/minute",
        **more,
    }


def factory(engine, env: dict[str, str]) -> ConnectorFactory:
    return ConnectorFactory(engine, env=ProviderEnv.from_env(env), settings=fast_settings())


# -- the token request itself ------------------------------------------------------------------------------------
def test_each_method_gets_a_token_from_a_server_that_accepts_only_it(engine, sandbox, only) -> None:
    with endpoint_for(sandbox, "goodera", only) as endpoint:
        token = oauth_for(engine, endpoint, only).bearer()
    [issued] = endpoint.issued
    assert issued["access_token"] == token and issued["auth_method"] == only
    assert endpoint.answers == [(200, "")]


def test_the_other_method_is_refused_and_the_error_names_both(engine, sandbox, only) -> None:
    sent = OTHER[only]
    with endpoint_for(sandbox, "goodera", only) as endpoint:
        oauth = oauth_for(engine, endpoint, sent)
        with pytest.raises(TokenRejected) as raised:
            oauth.bearer()
        with pytest.raises(TokenRejected):  # refused credentials are not offered again in the same run
            oauth.bearer()
    message = str(raised.value)
    assert isinstance(raised.value, ConfigError) and "invalid_client" in message
    assert f"sent with {sent}" in message
    assert f"GOODERA_TOKEN_AUTH_METHOD={only}" in message and "settings.token_auth_method" in message
    assert SECRET not in message
    assert endpoint.issued == [] and endpoint.requests == 1


def test_an_unknown_method_is_a_config_error_naming_the_field_and_value(engine, sandbox) -> None:
    add_integration(engine, "acme", "goodera")
    add_integration(engine, "globex", "goodera", settings={"token_auth_method": "private_key_jwt"})
    env = {**sandbox.env(), "GOODERA_TOKEN_AUTH_METHOD": "basic"}
    with pytest.raises(ConfigError, match=r"GOODERA_TOKEN_AUTH_METHOD='basic' must be one of client_secret_post"):
        factory(engine, env).connector("acme", Provider.GOODERA)
    with pytest.raises(ConfigError, match=r"settings.token_auth_method for globex/goodera='private_key_jwt'"):
        factory(engine, sandbox.env()).connector("globex", Provider.GOODERA)


# -- deliveries --------------------------------------------------------------------------------------------------
def test_goodera_delivers_with_the_method_the_server_accepts(engine, sandbox, only) -> None:
    sandbox.providers["goodera"].configure({"rate_limit": {"limit": 1000, "window_s": 60}})
    add_integration(engine, "acme", "goodera")  # the environment's method
    add_integration(engine, "globex", "goodera", settings={"token_auth_method": OTHER[only]})  # a wrong override
    add_integration(engine, "initech", "goodera", settings={"token_auth_method": only})  # the right override
    for company in ("acme", "globex", "initech"):
        add_events(engine, events(company, 2))
        extract(engine, company, Provider.GOODERA)
    with endpoint_for(sandbox, "goodera", only) as endpoint:
        env = goodera_env(sandbox, endpoint, GOODERA_TOKEN_AUTH_METHOD=only)
        deliver(engine, factory(engine, env), "goodera")
    assert {r["status"] for r in rows(engine, company_id="acme")} == {"success"}
    assert {r["status"] for r in rows(engine, company_id="initech")} == {"success"}
    for row in rows(engine, company_id="globex"):
        assert (row["status"], row["error_kind"]) == ("failed", "config")
        assert f"sent with {OTHER[only]}" in row["last_error"] and f"={only}" in row["last_error"]
        assert SECRET not in json.dumps([row, attempts(engine, row["delivery_id"])], default=str)
    assert len(sandbox.providers["goodera"].snapshot()["accepted"]) == 4
    assert sorted(i["auth_method"] for i in endpoint.issued) == [only, only]  # one token per company that works
    assert endpoint.requests == 3  # globex's refused credentials were offered once, not once per row


def test_the_default_method_is_client_secret_post(engine, sandbox) -> None:
    add_integration(engine, "acme", "goodera")
    add_events(engine, events("acme", 1))
    extract(engine, "acme", Provider.GOODERA)
    with endpoint_for(sandbox, "goodera", BASIC) as endpoint:
        deliver(engine, factory(engine, goodera_env(sandbox, endpoint)), "goodera")
    [row] = rows(engine)
    assert (row["status"], row["error_kind"]) == ("failed", "config")
    assert f"sent with {POST}" in row["last_error"] and f"GOODERA_TOKEN_AUTH_METHOD={BASIC}" in row["last_error"]


def test_workday_rest_uses_the_companys_method(engine, sandbox, only) -> None:
    settings = {"protocol": "rest", "token_auth_method": only}
    add_integration(engine, "umbrella", "workday", settings=settings)
    add_events(engine, events("umbrella", 2))
    extract(engine, "umbrella", Provider.WORKDAY)
    with endpoint_for(sandbox, "workday", only) as endpoint:
        env = {
            **sandbox.env(),
            "WORKDAY_TOKEN_URL": endpoint.url,
            "WORKDAY_CLIENT_SECRET": SECRET,
            "WORKDAY_TOKEN_AUTH_METHOD": OTHER[only],  # the company's setting wins over the environment
        }
        deliver(engine, factory(engine, env), "workday")
    assert statuses(engine) == {"success": 2}
    assert [i["auth_method"] for i in endpoint.issued] == [only]


# -- providers check ---------------------------------------------------------------------------------------------
def test_providers_check_says_which_method_was_refused_and_that_the_other_exists(engine, sandbox, tmp_path) -> None:
    add_integration(engine, "acme", "goodera")  # the default, client_secret_post
    add_integration(engine, "globex", "goodera", settings={"token_auth_method": BASIC})
    with endpoint_for(sandbox, "goodera", BASIC) as endpoint:
        env = goodera_env(sandbox, endpoint)
        results = {r.company_id: r for r in check_providers(engine, env=ProviderEnv.from_env(env))}
        cli = run_cli(
            ["providers", "check", "--json"],
            cli_env(tmp_path, engine.url.render_as_string(hide_password=False), IMPACTIN_ENCRYPTION_KEY=KEY, **env),
        )
    acme, globex = results["acme"], results["globex"]
    assert not acme.ok and f"sent with {POST}" in acme.detail and f"GOODERA_TOKEN_AUTH_METHOD={BASIC}" in acme.detail
    assert acme.extra["token_auth_method"] == POST
    assert globex.ok and BASIC in globex.detail and globex.extra["token_auth_method"] == BASIC
    assert cli.returncode == 1, cli.stderr
    by_company = {d["company"]: d for d in json.loads(cli.stdout)["data"]}
    assert by_company["acme"]["ok"] is False and f"sent with {POST}" in by_company["acme"]["detail"]
    assert BASIC in by_company["acme"]["detail"] and by_company["acme"]["token_auth_method"] == POST
    assert by_company["globex"]["ok"] is True and by_company["globex"]["token_auth_method"] == BASIC
    assert SECRET not in cli.stdout + cli.stderr
    assert sandbox.providers["goodera"].snapshot()["accepted"] == []
