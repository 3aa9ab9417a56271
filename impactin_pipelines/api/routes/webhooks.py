"""`POST /v1/impact-in/webhooks/{provider}`: a provider confirms, rejects or deletes a delivery.

No API key: the provider proves itself with the HMAC signature (security/webhooks), so this path is public in the
auth middleware. Unsigned, mis-signed, stale or replayed callbacks get 401 and change nothing; the reason goes to
the log, never the signature or the secret.
"""

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from impactin_pipelines.api import validation
from impactin_pipelines.api.errors import LOG, ApiError
from impactin_pipelines.api.routes.context import context
from impactin_pipelines.providers import provider_names
from impactin_pipelines.security.webhooks import SIGNATURE_HEADER, SignatureError
from impactin_pipelines.services import webhooks
from impactin_pipelines.store.confirmations import CallbackError

PATH_PREFIX = "/v1/impact-in/webhooks/"


async def webhook_route(request: Request) -> JSONResponse:
    provider = str(request.path_params["provider"])
    if provider not in provider_names():
        raise ApiError(404, "Not found", f"no provider named {provider[:40]!r} (one of: {', '.join(provider_names())})")
    ctx = context(request)
    body = await validation.read_capped(request, ctx.settings.max_body_bytes)
    try:
        received = await run_in_threadpool(
            webhooks.receive,
            ctx.factory,
            provider,
            body,
            request.headers.get(SIGNATURE_HEADER),
            tolerance_s=ctx.settings.webhook_tolerance_s,
        )
    except SignatureError as exc:
        LOG.warning(f"webhook from {provider} refused: {exc}")
        raise ApiError(401, "Unauthorized", f"the callback is not authentic: {exc}") from None
    except CallbackError as exc:
        raise ApiError(400, "Validation error", str(exc)) from None
    LOG.info(f"webhook from {provider}: callback {received.callback_id[:80]!r} -> {received.effect}")
    return JSONResponse(
        {"received": True, "effect": received.effect, "deliveryId": received.delivery_id},
        status_code=200,
    )


ROUTES = [Route(PATH_PREFIX + "{provider}", webhook_route, methods=["POST"])]
