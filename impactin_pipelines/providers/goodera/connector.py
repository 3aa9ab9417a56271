"""Goodera (schema v2.1): OAuth2 client credentials, `POST /v2/events/impact`, 100 requests/minute shared quota.

Per send: a bearer token (stored, encrypted, re-fetched on time; asked for first so a row that cannot get one never
takes a quota slot), then a slot in the quota every process shares, then the token again -- a wait for a slot can
outlast a short-lived token, and the request must leave with a fresh one -- then exactly one request. The delivery
run uses `try_send`, which never waits for the slot: with none free it answers a `Deferral` and the run sends other
companies' rows meanwhile; `send` waits. A 401 forgets
the token, so the delivery loop's free retry fetches a new one; a provider "slow down" (429, or
X-RateLimit-Remaining: 0) pauses every sender of these credentials until its reset.
"""

import threading
from dataclasses import dataclass, replace
from datetime import UTC, datetime

import requests
from sqlalchemy.engine import Engine

from impactin_pipelines.connectors.base import (
    AttemptResult,
    ConnectivityResult,
    ConnectorContext,
    Deferral,
    OutboundDelivery,
    PreparedRequest,
)
from impactin_pipelines.connectors.config import ConfigResolver
from impactin_pipelines.connectors.http import exchange, require_secure_url
from impactin_pipelines.connectors.oauth import (
    TOKEN_AUTH_SETTING,
    OAuthClientCredentials,
    TokenEndpointUnavailable,
    parse_token_auth_method,
    refusal_result,
    uses_environment_credentials,
)
from impactin_pipelines.connectors.ratelimit import (
    RateLimit,
    RateLimitWait,
    SharedRateLimiter,
    limit_key,
    parse_rate_limit,
    shared_limiter,
)
from impactin_pipelines.connectors.readback import HeldRecord, Period, ReadBackError, fetch_held
from impactin_pipelines.domain.errors import ConfigError
from impactin_pipelines.domain.providers import Provider
from impactin_pipelines.domain.statuses import AttemptOutcome
from impactin_pipelines.security.redaction import MASK

ENDPOINT = "/v2/events/impact"
DEFAULT_RATE_LIMIT = "100/minute"


@dataclass(frozen=True, repr=False)
class GooderaConfig:
    api_url: str
    token_url: str
    client_id: str
    client_secret: str
    rate: RateLimit
    token_auth_method: str

    @classmethod
    def resolve(cls, r: ConfigResolver) -> "GooderaConfig":
        api_url = r.value("api_url", "GOODERA_API_URL")
        token_url = r.value("token_url", "GOODERA_TOKEN_URL")
        client_id = r.value("client_id", "GOODERA_CLIENT_ID")
        client_secret = r.secret("client_secret", "GOODERA_CLIENT_SECRET")
        rate_raw = r.value("rate_limit", "GOODERA_RATE_LIMIT", default=DEFAULT_RATE_LIMIT)
        auth_method = r.value(TOKEN_AUTH_SETTING, "GOODERA_TOKEN_AUTH_METHOD", required=False)
        r.done()
        assert api_url and token_url and client_id and client_secret and rate_raw

        def name(key: str, env_var: str) -> str:
            """Errors name where the value came from: the company's settings or the environment."""
            if r.settings.get(key) not in (None, ""):
                return f"settings.{key} for {r.company_id}/{r.provider}"
            return env_var

        return cls(
            api_url=require_secure_url(name("api_url", "GOODERA_API_URL"), api_url),
            token_url=require_secure_url(name("token_url", "GOODERA_TOKEN_URL"), token_url),
            client_id=client_id,
            client_secret=client_secret,
            rate=parse_rate_limit(rate_raw, name=name("rate_limit", "GOODERA_RATE_LIMIT")),
            token_auth_method=parse_token_auth_method(
                auth_method, name=name(TOKEN_AUTH_SETTING, "GOODERA_TOKEN_AUTH_METHOD")
            ),
        )

    def __repr__(self) -> str:
        return (
            f"GooderaConfig(api_url={self.api_url!r}, token_url={self.token_url!r}, rate={self.rate}, "
            f"token_auth_method={self.token_auth_method!r})"
        )


def _now() -> datetime:
    return datetime.now(UTC)


class GooderaConnector:
    provider = Provider.GOODERA

    def __init__(
        self,
        config: GooderaConfig,
        session: requests.Session,
        *,
        oauth: OAuthClientCredentials,
        engine: Engine,
        timeout: tuple[float, float],
        company_id: str,
        max_wait_s: float,
    ) -> None:
        self.config = config
        self.session = session
        self.oauth = oauth
        self.engine = engine
        self.timeout = timeout
        self.company_id = company_id
        self.max_wait_s = max_wait_s
        self.redactor = oauth.redactor
        self._limiter: SharedRateLimiter | None = None
        self._limiter_lock = threading.Lock()

    @property
    def limiter(self) -> SharedRateLimiter:
        """Opened on first send: dry runs and connectivity checks never touch the quota."""
        with self._limiter_lock:
            if self._limiter is None:
                self._limiter = shared_limiter(
                    self.engine, self.provider.value, self.oauth.credential_key, self.config.rate
                )
            return self._limiter

    @property
    def quota_key(self) -> str:
        """The shared bucket's name for these credentials (a hash, never the credential); opens nothing."""
        return limit_key(self.provider.value, self.oauth.credential_key)

    @property
    def quota_spacing_s(self) -> float:
        """The interval the quota keeps between two requests."""
        return self.config.rate.spacing_s

    def prepare(self, delivery: OutboundDelivery, token: str | None = None) -> PreparedRequest:
        return PreparedRequest(
            method="POST",
            url=self.config.api_url + ENDPOINT,
            headers={
                "Content-Type": "application/json",
                "Authorization": f"Bearer {token or MASK}",
                "X-Idempotency-Key": delivery.delivery_id,
            },
            body=delivery.payload.encode("utf-8"),
            secret_headers=frozenset({"authorization"}),
        )

    def send(self, delivery: OutboundDelivery) -> AttemptResult:
        """Exactly one request, waiting (up to the max wait) for a quota slot first."""
        sent = self._send(delivery, wait=True)
        assert isinstance(sent, AttemptResult)
        return sent

    def try_send(self, delivery: OutboundDelivery, waited_s: float = 0.0) -> AttemptResult | Deferral:
        """Exactly one request if the quota has a slot now; otherwise a Deferral, nothing sent and nothing spent
        (the delivery run offers the row again when the slot should be free, and sends other rows meanwhile).
        A row held past the max wait in all (`waited_s` so far) is answered as `send` would after waiting that
        long: RATE_LIMITED, not sent."""
        return self._send(delivery, wait=False, waited_s=waited_s)

    def _send(self, delivery: OutboundDelivery, *, wait: bool, waited_s: float = 0.0) -> AttemptResult | Deferral:
        started = _now()
        try:
            self.oauth.token()  # no token, no slot: a row that cannot be sent must not spend the quota
            if wait:
                self.limiter.acquire(self.max_wait_s)
            else:
                ready_in_s = self.limiter.admit(self.max_wait_s, waited_s)
                if ready_in_s > 0:
                    return Deferral(self.limiter.key, ready_in_s, self.limiter.rate.spacing_s)
            token = self.oauth.token()  # fresh when the request leaves, however long the slot took
        except TokenEndpointUnavailable as exc:
            return self._unsent(AttemptOutcome.RETRYABLE, started, str(exc), exc.retry_after_s)
        except ConfigError as exc:  # TokenRejected included: the credentials are wrong
            return self._unsent(AttemptOutcome.CONFIG, started, str(exc))
        except RateLimitWait as exc:
            return self._unsent(AttemptOutcome.RATE_LIMITED, started, f"not sent: {exc}", exc.retry_after_s)
        redactor = self.redactor.with_secrets([token.access_token])
        result, response = exchange(
            self.session,
            self.prepare(delivery, token.access_token),
            timeout=self.timeout,
            redactor=redactor,
            oauth=True,
        )
        if response is not None:
            pause = self.limiter.observe(response.status_code, response.headers)
            if result.outcome is AttemptOutcome.RATE_LIMITED and result.retry_after_s is None and pause is not None:
                result = replace(result, retry_after_s=pause)
        if result.outcome is AttemptOutcome.AUTH_EXPIRED:
            result = refusal_result(result, stale=self.oauth.refused(token))
        return result

    def _unsent(
        self, outcome: AttemptOutcome, started: datetime, error: str, retry_after_s: float | None = None
    ) -> AttemptResult:
        """An attempt that ended before any request reached the API."""
        return AttemptResult(outcome, started, _now(), error=self.redactor.scrub(error), retry_after_s=retry_after_s)

    def read_back(self, period: Period) -> list[HeldRecord]:
        """What the provider holds for the period (connectors/readback: the guide documents no list endpoint)."""
        try:
            token = self.oauth.token()
        except (TokenEndpointUnavailable, ConfigError) as exc:
            raise ReadBackError(self.redactor.scrub(f"no token for the read-back: {exc}") or "no token") from None
        headers = {"Authorization": f"Bearer {token.access_token}"}
        redactor = self.redactor.with_secrets([token.access_token])
        return fetch_held(
            self.session, self.config.api_url + ENDPOINT, headers, period, timeout=self.timeout, redactor=redactor
        )

    def check(self) -> ConnectivityResult:
        """Fetch a new token: proves the token URL and the credentials work. Sends no impact data and spends no
        API quota."""
        try:
            expires_at = self.oauth.refresh()
        except (ConfigError, TokenEndpointUnavailable) as exc:
            detail = self.redactor.scrub(str(exc)) or type(exc).__name__
            extra = {"token_auth_method": self.config.token_auth_method}
            return ConnectivityResult(self.provider.value, self.company_id, False, detail, extra)
        return ConnectivityResult(
            self.provider.value,
            self.company_id,
            True,
            f"token issued ({self.config.token_auth_method}), valid until {expires_at.isoformat(timespec='seconds')}",
            {
                "token_url": self.config.token_url,
                "token_auth_method": self.config.token_auth_method,
                "rate_limit": str(self.config.rate),
            },
        )

    def close(self) -> None:
        return None


def build(resolver: ConfigResolver, ctx: ConnectorContext) -> GooderaConnector:
    config = GooderaConfig.resolve(resolver)
    oauth = OAuthClientCredentials.for_connector(
        ctx,
        provider=Provider.GOODERA.value,
        token_url=config.token_url,
        client_id=config.client_id,
        client_secret=config.client_secret,
        auth_method=config.token_auth_method,
        shared=uses_environment_credentials(resolver),
    )
    return GooderaConnector(
        config,
        ctx.session,
        oauth=oauth,
        engine=ctx.engine,
        timeout=ctx.timeout,
        company_id=ctx.company_id,
        max_wait_s=ctx.settings.retry.max_retry_after_s,
    )
