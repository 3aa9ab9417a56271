"""OAuth2 client credentials (oauthlib builds the request body and reads the answer) with tokens kept encrypted in
the warehouse.

- A token is re-fetched `skew_s` before `expires_at` (or at half the life of a short-lived one).
- After a 401 from the API, `refused()` forgets the token and tells whether it was stale (past its expiry, or
  already replaced by a newer one) or a current token the API turned down; the next `token()` fetches once.
- A token belongs to the credentials, not to a company: the companies using the environment's credentials share
  one stored token (each company's connector reads it instead of fetching its own); a company with credentials of
  its own in its settings has its own token (`shared=False`).
- Refreshes are single-flight: a lock per (provider, credentials) in the process, and `TokenStore.exclusive()` (an
  advisory lock / SQLite's writer lock) across processes. Whoever waited on a refresh uses its result, including its
  failure, instead of asking the token endpoint again.
- Tokens are stored encrypted (Fernet via the KeyRing).

Client authentication (RFC 6749 2.3.1) is `client_secret_post` (form-encoded `client_id` and `client_secret` in the
body, as Goodera documents it, and the default) or `client_secret_basic` (HTTP Basic with the form-encoded
id and secret, which every server must support). The request goes through the run's pooled session, so plain http
is possible for loopback token URLs without any process-wide switch, and refused for every other host.
"""

import hmac
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import quote

import requests
from oauthlib.oauth2 import BackendApplicationClient, OAuth2Error
from sqlalchemy.engine import Engine

from impactin_pipelines.connectors.base import AttemptResult, ConnectorContext
from impactin_pipelines.connectors.config import ConfigResolver
from impactin_pipelines.connectors.http import classify_exception, require_secure_url
from impactin_pipelines.connectors.retry import parse_retry_after
from impactin_pipelines.domain.errors import ConfigError, show_value
from impactin_pipelines.domain.statuses import AttemptOutcome
from impactin_pipelines.security.crypto import KeyRing
from impactin_pipelines.security.redaction import Redactor
from impactin_pipelines.store.tokens import StoredToken, TokenStore, credential_key

LOG = logging.getLogger("impactin.oauth")
DEFAULT_LIFETIME_S = 300.0  # when the provider omits expires_in: short, so a wrong guess costs one 401 at most
OUTAGE_COOLDOWN_S = (1.0, 30.0)  # after an outage, wait Retry-After (clamped to this) before asking again
# How long a refusal of credentials is answered from memory to every company offering them, in a process: long
# enough for a night of many companies to offer refused credentials once, short enough that a long-lived process
# (the API, the webserver) asks again once the provider has fixed its side.
REFUSAL_MEMORY_S = 600.0
FORM_CONTENT_TYPE = "application/x-www-form-urlencoded"

# RFC 7591 names of the two client authentication methods (names, not secrets)
CLIENT_SECRET_POST = "client_secret_post"  # noqa: S105
CLIENT_SECRET_BASIC = "client_secret_basic"  # noqa: S105
TOKEN_AUTH_METHODS = (CLIENT_SECRET_POST, CLIENT_SECRET_BASIC)
TOKEN_AUTH_SETTING = "token_auth_method"  # noqa: S105 - the per-company settings key
# Settings keys that make a company's token credentials its own (any of them set): it then has a token of its own
_TOKEN_SETTINGS = ("token_url", "client_id", "client_secret", TOKEN_AUTH_SETTING)


def uses_environment_credentials(resolver: ConfigResolver) -> bool:
    """Whether a company's token credentials all come from the environment (its settings give none of them): the
    companies that do share one token; a company with credentials of its own has its own (`shared` below)."""
    return not resolver.from_settings(*_TOKEN_SETTINGS)


def token_auth_env_var(provider: str) -> str:
    """The variable choosing a provider's client authentication: GOODERA_TOKEN_AUTH_METHOD, ..."""
    return f"{provider.upper()}_TOKEN_AUTH_METHOD"


def parse_token_auth_method(raw: str | None, *, name: str) -> str:
    """`client_secret_post` (the default) or `client_secret_basic`; anything else is a config error naming `name`."""
    if raw is None or not str(raw).strip():
        return CLIENT_SECRET_POST
    method = str(raw).strip().lower()
    if method not in TOKEN_AUTH_METHODS:
        raise ConfigError(f"{name}={show_value(raw)} must be one of {', '.join(TOKEN_AUTH_METHODS)}")
    return method


def refusal_result(result: AttemptResult, *, stale: bool) -> AttemptResult:
    """A 401 from the API, with what it means in its error: a stale token is simply re-fetched; a current one
    refused again after a refresh means the API does not accept these credentials."""
    if stale:
        note = "the access token had expired or been replaced before the answer; a new one is fetched"
    else:
        note = "the API refused a current access token"
    return replace(result, token_stale=stale, error=f"{result.error or 'HTTP 401'} ({note})")


def _form_encoded(value: str) -> str:
    """RFC 6749 2.3.1: the id and secret are form-encoded before they become the Basic user and password. A space
    becomes %20 rather than +: servers decode both that way, but some read + as itself."""
    return quote(value, safe="")


class TokenRejected(ConfigError):
    """The token endpoint refused the credentials (400/401/403 invalid_client, ...): the delivery is failed/config."""

    def __init__(self, message: str, *, http_status: int | None = None) -> None:
        super().__init__(message)
        self.http_status = http_status


class TokenEndpointUnavailable(Exception):
    """Timeout, dropped connection, 429 or 5xx at the token endpoint: transient, retry later."""

    def __init__(self, message: str, *, http_status: int | None = None, retry_after_s: float | None = None) -> None:
        super().__init__(message)
        self.http_status = http_status
        self.retry_after_s = retry_after_s


@dataclass(frozen=True)
class _Refusal:
    """The token endpoint refused a secret sent one way (`TokenRejected`): until `until` (monotonic), whoever
    offers the same secret the same way gets this error without asking (another secret, or method, is asked
    about)."""

    error: ConfigError
    secret: str = field(repr=False)
    auth_method: str
    until: float

    def answers(self, secret: str, auth_method: str) -> bool:
        return (
            time.monotonic() < self.until
            and auth_method == self.auth_method
            and hmac.compare_digest(secret.encode(), self.secret.encode())
        )


@dataclass
class _Flight:
    """Process-wide state of one (warehouse, provider, credentials): the refresh lock, the outcome of the latest
    failed refresh, the latest refusal of the credentials, and how many tokens this process fetched (tests and
    operators count them)."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    failed_at: float = float("-inf")
    failure: Exception | None = None
    refusal: _Refusal | None = None
    fetches: int = 0


_flights: dict[tuple[str, str, str], _Flight] = {}
_flights_lock = threading.Lock()


def _flight(engine: Engine, provider: str, cred_key: str) -> _Flight:
    key = (engine.url.render_as_string(hide_password=True), provider, cred_key)
    with _flights_lock:
        return _flights.setdefault(key, _Flight())


def _copy(exc: Exception) -> Exception:
    """A fresh exception with the same meaning, to raise in another thread."""
    if isinstance(exc, TokenEndpointUnavailable):
        return TokenEndpointUnavailable(str(exc), http_status=exc.http_status, retry_after_s=exc.retry_after_s)
    if isinstance(exc, TokenRejected):
        return TokenRejected(str(exc), http_status=exc.http_status)
    if isinstance(exc, ConfigError):
        return ConfigError(str(exc), missing=exc.missing)
    return exc


class OAuthClientCredentials:
    """Bearer tokens for one company's credentials at one provider."""

    def __init__(
        self,
        *,
        engine: Engine,
        keyring: Callable[[], KeyRing],
        company_id: str,
        provider: str,
        token_url: str,
        client_id: str,
        client_secret: str,
        session: requests.Session,
        timeout: tuple[float, float],
        scope: str | None = None,
        skew_s: float = 60.0,
        auth_method: str = CLIENT_SECRET_POST,
        shared: bool = True,
    ) -> None:
        if auth_method not in TOKEN_AUTH_METHODS:
            raise ConfigError(f"token auth method {show_value(auth_method)} must be one of {TOKEN_AUTH_METHODS}")
        self.company_id = company_id
        self.provider = provider
        self.token_url = token_url
        self.client_id = client_id
        self._client_secret = client_secret
        self.session = session
        self.timeout = timeout
        self.scope = scope
        self.skew_s = skew_s
        self.auth_method = auth_method
        self.shared = shared
        self.credential_key = credential_key(token_url, client_id, scope, None if shared else company_id)
        self.store = TokenStore(engine, keyring)
        self.redactor = Redactor(credentials=[(client_id, client_secret)])  # also finds them as HTTP Basic
        self._flight = _flight(engine, provider, self.credential_key)  # shared by every company with these credentials
        self._cached: StoredToken | None = None
        # The last failure. Refused credentials are replayed for the rest of this instance's life (one run), and to
        # every instance offering them in this process for REFUSAL_MEMORY_S: a night of a thousand rows, or of a
        # thousand companies on the environment's credentials, must not offer the token endpoint credentials it
        # refused a thousand times (providers lock such accounts). After an outage, askers wait out a short
        # cool-down (Retry-After, clamped) first.
        self._replay: Exception | None = None
        self._replay_until = float("-inf")
        self._sleep = time.sleep

    def __repr__(self) -> str:
        return (
            f"OAuthClientCredentials(company_id={self.company_id!r}, provider={self.provider!r}, "
            f"auth_method={self.auth_method!r})"
        )

    @property
    def fetches(self) -> int:
        """Tokens fetched from the endpoint by this process for these credentials (whichever company asked)."""
        return self._flight.fetches

    # -- the interface ---------------------------------------------------------------------------------------
    @classmethod
    def for_connector(
        cls,
        ctx: ConnectorContext,
        *,
        provider: str,
        token_url: str,
        client_id: str,
        client_secret: str,
        auth_method: str = CLIENT_SECRET_POST,
        shared: bool = True,
    ) -> "OAuthClientCredentials":
        """Tokens for one connector: the run's warehouse, keyring, pooled session and timeouts. `shared`: the
        credentials are the environment's, and so is the token; False for a company's own (from its settings)."""
        return cls(
            auth_method=auth_method,
            shared=shared,
            engine=ctx.engine,
            keyring=ctx.keyring,
            company_id=ctx.company_id,
            provider=provider,
            token_url=token_url,
            client_id=client_id,
            client_secret=client_secret,
            session=ctx.session,
            timeout=ctx.timeout,
        )

    def bearer(self) -> str:
        """The current access token (see `token`)."""
        return self.token().access_token

    def token(self) -> StoredToken:
        """The current token: from memory, else from the table (another run or process may have fetched it), else
        from the token endpoint, once, however many threads and processes ask at the same time. Cheap when the
        token in memory is fresh, so callers ask again right before a request leaves."""
        cached = self._cached
        if cached is not None and cached.is_fresh(self.skew_s):
            return cached
        if isinstance(self._replay, ConfigError):  # refused credentials: this run does not offer them again
            raise _copy(self._replay)
        refusal = self._flight.refusal
        if refusal is not None and refusal.answers(self._client_secret, self.auth_method):  # refused for another
            self._replay = refusal.error  # company of this process, with the same secret: not offered again
            raise _copy(refusal.error)
        if self._replay is not None:  # an outage: ask again no sooner than its cool-down (waiting, not failing)
            self._sleep(max(0.0, self._replay_until - time.monotonic()))
        queued_at = time.monotonic()
        with self._flight.lock:
            flight = self._flight
            if flight.failure is not None and flight.failed_at >= queued_at:  # it failed while we queued for it
                raise _copy(flight.failure)
            cached = self._cached
            if cached is not None and cached.is_fresh(self.skew_s):  # another thread refreshed it meanwhile
                return cached
            stored = self.store.load(self.provider, self.credential_key)
            if stored is None or not stored.is_fresh(self.skew_s):
                stored = self._refresh_exclusive()
            self._cached, self._replay = stored, None
            return stored

    def invalidate(self, access_token: str) -> None:
        """After a 401: forget this token, here and in the table, unless someone already replaced it."""
        with self._flight.lock:
            self._forget(access_token)
            with self.store.exclusive(self.provider, self.credential_key) as tx:
                expired = tx.expire(access_token)
        if expired:
            LOG.info(f"{self.provider} token of company {self.company_id} refused by the API; it will be re-fetched")

    def refused(self, token: StoredToken) -> bool:
        """After the API answered 401 to `token`: forget it, here and in the table (unless someone already
        replaced it), so the next `token()` fetches a new one. Returns whether the token was stale -- past its
        expiry, or already replaced by a newer one -- rather than a current token the API turned down."""
        with self._flight.lock:
            self._forget(token.access_token)
            with self.store.exclusive(self.provider, self.credential_key) as tx:
                current = tx.current()
                replaced = current is not None and current.access_token != token.access_token
                if not replaced:
                    tx.expire(token.access_token)
        stale = replaced or token.expires_at <= datetime.now(UTC)
        why = "stale" if stale else "current"
        LOG.info(f"{self.provider} API refused a {why} token of company {self.company_id}; it will be re-fetched")
        return stale

    def refresh(self) -> datetime:
        """Fetch a new token now and store it; returns when it expires. For connectivity checks: proves the token
        URL and the credentials work (raises TokenRejected / TokenEndpointUnavailable / ConfigError otherwise)."""
        with self._flight.lock:
            token = self._refresh_exclusive(force=True)
            self._cached = token
        return token.expires_at

    def _forget(self, access_token: str) -> None:
        """Drop the token in memory if it is this one (under the flight's lock)."""
        if self._cached is not None and self._cached.access_token == access_token:
            self._cached = None

    # -- fetching --------------------------------------------------------------------------------------------
    def _refresh_exclusive(self, *, force: bool = False) -> StoredToken:
        with self.store.exclusive(self.provider, self.credential_key) as tx:
            current = None if force else tx.current()
            if current is not None and current.is_fresh(self.skew_s):
                return current  # another process refreshed it while we waited for the lock
            try:
                token = self._fetch()
            except (ConfigError, TokenEndpointUnavailable) as exc:
                self._remember_failure(exc)
                raise
            tx.save(token)
        self._flight.failure, self._flight.refusal, self._replay = None, None, None
        return token

    def _remember_failure(self, exc: Exception) -> None:
        now = time.monotonic()
        self._flight.failure, self._flight.failed_at = exc, now
        self._replay = exc
        if isinstance(exc, TokenEndpointUnavailable):
            low, high = OUTAGE_COOLDOWN_S
            self._replay_until = now + min(high, max(low, exc.retry_after_s or 0.0))
        else:
            self._replay_until = float("inf")
        if isinstance(exc, TokenRejected):  # the endpoint answered, and refused them: not an unreachable endpoint
            self._flight.refusal = _Refusal(exc, self._client_secret, self.auth_method, now + REFUSAL_MEMORY_S)

    def _fetch(self) -> StoredToken:
        require_secure_url(f"{self.provider} token URL", self.token_url)
        client = BackendApplicationClient(client_id=self.client_id, scope=self.scope)
        auth: requests.auth.AuthBase | None = None
        if self.auth_method == CLIENT_SECRET_BASIC:
            body = client.prepare_request_body(include_client_id=False)
            auth = requests.auth.HTTPBasicAuth(_form_encoded(self.client_id), _form_encoded(self._client_secret))
        else:
            body = client.prepare_request_body(include_client_id=True, client_secret=self._client_secret)
        issued_at = datetime.now(UTC)
        try:
            response = self.session.post(
                self.token_url,
                data=body,
                headers={"Accept": "application/json", "Content-Type": FORM_CONTENT_TYPE},
                auth=auth,
                timeout=self.timeout,
                allow_redirects=False,
            )
            text = response.text
        except requests.RequestException as exc:
            outcome, message = classify_exception(exc)
            text = self._scrub(f"{self.provider} token endpoint: {message}")
            if outcome is AttemptOutcome.CONFIG:
                raise ConfigError(text) from None
            raise TokenEndpointUnavailable(text) from None
        status = response.status_code
        retry_after = parse_retry_after(response.headers.get("Retry-After"))
        try:
            token: dict[str, Any] = client.parse_request_body_response(text, scope=self.scope)
        except OAuth2Error as exc:
            raise self._refusal(exc.error, exc.description, status, retry_after) from None
        except Warning as exc:  # oauthlib: the scope granted differs from the one asked; the token is still good
            granted = getattr(exc, "token", None)
            if not isinstance(granted, dict) or not granted.get("access_token"):
                raise ConfigError(self._scrub(f"{self.provider} token endpoint: {exc}")) from None
            token = granted
        except ValueError:  # an answer oauthlib cannot read at all (neither JSON nor a form)
            raise self._refusal("unreadable answer", None, status, retry_after) from None
        if not 200 <= status < 300:  # an error status decides, whatever the body says
            raise self._refusal("error", None, status, retry_after)
        self._flight.fetches += 1
        stored = self._stored(token, issued_at)
        # Routine (once per credentials and token lifetime; companies with their own credentials fetch their own), so
        # DEBUG: an INFO line of an `impactin` logger enters the Dagster run log, an event-log write each. Refusals
        # stay INFO.
        LOG.debug(
            f"fetched a {self.provider} access token for company {self.company_id} "
            f"(valid {int((stored.expires_at - issued_at).total_seconds())} s)"
        )
        return stored

    @staticmethod
    def _stored(token: dict[str, Any], issued_at: datetime) -> StoredToken:
        try:
            lifetime = float(token.get("expires_in") or DEFAULT_LIFETIME_S)
        except (TypeError, ValueError):
            lifetime = DEFAULT_LIFETIME_S
        if not lifetime > 0:
            lifetime = DEFAULT_LIFETIME_S
        return StoredToken(
            access_token=str(token["access_token"]),
            issued_at=issued_at,
            expires_at=issued_at + timedelta(seconds=lifetime),
            token_type=str(token.get("token_type") or "Bearer"),
            refresh_token=token.get("refresh_token"),
        )

    def _refusal(
        self, error: str | None, description: str | None, status: int, retry_after_s: float | None
    ) -> Exception:
        """Classify an error answer of the token endpoint; never echo a secret."""
        what = error or "error"
        if description:
            what += f": {description}"
        what = self.redactor.excerpt(what, 300) or ""
        where = f"{self.provider} token endpoint"
        if status == 429 or status >= 500:
            return TokenEndpointUnavailable(
                f"{where} unavailable (HTTP {status}): {what}", http_status=status, retry_after_s=retry_after_s
            )
        if 200 <= status < 300:
            return ConfigError(f"{where} answered HTTP {status} without an access token ({what}); check the token URL")
        if status in (404, 405) or 300 <= status < 400:
            return ConfigError(f"{where} {self.token_url} answered HTTP {status}; check the token URL")
        whose = "of the environment" if self.shared else f"of company {self.company_id}"
        message = f"{where} refused the client credentials {whose} sent with {self.auth_method} (HTTP {status} {what})"
        if error == "invalid_client" or status == 401:
            other = CLIENT_SECRET_BASIC if self.auth_method == CLIENT_SECRET_POST else CLIENT_SECRET_POST
            message += (
                f"; if they are right, the server may accept only {other}: set "
                f"{token_auth_env_var(self.provider)}={other} or the company's settings.{TOKEN_AUTH_SETTING}"
            )
        return TokenRejected(message, http_status=status)

    def _scrub(self, text: str) -> str:
        return self.redactor.scrub(text) or ""
