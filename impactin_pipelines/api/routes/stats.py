"""`GET /v1/impact-in/stats`: the contract's shape, from the one stats service the CLI and the asset use."""

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from impactin_pipelines.api import validation
from impactin_pipelines.api.auth import api_key, require_company_in_scope
from impactin_pipelines.api.routes.context import context
from impactin_pipelines.services.stats import StatsFilter, delivery_stats


async def stats_route(request: Request) -> JSONResponse:
    q = validation.query(request, validation.StatsQuery)
    key = api_key(request)
    require_company_in_scope(key, q.companyId)
    scope = (q.companyId,) if q.companyId is not None else key.company_ids
    flt = StatsFilter(company_ids=scope, since=q.startDate, until=q.endDate)
    return JSONResponse({"data": await run_in_threadpool(delivery_stats, context(request).engine, flt)})


ROUTES = [Route("/v1/impact-in/stats", stats_route, methods=["GET"])]
