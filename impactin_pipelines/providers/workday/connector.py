"""Workday (schema v3.0): SOAP with a WS-Security UsernameToken, or REST with OAuth2 client credentials.

`WORKDAY_PROTOCOL` (or the company's `settings.protocol`) picks the connector. Every value can be overridden per
company in `company_integrations.settings` (`api_url`, `tenant_id`, `protocol`, `username`, `password`,
`password_type`, `client_id`, `client_secret`, `token_url`, `token_auth_method`; secrets stored encrypted), falling
back to the WORKDAY_* environment variables. Both modes send `X-Idempotency-Key`; on
SOAP the key Workday itself dedups on is `External_Reference_ID` = the event id.
"""

import re
from dataclasses import dataclass

from impactin_pipelines.connectors.base import Connector, ConnectorContext
from impactin_pipelines.connectors.config import ConfigResolver
from impactin_pipelines.connectors.http import require_secure_url
from impactin_pipelines.connectors.oauth import (
    CLIENT_SECRET_POST,
    TOKEN_AUTH_SETTING,
    OAuthClientCredentials,
    parse_token_auth_method,
    uses_environment_credentials,
)
from impactin_pipelines.domain.errors import ConfigError, show_value
from impactin_pipelines.domain.providers import Provider
from impactin_pipelines.providers.workday import rest as workday_rest
from impactin_pipelines.providers.workday import soap as workday_soap

PROTOCOLS = ("soap", "rest")
PASSWORD_TYPES = {"text": False, "passwordtext": False, "digest": True, "passworddigest": True}
_TENANT = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")


def protocol_of(raw: str | None) -> str:
    protocol = (raw or "soap").strip().lower()
    if protocol not in PROTOCOLS:
        raise ConfigError(f"WORKDAY_PROTOCOL={show_value(raw)} must be one of {', '.join(PROTOCOLS)}")
    return protocol


@dataclass(frozen=True, repr=False)
class WorkdayConfig:
    protocol: str
    api_url: str
    tenant_id: str
    username: str | None = None
    password: str | None = None
    password_digest: bool = False
    client_id: str | None = None
    client_secret: str | None = None
    token_url: str | None = None
    token_auth_method: str = CLIENT_SECRET_POST

    @classmethod
    def resolve(cls, r: ConfigResolver) -> "WorkdayConfig":
        protocol = protocol_of(r.value("protocol", "WORKDAY_PROTOCOL", default="soap"))
        api_url = r.value("api_url", "WORKDAY_API_URL")
        tenant_id = r.value("tenant_id", "WORKDAY_TENANT_ID")
        if protocol == "soap":
            username = r.value("username", "WORKDAY_USERNAME")
            password = r.secret("password", "WORKDAY_PASSWORD")
            password_type = r.value("password_type", "WORKDAY_PASSWORD_TYPE", default="text")
            r.done()
            assert api_url and tenant_id and username and password and password_type
            digest = PASSWORD_TYPES.get(password_type.strip().lower())
            if digest is None:
                raise ConfigError(f"WORKDAY_PASSWORD_TYPE={show_value(password_type)} must be text or digest")
            return cls(protocol, _api_url(api_url), _tenant(tenant_id), username, password, digest)
        client_id = r.value("client_id", "WORKDAY_CLIENT_ID")
        client_secret = r.secret("client_secret", "WORKDAY_CLIENT_SECRET")
        token_url = r.value("token_url", "WORKDAY_TOKEN_URL")
        auth_method = r.value(TOKEN_AUTH_SETTING, "WORKDAY_TOKEN_AUTH_METHOD", required=False)
        r.done()
        assert api_url and tenant_id and client_id and client_secret and token_url
        auth_name = (
            f"settings.{TOKEN_AUTH_SETTING} for {r.company_id}/{r.provider}"
            if r.settings.get(TOKEN_AUTH_SETTING) not in (None, "")
            else "WORKDAY_TOKEN_AUTH_METHOD"
        )
        return cls(
            protocol,
            _api_url(api_url),
            _tenant(tenant_id),
            client_id=client_id,
            client_secret=client_secret,
            token_url=require_secure_url("WORKDAY_TOKEN_URL", token_url),
            token_auth_method=parse_token_auth_method(auth_method, name=auth_name),
        )

    def __repr__(self) -> str:
        return f"WorkdayConfig(protocol={self.protocol!r}, api_url={self.api_url!r}, tenant_id={self.tenant_id!r})"


def _api_url(url: str) -> str:
    return require_secure_url("WORKDAY_API_URL", url)


def _tenant(tenant_id: str) -> str:
    """The tenant goes into the URL path: letters, digits, `_ . -` only."""
    if not _TENANT.match(tenant_id):
        raise ConfigError(f"WORKDAY_TENANT_ID={show_value(tenant_id)} may contain only letters, digits, _ . -")
    return tenant_id


def build(resolver: ConfigResolver, ctx: ConnectorContext) -> Connector:
    config = WorkdayConfig.resolve(resolver)
    if config.protocol == "soap":
        assert config.username and config.password
        return workday_soap.WorkdaySoapConnector(
            endpoint=workday_soap.endpoint_for(config.api_url, config.tenant_id),
            username=config.username,
            password=config.password,
            digest=config.password_digest,
            session=ctx.session,
            timeout=ctx.timeout,
            company_id=ctx.company_id,
        )
    assert config.client_id and config.client_secret and config.token_url
    oauth = OAuthClientCredentials.for_connector(
        ctx,
        provider=Provider.WORKDAY.value,
        token_url=config.token_url,
        client_id=config.client_id,
        client_secret=config.client_secret,
        auth_method=config.token_auth_method,
        shared=uses_environment_credentials(resolver),
    )
    return workday_rest.WorkdayRestConnector(
        url=workday_rest.reports_url(config.api_url, config.tenant_id),
        oauth=oauth,
        session=ctx.session,
        timeout=ctx.timeout,
        company_id=ctx.company_id,
    )
