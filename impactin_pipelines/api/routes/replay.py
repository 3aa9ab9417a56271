"""Replay one, several, or all failed deliveries of a company: thin doors onto services/replay."""

import uuid

from sqlalchemy.engine import Engine
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from impactin_pipelines.api import shapes, validation
from impactin_pipelines.api.auth import api_key, require_company_in_scope
from impactin_pipelines.api.errors import ApiError
from impactin_pipelines.api.routes.context import context
from impactin_pipelines.api.routes.deliveries import not_found
from impactin_pipelines.domain.statuses import DeliveryStatus
from impactin_pipelines.services import replay
from impactin_pipelines.store.api_keys import ApiKey
from impactin_pipelines.store.delivery_log import status_counts


def run_id_for(key: ApiKey, action: str) -> str:
    """Recorded on every attempt the request makes, so the audit trail says which key did it."""
    return f"api-{action}-{key.key_id}-{uuid.uuid4().hex[:8]}"


def _items(results: list[replay.ReplayResult]) -> list[dict[str, object]]:
    return [shapes.replay_item(r.id, r.success, r.new_status, r.error) for r in results]


async def replay_one_route(request: Request) -> JSONResponse:
    """200 with `success` saying how the send went (false: it was sent and failed again, `newStatus` says
    what the row is now); 404 unknown or another company's; 400 refused (delivered already, or busy)."""
    ident = validation.path(request, validation.DeliveryPath).id
    key, ctx = api_key(request), context(request)
    try:
        result = await run_in_threadpool(
            replay.replay_one,
            ctx.engine,
            ctx.factory,
            ident,
            company_ids=key.company_ids,
            run_id=run_id_for(key, "replay"),
        )
    except replay.DeliveryNotFound:
        raise not_found(ident) from None
    except replay.ReplayRefused as exc:
        raise ApiError(400, "Replay refused", str(exc), id=ident) from None
    if result.success:
        return JSONResponse(
            {"success": True, "message": "Delivery replayed successfully", "newStatus": result.new_status}
        )
    return JSONResponse(
        {"success": False, "message": f"Delivery replay failed: {result.error}", "newStatus": result.new_status}
    )


async def bulk_replay_route(request: Request) -> JSONResponse:
    """Up to 100 ids; unknown, foreign and refused ids become failed results, the others are replayed."""
    ctx = context(request)
    body = await validation.body(request, validation.BulkReplayBody, ctx.settings.max_body_bytes)
    key = api_key(request)
    results = await run_in_threadpool(
        replay.replay_many,
        ctx.engine,
        ctx.factory,
        list(body.ids),
        company_ids=key.company_ids,
        run_id=run_id_for(key, "bulk-replay"),
    )
    return JSONResponse(shapes.replay_summary(_items(results)))


async def retry_all_failed_route(request: Request) -> JSONResponse:
    """Every failed delivery of the company (optionally one provider), oldest first, all of them. Up to
    `inline_replay_max` failed rows: 200 with the results; more: 202 with a job to follow at `Location`."""
    ctx = context(request)
    body = await validation.body(request, validation.RetryAllFailedBody, ctx.settings.max_body_bytes)
    key = api_key(request)
    require_company_in_scope(key, body.companyId)
    provider = body.provider.value if body.provider else None
    failed = await run_in_threadpool(_failed_count, ctx.engine, body.companyId, provider)
    if ctx.jobs is not None and failed > ctx.settings.inline_replay_max:
        job_id = await run_in_threadpool(
            ctx.jobs.retry_all_failed,
            company_id=body.companyId,
            provider=provider,
            key_id=key.key_id,
            run_id=run_id_for(key, "retry-all-failed"),
            total=failed,
        )
        location = f"/v1/impact-in/jobs/{job_id}"
        return JSONResponse(
            {"jobId": job_id, "status": "queued", "total": failed, "location": location},
            status_code=202,
            headers={"Location": location},
        )
    results = await run_in_threadpool(
        replay.replay_all_failed,
        ctx.engine,
        ctx.factory,
        company_id=body.companyId,
        provider=provider,
        run_id=run_id_for(key, "retry-all-failed"),
    )
    return JSONResponse(shapes.replay_summary(_items(results)))


def _failed_count(engine: Engine, company_id: str, provider: str | None) -> int:
    counts = status_counts(engine, company_ids=[company_id], providers=[provider] if provider else None)
    return sum(c.get(DeliveryStatus.FAILED.value, 0) for c in counts.values())


ROUTES = [
    Route("/v1/impact-in/deliveries/bulk-replay", bulk_replay_route, methods=["POST"]),
    Route("/v1/impact-in/deliveries/retry-all-failed", retry_all_failed_route, methods=["POST"]),
    Route("/v1/impact-in/deliveries/{id}/replay", replay_one_route, methods=["POST"]),
]
