"""The shared HTTP layer: pooled sessions, explicit timeouts, one exchange classified into an AttemptResult.

Adapter retries stay off: retrying a POST inside urllib3 would re-send on read timeouts where we cannot see it.
The loop that retries is the delivery service's, driven by `connectors.retry`.
"""

import ipaddress
import socket
import threading
from collections.abc import Mapping
from datetime import UTC, datetime
from functools import lru_cache
from typing import TYPE_CHECKING, Any, cast
from urllib.parse import urlsplit

import requests
from requests.adapters import HTTPAdapter
from requests.structures import CaseInsensitiveDict
from requests.utils import check_header_validity
from urllib3.exceptions import NameResolutionError

from impactin_pipelines.connectors.base import AttemptResult, PreparedRequest
from impactin_pipelines.connectors.retry import outcome_for_status, parse_retry_after
from impactin_pipelines.domain.errors import ConfigError
from impactin_pipelines.domain.statuses import AttemptOutcome
from impactin_pipelines.security.redaction import Redactor

if TYPE_CHECKING:
    from requests.sessions import _Settings  # the stubs' name for what merge_environment_settings returns

RESPONSE_KEEP_CHARS = 64 * 1024
USER_AGENT = "impactin-pipelines/0.1"


class Session(requests.Session):
    """A `requests.Session` that reads the environment's proxy and CA settings (`HTTPS_PROXY`, `NO_PROXY`,
    `REQUESTS_CA_BUNDLE`, ...) once per origin instead of on every request: requests walks the whole environment
    twice per call to find proxies, a fifth of a send's CPU in a process with a long environment (a container's).
    A running process's environment does not change its proxies, so the answer is the same every time."""

    def __init__(self) -> None:
        super().__init__()
        self._environment_settings: dict[tuple[str, str], _Settings] = {}
        self._environment_lock = threading.Lock()

    def merge_environment_settings(
        self, url: str | bytes | None, proxies: Any, stream: Any, verify: Any, cert: Any
    ) -> "_Settings":
        if proxies or stream is not None or verify is not None or cert is not None or not url:
            return super().merge_environment_settings(url, proxies, stream, verify, cert)
        parts = urlsplit(url.decode() if isinstance(url, bytes) else url)
        origin = (parts.scheme, parts.netloc)
        with self._environment_lock:
            settings = self._environment_settings.get(origin)
            if settings is None:
                settings = super().merge_environment_settings(url, proxies, stream, verify, cert)
                self._environment_settings[origin] = settings
        copy = settings.copy()
        copy["proxies"] = dict(settings["proxies"])
        return copy

    def send_body(
        self, method: str, url: str, body: bytes, headers: Mapping[str, str], timeout: tuple[float, float]
    ) -> requests.Response:
        """One request with a body of bytes, no redirects, read in full: what every provider send is.

        It goes through the same transport adapter as `request` (the environment's proxies and CA bundle, TLS
        verification, requests' exceptions), but skips the generic preparation a send does not need and that costs
        as much CPU as the exchange itself: the URL is parsed once per URL, and no cookie jar, hook or `~/.netrc`
        is consulted (no provider API sets cookies, and netrc credentials have no business going to a provider)."""
        prepared = requests.PreparedRequest()
        prepared.method = method.upper()
        prepared.url = _prepared_url(url)
        merged: CaseInsensitiveDict[str] = CaseInsensitiveDict(cast("Mapping[str, str]", self.headers))
        merged.update(headers)  # already checked by `exchange`, which names a refused header (http.client refuses too)
        merged["Content-Length"] = str(len(body))
        prepared.headers = merged
        prepared.body = body
        prepared.hooks = {"response": []}
        settings = self.merge_environment_settings(prepared.url, {}, None, None, None)
        response = self.get_adapter(prepared.url).send(
            prepared,
            stream=False,
            timeout=timeout,
            verify=True if settings["verify"] is None else settings["verify"],
            cert=settings["cert"],
            proxies=settings["proxies"],
        )
        response.content  # noqa: B018 - read the body now, inside the exchange's timing and error handling
        return response


@lru_cache(maxsize=1024)
def _prepared_url(url: str) -> str:
    """requests' own URL preparation (IDNA, quoting, validation), once per URL; raises requests' InvalidURL."""
    prepared = requests.PreparedRequest()
    prepared.prepare_url(url, None)
    assert prepared.url is not None
    return prepared.url


def new_session(pool_size: int = 10) -> requests.Session:
    session = Session()
    adapter = HTTPAdapter(pool_connections=4, pool_maxsize=max(pool_size, 1), max_retries=0)
    session.mount("https://", adapter)
    session.mount("http://", adapter)
    session.headers["User-Agent"] = USER_AGENT
    return session


def is_loopback_host(host: str | None) -> bool:
    if not host:
        return False
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def require_secure_url(name: str, url: str) -> str:
    """https everywhere (TLS always verified); plain http only for the loopback sandbox."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(f"{name}={url!r} is not an http(s) URL")
    if parts.scheme == "http" and not is_loopback_host(parts.hostname):
        raise ConfigError(f"{name}={url!r} must use https (plain http is allowed only on loopback)")
    return url.rstrip("/")


def _now() -> datetime:
    return datetime.now(UTC)


def _root_cause(exc: BaseException) -> BaseException:
    seen = exc
    while True:
        inner = seen.__cause__ or seen.__context__ or (seen.args[0] if seen.args else None)
        if not isinstance(inner, BaseException) or inner is seen:
            return seen
        if hasattr(inner, "reason") and isinstance(inner.reason, BaseException):  # urllib3 MaxRetryError
            inner = inner.reason
        seen = inner


def classify_exception(exc: requests.RequestException) -> tuple[AttemptOutcome, str]:
    """Timeouts and dropped connections are transient; a host that does not resolve, bad TLS or a bad URL
    are configuration (retrying them only hides the mistake)."""
    cause = _root_cause(exc)
    if isinstance(exc, requests.exceptions.SSLError):
        return AttemptOutcome.CONFIG, f"TLS error: {cause}"
    if isinstance(cause, NameResolutionError | socket.gaierror):
        return AttemptOutcome.CONFIG, f"host does not resolve: {cause}"
    if isinstance(exc, requests.exceptions.InvalidURL | requests.exceptions.MissingSchema):
        return AttemptOutcome.CONFIG, f"invalid URL: {exc}"
    if isinstance(exc, requests.exceptions.ProxyError):
        return AttemptOutcome.RETRYABLE, f"proxy error: {type(cause).__name__}: {cause}"
    if isinstance(exc, requests.exceptions.Timeout):
        return AttemptOutcome.RETRYABLE, f"timeout: {type(exc).__name__}"
    if isinstance(exc, requests.exceptions.ConnectionError | requests.exceptions.ChunkedEncodingError):
        return AttemptOutcome.RETRYABLE, f"connection error: {type(cause).__name__}: {cause}"
    return AttemptOutcome.RETRYABLE, f"{type(exc).__name__}: {exc}"


def _refused_header(request: PreparedRequest) -> str | None:
    """Why a header cannot be sent (a newline would let its value write headers of its own), naming the header and,
    unless it is a secret, the value; None when every header is sendable."""
    for name, value in request.headers.items():
        try:
            check_header_validity((name, value))
        except requests.exceptions.InvalidHeader:
            shown = "(secret, not shown)" if name.lower() in request.secret_headers else repr(value)
            return f"header {name!r} has a value that cannot be sent (leading space or a line break): {shown}"
    return None


def _is_html(response: requests.Response) -> bool:
    return response.headers.get("Content-Type", "").split(";")[0].strip().lower() in (
        "text/html",
        "application/xhtml+xml",
    )


def exchange(
    session: requests.Session,
    request: PreparedRequest,
    *,
    timeout: tuple[float, float],
    redactor: Redactor,
    oauth: bool = False,
) -> tuple[AttemptResult, requests.Response | None]:
    """Send once; classify by status whatever the body is (an HTML 502 is still a 502). The body is scrubbed before
    any excerpt of it is cut, so a secret straddling the cut cannot leave its first half behind."""
    started = _now()
    refused = _refused_header(request)
    if refused is not None:
        return AttemptResult(AttemptOutcome.CONFIG, started, _now(), error=redactor.scrub(refused)), None
    try:
        if isinstance(session, Session):
            response = session.send_body(request.method, request.url, request.body, request.headers, timeout)
        else:
            response = session.request(
                request.method,
                request.url,
                data=request.body,
                headers=dict(request.headers),
                timeout=timeout,
                allow_redirects=False,
            )
        body = redactor.excerpt(response.text, RESPONSE_KEEP_CHARS) or ""
    except requests.RequestException as exc:
        outcome, message = classify_exception(exc)
        result = AttemptResult(outcome, started, _now(), error=redactor.scrub(message))
        return result, None
    status = response.status_code
    outcome = outcome_for_status(status, oauth=oauth)
    error = None
    if outcome is AttemptOutcome.SUCCESS and _is_html(response):
        # No provider API answers with a web page: a proxy or captive portal did, and the provider may never have
        # seen the request. Retrying is safe (same idempotency key); accepting it could lose the event.
        outcome = AttemptOutcome.RETRYABLE
        error = f"HTTP {status} with an HTML page instead of an API response: {body.strip()[:200]}"
    elif outcome is not AttemptOutcome.SUCCESS:
        reason = response.reason or ""
        error = f"HTTP {status} {reason}".strip()
        if 300 <= status < 400:
            error += f" (unexpected redirect to {response.headers.get('Location', '?')})"
        excerpt = body.strip().replace("\n", " ")[:300]
        if excerpt:
            error += f": {excerpt}"
    result = AttemptResult(
        outcome,
        started,
        _now(),
        http_status=status,
        error=redactor.scrub(error),
        response_body=body,
        retry_after_s=parse_retry_after(response.headers.get("Retry-After")),
    )
    return result, response
