"""Authentication, tenant scope and rate limiting, in front of every route but the health probes and the provider
webhooks (signed instead: api/routes/webhooks).

A middleware rather than a per-route decorator so that a new route is protected by default. It answers 401
(no key, or a wrong, malformed or revoked key), 429 with Retry-After, or hands the route the caller's ApiKey.
"""

import sqlalchemy as sa
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.types import ASGIApp, Receive, Scope, Send

from impactin_pipelines.api.errors import LOG, ApiError, error_response
from impactin_pipelines.api.ratelimit import KeyedRateLimiter
from impactin_pipelines.store.api_keys import ApiKey, ApiKeyStore

PUBLIC_PATHS = frozenset({"/health", "/health/liveness", "/health/readiness"})
# Provider webhooks carry no API key: each callback is authenticated by its HMAC signature (api/routes/webhooks).
PUBLIC_PREFIXES = ("/v1/impact-in/webhooks/",)
_UNAUTHORIZED = "a valid API key is required: send 'Authorization: Bearer <key>'"


class AuthMiddleware:
    def __init__(
        self, app: ASGIApp, *, keys: ApiKeyStore, limiter: KeyedRateLimiter, max_header_chars: int = 256
    ) -> None:
        self.app, self.keys, self.limiter, self.max_header_chars = app, keys, limiter, max_header_chars

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in PUBLIC_PATHS or scope["path"].startswith(PUBLIC_PREFIXES):
            await self.app(scope, receive, send)
            return
        request = Request(scope)
        try:
            key = await self._authenticate(request.headers.get("authorization"))
            caller = f"key:{key.key_id}" if key else f"addr:{request.client.host if request.client else '?'}"
            wait = await run_in_threadpool(self.limiter.acquire, caller)  # the budget lives in the warehouse
        except sa.exc.DBAPIError as exc:  # whatever the driver says, no key can be checked: unavailable
            LOG.error(f"API key lookup or rate limit failed: database unavailable: {type(exc).__name__}")
            response = error_response(503, "Service unavailable", "the warehouse database is unavailable")
            await response(scope, receive, send)
            return
        if wait is not None:
            limit = self.limiter.per_minute
            response = ApiError(
                429, "Too many requests", f"more than {limit} requests per minute; retry after {wait:.0f} s"
            ).response(headers={"Retry-After": f"{wait:.0f}"})
        elif key is None:
            response = ApiError(401, "Unauthorized", _UNAUTHORIZED).response(headers={"WWW-Authenticate": "Bearer"})
        else:
            scope.setdefault("state", {})["api_key"] = key
            await self.app(scope, receive, send)
            return
        await response(scope, receive, send)

    async def _authenticate(self, header: str | None) -> ApiKey | None:
        if not header or len(header) > self.max_header_chars:
            return None
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            return None
        return await run_in_threadpool(self.keys.authenticate, token.strip())


def api_key(request: Request) -> ApiKey:
    """The caller, as the middleware found it."""
    return request.state.api_key


def require_company_in_scope(key: ApiKey, company_id: str | None, field: str = "companyId") -> None:
    """A company key may name only its own company. 403, not 404: the caller learns nothing about other
    companies (the answer is the same whether or not they exist) and sees at once that the key is the problem."""
    if company_id is not None and not key.is_admin and company_id != key.company_id:
        raise ApiError(
            403,
            "Forbidden",
            f"{field} {company_id!r} is outside this API key's scope (it may only use company {key.company_id!r})",
        )
