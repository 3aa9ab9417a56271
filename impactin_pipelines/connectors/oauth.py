"""OAuth2 client credentials (requests-oauthlib) with tokens kept encrypted in the warehouse.

What the original service got wrong, and what this does instead:
- tokens used to the second they expired -> re-fetched `skew_s` before `expires_at`;
- a 401 never refreshed -> `invalidate()` after a 401, and the next `bearer()` fetches once;
- concurrent refreshes raced -> single flight: a lock per (company, provider, credentials) in the process, and
  `TokenStore.exclusive()` (an advisory lock / SQLite's writer lock) across processes. Whoever waited on a refresh
  uses its result, including its failure, instead of asking the token endpoint again;
- tokens in plain text -> Fernet via the KeyRing.

The request is the guide's: form-encoded `grant_type=client_credentials&client_id=..&client_secret=..` (credentials
in the body, `include_client_id=True`; requests-oauthlib would otherwise send HTTP Basic).
"""

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import requests
from oauthlib.oauth2 import BackendApplicationClient, InsecureTransportError, OAuth2Error
from requests_oauthlib import OAuth2Session
from sqlalchemy.engine import Engine

from impactin_pipelines.connectors.base import ConnectorContext
from impactin_pipelines.connectors.http import classify_exception
from impactin_pipelines.connectors.retry import parse_retry_after
from impactin_pipelines.domain.errors import ConfigError
from impactin_pipelines.domain.statuses import AttemptOutcome
from impactin_pipelines.security.crypto import KeyRing
from impactin_pipelines.security.redaction import Redactor
from impactin_pipelines.store.tokens import StoredToken, TokenStore, credential_key

LOG = logging.getLogger("impactin.oauth")
DEFAULT_LIFETIME_S = 300.0  # when the provider omits expires_in: short, so a wrong guess costs one 401 at most
OUTAGE_COOLDOWN_S = (1.0, 30.0)  # after an outage, wait Retry-After (clamped to this) before asking again


class _NoSecretDebug(logging.Filter):
    """requests-oauthlib logs the token request body (client secret) and the token at DEBUG: drop those."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno > logging.DEBUG


logging.getLogger("requests_oauthlib.oauth2_session").addFilter(_NoSecretDebug())


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


@dataclass
class _Flight:
    """Process-wide state of one (warehouse, company, provider, credentials): the refresh lock, the outcome of the
    latest failed refresh, and how many tokens this process fetched (tests and operators count them)."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    failed_at: float = float("-inf")
    failure: Exception | None = None
    fetches: int = 0


_flights: dict[tuple[str, str, str, str], _Flight] = {}
_flights_lock = threading.Lock()


def _flight(engine: Engine, company_id: str, provider: str, cred_key: str) -> _Flight:
    key = (engine.url.render_as_string(hide_password=True), company_id, provider, cred_key)
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
    ) -> None:
        self.company_id = company_id
        self.provider = provider
        self.token_url = token_url
        self.client_id = client_id
        self._client_secret = client_secret
        self.session = session
        self.timeout = timeout
        self.scope = scope
        self.skew_s = skew_s
        self.credential_key = credential_key(token_url, client_id)
        self.store = TokenStore(engine, keyring)
        self.redactor = Redactor(credentials=[(client_id, client_secret)])  # also finds them as HTTP Basic
        self._flight = _flight(engine, company_id, provider, self.credential_key)
        self._cached: StoredToken | None = None
        # The last failure. Refused credentials are replayed for the rest of this instance's life (one run): a run
        # with a thousand rows must not offer the token endpoint credentials it refused a thousand times (providers
        # lock such accounts). After an outage, askers wait out a short cool-down (Retry-After, clamped) first.
        self._replay: Exception | None = None
        self._replay_until = float("-inf")
        self._sleep = time.sleep

    def __repr__(self) -> str:
        return f"OAuthClientCredentials(company_id={self.company_id!r}, provider={self.provider!r})"

    @property
    def fetches(self) -> int:
        """Tokens fetched from the endpoint by this process for these credentials."""
        return self._flight.fetches

    # -- the interface ---------------------------------------------------------------------------------------
    @classmethod
    def for_connector(
        cls, ctx: ConnectorContext, *, provider: str, token_url: str, client_id: str, client_secret: str
    ) -> "OAuthClientCredentials":
        """Tokens for one connector: the run's warehouse, keyring, pooled session and timeouts."""
        return cls(
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
        """The current access token: from memory, else from the table (another run or process may have fetched
        it), else from the token endpoint, once, however many threads and processes ask at the same time."""
        cached = self._cached
        if cached is not None and cached.is_fresh(self.skew_s):
            return cached.access_token
        if isinstance(self._replay, ConfigError):  # refused credentials: this run does not offer them again
            raise _copy(self._replay)
        if self._replay is not None:  # an outage: ask again no sooner than its cool-down (waiting, not failing)
            self._sleep(max(0.0, self._replay_until - time.monotonic()))
        queued_at = time.monotonic()
        with self._flight.lock:
            flight = self._flight
            if flight.failure is not None and flight.failed_at >= queued_at:  # it failed while we queued for it
                raise _copy(flight.failure)
            cached = self._cached
            if cached is not None and cached.is_fresh(self.skew_s):  # another thread refreshed it meanwhile
                return cached.access_token
            stored = self.store.load(self.company_id, self.provider, self.credential_key)
            if stored is None or not stored.is_fresh(self.skew_s):
                stored = self._refresh_exclusive()
            self._cached, self._replay = stored, None
            return stored.access_token

    def invalidate(self, access_token: str) -> None:
        """After a 401: forget this token, here and in the table, unless someone already replaced it."""
        with self._flight.lock:
            if self._cached is not None and self._cached.access_token == access_token:
                self._cached = None
            with self.store.exclusive(self.company_id, self.provider) as tx:
                expired = tx.expire(self.credential_key, access_token)
        if expired:
            LOG.info(f"{self.provider} token of company {self.company_id} refused by the API; it will be re-fetched")

    def refresh(self) -> datetime:
        """Fetch a new token now and store it; returns when it expires. For connectivity checks: proves the token
        URL and the credentials work (raises TokenRejected / TokenEndpointUnavailable / ConfigError otherwise)."""
        with self._flight.lock:
            token = self._refresh_exclusive(force=True)
            self._cached = token
        return token.expires_at

    # -- fetching --------------------------------------------------------------------------------------------
    def _refresh_exclusive(self, *, force: bool = False) -> StoredToken:
        with self.store.exclusive(self.company_id, self.provider) as tx:
            current = None if force else tx.current(self.credential_key)
            if current is not None and current.is_fresh(self.skew_s):
                return current  # another process refreshed it while we waited for the lock
            try:
                token = self._fetch()
            except (ConfigError, TokenEndpointUnavailable) as exc:
                self._remember_failure(exc)
                raise
            tx.save(self.credential_key, token)
        self._flight.failure, self._replay = None, None
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

    def _fetch(self) -> StoredToken:
        oauth = OAuth2Session(client=BackendApplicationClient(client_id=self.client_id, scope=self.scope))
        for prefix, adapter in self.session.adapters.items():  # share the run's connection pools
            oauth.mount(prefix, adapter)
        oauth.headers.update({"User-Agent": self.session.headers.get("User-Agent", "impactin")})
        seen: dict[str, Any] = {}

        def keep_status(response: requests.Response) -> requests.Response:
            seen["status"] = response.status_code
            seen["retry_after"] = parse_retry_after(response.headers.get("Retry-After"))
            return response

        oauth.register_compliance_hook("access_token_response", keep_status)
        issued_at = datetime.now(UTC)
        try:
            token = oauth.fetch_token(
                self.token_url,
                client_id=self.client_id,
                client_secret=self._client_secret,
                include_client_id=True,
                timeout=self.timeout,
            )
        except InsecureTransportError:
            raise ConfigError(f"{self.provider} token URL {self.token_url!r} must use https") from None
        except requests.RequestException as exc:
            outcome, message = classify_exception(exc)
            text = self._scrub(f"{self.provider} token endpoint: {message}")
            if outcome is AttemptOutcome.CONFIG:
                raise ConfigError(text) from None
            raise TokenEndpointUnavailable(text) from None
        except OAuth2Error as exc:
            raise self._refusal(exc, seen.get("status") or exc.status_code, seen.get("retry_after")) from None
        except Warning as exc:  # oauthlib: the scope granted differs from the one asked; the token is still good
            token = getattr(exc, "token", None)
            if not isinstance(token, dict) or not token.get("access_token"):
                raise ConfigError(f"{self.provider} token endpoint: {exc}") from None
        self._flight.fetches += 1
        stored = self._stored(token, issued_at)
        LOG.info(
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

    def _refusal(self, exc: OAuth2Error, status: int | None, retry_after_s: float | None) -> Exception:
        """Classify an error answer of the token endpoint; never echo a secret."""
        what = exc.error or "error"
        if exc.description:
            what += f": {exc.description}"
        what = self.redactor.excerpt(what, 300) or ""
        where = f"{self.provider} token endpoint"
        if status is None or status == 429 or status >= 500:
            shown = f"HTTP {status}" if status is not None else "no status"
            return TokenEndpointUnavailable(
                f"{where} unavailable ({shown}): {what}", http_status=status, retry_after_s=retry_after_s
            )
        if 200 <= status < 300:
            return ConfigError(f"{where} answered HTTP {status} without an access token ({what}); check the token URL")
        if status in (404, 405) or 300 <= status < 400:
            return ConfigError(f"{where} {self.token_url} answered HTTP {status}; check the token URL")
        return TokenRejected(
            f"{where} refused the client credentials of company {self.company_id} (HTTP {status} {what})",
            http_status=status,
        )

    def _scrub(self, text: str) -> str:
        return self.redactor.scrub(text) or ""
