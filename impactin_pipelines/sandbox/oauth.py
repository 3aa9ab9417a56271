"""A fake OAuth2 client-credentials token endpoint that any sandbox provider can embed (Goodera, Workday REST).

It behaves like the Impact-In OAuth flow: `POST` form-encoded `grant_type=client_credentials` with the client
credentials in the body (or HTTP Basic, which RFC 6749 prefers), answering `{"access_token", "token_type",
"expires_in", "refresh_token"}`. Tokens are opaque random strings that expire on the sandbox's clock, so an API
route can refuse unknown or expired ones with 401 exactly as a real provider would; the reasons it refused bearers
for are counted (`bearer_refusals`), so a test can tell an expired token from a revoked one.

Usage inside a `ProviderSandbox` subclass::

    self.oauth = OAuthTokenIssuer(client_id, client_secret)
    ...
    if request.path == "/oauth/token":
        return self.oauth.token_response(request)
    refused = self.oauth.refuse_bearer(request)
    if refused is not None:
        return refused

and forward `configure`/`reset` to `self.oauth.configure(spec)` / `self.oauth.reset()`.
"""

import base64
import json
import secrets
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, unquote

from impactin_pipelines.sandbox.core import Request, Response

FORM_CONTENT_TYPE = "application/x-www-form-urlencoded"


@dataclass(frozen=True)
class IssuedToken:
    client_id: str
    issued_at: float
    expires_at: float
    scope: str | None


def _oauth_error(status: int, error: str, description: str) -> Response:
    response = Response.json(status, {"error": error, "error_description": description})
    if status == 401:
        response.headers["WWW-Authenticate"] = 'Basic realm="sandbox-oauth"'
    return response


class OAuthTokenIssuer:
    """Issues and checks opaque bearer tokens. Thread-safe; every knob is settable over the sandbox's
    `/_sandbox/{provider}/faults` control path through `configure` (keys below)."""

    def __init__(
        self,
        client_id: str,
        client_secret: str,
        *,
        expires_in: float = 3600,
        token_prefix: str = "sbx",  # noqa: S107 - a label, not a secret
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.client_id = client_id
        self.client_secret = client_secret
        self.expires_in = expires_in
        self.token_prefix = token_prefix
        self.clock = clock
        self.lock = threading.RLock()
        self.tokens: dict[str, IssuedToken] = {}
        self.token_requests = 0  # every request that reached the token endpoint, refused ones included
        self.tokens_issued = 0
        self.auth_methods: list[str] = []  # "body" or "basic", per accepted token request (no values kept)
        self.token_faults: list[dict[str, Any]] = []
        self.api_refuses_tokens = False  # True: the API answers 401 to every token, valid or not
        self.expired: set[str] = set()  # tokens that were refused once for being past their expiry
        self.bearer_refusals: dict[str, int] = {"missing": 0, "expired": 0, "unknown": 0, "refused": 0}
        self.clients: dict[str, str] = {}  # more accepted client ids -> secrets, each its own credential

    # -- control -----------------------------------------------------------------------------------------
    def configure(self, spec: Mapping[str, Any]) -> None:
        """`token_expires_in`: lifetime (s) of tokens issued from now on;
        `token_fail_next`: faults for the token endpoint only, consumed in order, e.g. {"status": 503, "count": 2},
        {"status": 401, "body": "<html>no</html>", "content_type": "text/html"}, {"mode": "hang", "seconds": 5};
        `expire_tokens`: true makes every token issued so far unknown (a provider-side revocation);
        `api_refuses_tokens`: true makes the API refuse every token, valid or not (credentials it does not accept);
        `clients`: {client_id: client_secret, ...} accepted besides the default one (one credential per company)."""
        with self.lock:
            if "token_expires_in" in spec:
                self.expires_in = float(spec["token_expires_in"])
            if "token_fail_next" in spec:
                items = spec["token_fail_next"]
                self.token_faults.extend([items] if isinstance(items, dict) else list(items))
            if spec.get("expire_tokens"):
                self.tokens.clear()
            if "api_refuses_tokens" in spec:
                self.api_refuses_tokens = bool(spec["api_refuses_tokens"])
            if "clients" in spec:
                self.clients.update({str(k): str(v) for k, v in dict(spec["clients"] or {}).items()})

    def reset(self) -> None:
        with self.lock:
            self.tokens.clear()
            self.token_requests = 0
            self.tokens_issued = 0
            self.auth_methods.clear()
            self.token_faults.clear()
            self.api_refuses_tokens = False
            self.expired.clear()
            self.bearer_refusals = dict.fromkeys(self.bearer_refusals, 0)
            self.clients.clear()

    def revoke_all(self) -> None:
        with self.lock:
            self.tokens.clear()

    def stats(self) -> dict[str, Any]:
        with self.lock:
            return {
                "token_requests": self.token_requests,
                "tokens_issued": self.tokens_issued,
                "auth_methods": list(self.auth_methods),
                "bearer_refusals": dict(self.bearer_refusals),
            }

    # -- the token endpoint ------------------------------------------------------------------------------
    def token_response(self, request: Request) -> Response:
        with self.lock:
            self.token_requests += 1
            fault = self._take_fault()
        if fault is not None:
            return self._inject(fault)
        if request.method != "POST":
            return _oauth_error(405, "invalid_request", "the token endpoint accepts POST only")
        content_type = (request.header("Content-Type") or "").split(";")[0].strip().lower()
        if content_type != FORM_CONTENT_TYPE:
            return _oauth_error(400, "invalid_request", f"Content-Type must be {FORM_CONTENT_TYPE}")
        try:
            form = dict(parse_qsl(request.body.decode("utf-8"), keep_blank_values=True, strict_parsing=False))
        except UnicodeDecodeError:
            return _oauth_error(400, "invalid_request", "body is not UTF-8")
        if form.get("grant_type") != "client_credentials":
            return _oauth_error(400, "unsupported_grant_type", "grant_type must be client_credentials")
        client_id, client_secret = self._credentials(request, form)
        if client_id is None:
            return _oauth_error(401, "invalid_client", "client authentication is required")
        with self.lock:
            expected = self.client_secret if client_id == self.client_id else self.clients.get(client_id)
        if expected is None or not secrets.compare_digest((client_secret or "").encode(), expected.encode()):
            return _oauth_error(401, "invalid_client", "unknown client or wrong secret")
        now = self.clock()
        with self.lock:
            token = f"{self.token_prefix}_{secrets.token_urlsafe(24)}"
            self.tokens[token] = IssuedToken(client_id, now, now + self.expires_in, form.get("scope"))
            self.tokens_issued += 1
            self.auth_methods.append("body" if form.get("client_id") else "basic")
            lifetime = self.expires_in
        body: dict[str, Any] = {
            "access_token": token,
            "token_type": "Bearer",
            "expires_in": int(lifetime) if float(lifetime).is_integer() else lifetime,
            "refresh_token": f"ref_{secrets.token_urlsafe(16)}",
        }
        if form.get("scope"):
            body["scope"] = form["scope"]
        return Response.json(200, body, **{"Cache-Control": "no-store", "Pragma": "no-cache"})

    @staticmethod
    def _credentials(request: Request, form: Mapping[str, str]) -> tuple[str | None, str | None]:
        """Body credentials (the contract's example) or HTTP Basic (RFC 6749 2.3.1): both are accepted."""
        if form.get("client_id"):
            return form["client_id"], form.get("client_secret")
        authorization = request.header("Authorization") or ""
        scheme, _, value = authorization.partition(" ")
        if scheme.lower() != "basic" or not value:
            return None, None
        try:
            decoded = base64.b64decode(value.strip(), validate=True).decode("utf-8")
        except (ValueError, UnicodeDecodeError):
            return None, None
        user, sep, password = decoded.partition(":")
        if not sep:
            return None, None
        return unquote(user.replace("+", " ")), unquote(password.replace("+", " "))

    def _take_fault(self) -> dict[str, Any] | None:
        while self.token_faults:
            head = self.token_faults[0]
            remaining = int(head.get("count", 1))
            if remaining <= 1:
                self.token_faults.pop(0)
            else:
                head["count"] = remaining - 1
            if remaining >= 1:
                return dict(head)
        return None

    @staticmethod
    def _inject(fault: Mapping[str, Any]) -> Response:
        if fault.get("mode") == "hang":  # the client's read timeout fires first
            time.sleep(float(fault.get("seconds", 5)))
            return _oauth_error(504, "temporarily_unavailable", "too late")
        status = int(fault.get("status", 503))
        body = fault.get("body")
        if body is None:
            payload = json.dumps({"error": "temporarily_unavailable" if status >= 500 else "invalid_client"})
        else:
            payload = str(body)
        headers = {"Content-Type": str(fault.get("content_type", "application/json"))}
        if fault.get("retry_after") is not None:
            headers["Retry-After"] = str(fault["retry_after"])
        return Response(status, payload.encode(), headers)

    # -- the protected API -------------------------------------------------------------------------------
    def bearer_token(self, request: Request) -> str | None:
        scheme, _, value = (request.header("Authorization") or "").partition(" ")
        return value.strip() if scheme.lower() == "bearer" and value.strip() else None

    def client_of(self, token: str | None) -> str | None:
        """The client a token was issued to (None when unknown)."""
        with self.lock:
            issued = self.tokens.get(token or "")
            return issued.client_id if issued is not None else None

    def is_valid(self, token: str | None) -> bool:
        return self._problem(token) is None

    def _problem(self, token: str | None) -> str | None:
        """Why a bearer token is not accepted: missing, expired, unknown (never issued, or revoked), or None."""
        if not token:
            return "missing"
        with self.lock:
            issued = self.tokens.get(token)
            if issued is None:
                return "expired" if token in self.expired else "unknown"
            if issued.expires_at <= self.clock():
                del self.tokens[token]
                self.expired.add(token)
                return "expired"
            return None

    def refuse_bearer(self, request: Request) -> Response | None:
        """None when the request carries a valid bearer token; otherwise the 401 a provider would answer."""
        problem = self._problem(self.bearer_token(request))
        if problem is None and self.api_refuses_tokens:
            problem = "refused"
        if problem is None:
            return None
        with self.lock:
            self.bearer_refusals[problem] += 1
        if problem == "missing":
            response = Response.json(401, {"error": "invalid_request", "error_description": "bearer token required"})
        elif problem == "refused":
            response = Response.json(
                401, {"error": "invalid_token", "error_description": "the client may not use this API"}
            )
        else:
            response = Response.json(
                401, {"error": "invalid_token", "error_description": "the access token is unknown or expired"}
            )
        response.headers["WWW-Authenticate"] = 'Bearer error="invalid_token"'
        return response
