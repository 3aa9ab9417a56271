"""`GET /v1/impact-in/deliveries` and `GET /v1/impact-in/deliveries/{id}`."""

from collections.abc import Sequence

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from impactin_pipelines.api import shapes, validation
from impactin_pipelines.api.auth import api_key, require_company_in_scope
from impactin_pipelines.api.errors import ApiError
from impactin_pipelines.api.routes.context import context
from impactin_pipelines.domain.identity import scoped_event_id
from impactin_pipelines.store.delivery_log import DeliveryFilter, get_delivery, list_deliveries


async def list_route(request: Request) -> JSONResponse:
    """Newest first, filtered, one page (by `page`, or by `cursor`). A company key sees only its company; an
    admin key every company."""
    q = validation.list_query(request)
    key = api_key(request)
    require_company_in_scope(key, q.companyId)
    scope = [q.companyId] if q.companyId is not None else key.company_ids
    flt = DeliveryFilter(
        company_ids=scope,
        providers=[q.provider.value] if q.provider else None,
        statuses=[q.status.value] if q.status else None,
        since=q.startDate,
        until=q.endDate,
        error_kinds=[q.errorKind.value] if q.errorKind else None,
        event_ids=event_ids(q.eventId, key.company_ids) if q.eventId is not None else None,
        user_id=q.userId,
        search=q.search,
        metadata=q.metadata,
    )
    page = await run_in_threadpool(
        list_deliveries, context(request).engine, flt, page=q.page, limit=q.limit, cursor=q.cursor
    )
    return JSONResponse(
        {"data": [shapes.delivery_summary(r) for r in page.rows], "pagination": shapes.pagination(page)}
    )


def event_ids(event_id: str, scope: Sequence[str] | None) -> list[str]:
    """The stored ids an `eventId` names: a company key's own submissions are stored scoped to its company
    (`POST /deliver`), the platform's events under their own id."""
    return [event_id, *(scoped_event_id(c, event_id) for c in scope or ())]


async def get_route(request: Request) -> JSONResponse:
    """By row id or delivery id. Another company's row is 'not found', exactly like a missing one."""
    ident = validation.path(request, validation.DeliveryPath).id
    row = await run_in_threadpool(
        get_delivery, context(request).engine, ident, company_ids=api_key(request).company_ids
    )
    if row is None:
        raise not_found(ident)
    return JSONResponse({"data": shapes.delivery_detail(row)})


def not_found(ident: str) -> ApiError:
    return ApiError(404, "Delivery not found", f"delivery {ident} not found", id=ident)


ROUTES = [
    Route("/v1/impact-in/deliveries", list_route, methods=["GET"]),
    Route("/v1/impact-in/deliveries/{id}", get_route, methods=["GET"]),
]
