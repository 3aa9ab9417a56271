"""`POST /v1/impact-in/deliver`: validate the contract's event body and hand it to services/deliver_now."""

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from impactin_pipelines.api import shapes, validation
from impactin_pipelines.api.auth import api_key, require_company_in_scope
from impactin_pipelines.api.errors import ApiError, bad_request, field_error
from impactin_pipelines.api.routes.context import context
from impactin_pipelines.api.routes.replay import run_id_for
from impactin_pipelines.services import deliver_now as service


async def deliver_route(request: Request) -> JSONResponse:
    """201 with the delivery when it was created (and sent) now; 200 with the existing delivery when this
    event was already delivered to this provider (nothing is sent again); 409 when the eventId is taken by a
    different event. A company key's event ids live in its company's namespace (services/deliver_now), so the
    409 only ever concerns the caller's own events."""
    ctx = context(request)
    body = await validation.body(request, validation.DeliverBody, ctx.settings.max_body_bytes)
    key = api_key(request)
    require_company_in_scope(key, body.companyId)
    try:
        result = await run_in_threadpool(
            service.deliver_now,
            ctx.engine,
            ctx.factory,
            body.raw_event(),
            body.provider,
            company_ids=key.company_ids,
            run_id=run_id_for(key, "deliver"),
        )
    except service.OutOfScope as exc:
        raise ApiError(403, "Forbidden", str(exc)) from None
    except service.EventConflict as exc:
        raise ApiError(409, "Conflict", str(exc)) from None
    except service.DeliverNowRefused as exc:
        raise bad_request([field_error("provider", str(exc), body.provider.value)]) from None
    return JSONResponse({"data": shapes.delivery_detail(result.row)}, status_code=201 if result.created else 200)


ROUTES = [Route("/v1/impact-in/deliver", deliver_route, methods=["POST"])]
