"""`GET /metrics`: the Prometheus exposition, read from the warehouse at scrape time (services/metrics.py).

It needs an admin API key like every other route but the health probes: the figures span every company, and the
pause scopes name companies, so a company's key must not read them (403). Prometheus sends the key with
`authorization: {type: Bearer, credentials_file: ...}` in its scrape config.
"""

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from impactin_pipelines.api.auth import api_key
from impactin_pipelines.api.errors import ApiError
from impactin_pipelines.api.routes.context import context
from impactin_pipelines.services.metrics import CONTENT_TYPE, MetricsExposition


async def metrics_route(request: Request) -> Response:
    if not api_key(request).is_admin:
        raise ApiError(403, "Forbidden", "the metrics span every company: an admin API key is required")
    state = request.app.state
    if getattr(state, "metrics", None) is None:  # one per app: it keeps the attempt log's tally between scrapes
        state.metrics = MetricsExposition(context(request).engine)
    body = await run_in_threadpool(state.metrics.render)
    return Response(body, media_type=CONTENT_TYPE)


ROUTES = [Route("/metrics", metrics_route, methods=["GET"])]
