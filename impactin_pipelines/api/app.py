"""Builds the Starlette application: routes, the middleware in front of them, and the error handlers.

Order of the gates a request meets: the client's address (X-Forwarded-For, only when the peer is one of
`trusted_proxies`) -> size limits (cheap, before any lookup) -> authentication and rate limit -> the route (which
validates its input and checks the company scope) -> the error handlers. uvicorn's own forwarding support is off
(api/server.py): it trusts loopback by default, and anyone on the host could then choose their address.
"""

import contextlib
from collections.abc import AsyncIterator

from sqlalchemy.engine import Engine
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route
from uvicorn.middleware.proxy_headers import ProxyHeadersMiddleware

from impactin_pipelines.api import openapi
from impactin_pipelines.api.auth import AuthMiddleware
from impactin_pipelines.api.errors import EXCEPTION_HANDLERS
from impactin_pipelines.api.jobs import JobRunner
from impactin_pipelines.api.limits import RequestLimitsMiddleware
from impactin_pipelines.api.ratelimit import KeyedRateLimiter
from impactin_pipelines.api.routes import deliver, deliveries, health, jobs, metrics, replay, stats, webhooks
from impactin_pipelines.api.routes.context import ApiContext
from impactin_pipelines.connectors.registry import ConnectorFactory
from impactin_pipelines.settings import ApiSettings
from impactin_pipelines.store.api_keys import ApiKeyStore


async def openapi_route(_request: Request) -> JSONResponse:
    return JSONResponse(openapi.document())


ROUTES = [
    *deliveries.ROUTES,
    *replay.ROUTES,
    *deliver.ROUTES,
    *stats.ROUTES,
    *health.ROUTES,
    *metrics.ROUTES,
    *webhooks.ROUTES,
    *jobs.ROUTES,
    Route("/openapi.json", openapi_route, methods=["GET"]),
]


def build_app(
    engine: Engine, *, factory: ConnectorFactory | None = None, settings: ApiSettings | None = None
) -> Starlette:
    """The API over this warehouse. A factory passed in stays the caller's to close; one made here is closed
    when the app shuts down."""
    settings = settings or ApiSettings.from_env()
    owned = factory is None
    factory = factory or ConnectorFactory(engine)
    runner = JobRunner(engine, factory, workers=settings.job_workers)
    ctx = ApiContext(engine, factory, settings, jobs=runner)

    @contextlib.asynccontextmanager
    async def lifespan(_app: Starlette) -> AsyncIterator[None]:
        yield
        runner.close()
        if owned:
            ctx.factory.close()

    forwarding = (
        [Middleware(ProxyHeadersMiddleware, trusted_hosts=list(settings.trusted_proxies))]
        if settings.trusted_proxies
        else []
    )
    app = Starlette(
        routes=ROUTES,
        middleware=[
            *forwarding,
            Middleware(
                RequestLimitsMiddleware,
                max_query_bytes=settings.max_query_bytes,
                max_body_bytes=settings.max_body_bytes,
            ),
            Middleware(
                AuthMiddleware,
                keys=ApiKeyStore(engine),
                limiter=KeyedRateLimiter(engine, settings.rate_limit_per_minute),
                max_header_chars=settings.max_auth_header_chars,
            ),
        ],
        exception_handlers=EXCEPTION_HANDLERS,
        lifespan=lifespan,
    )
    app.router.redirect_slashes = False  # an empty 307 answered for the router; a JSON 404 names the route instead
    app.state.ctx = ctx
    return app
