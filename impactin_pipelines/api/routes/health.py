"""Health probes (no authentication): liveness says the process serves; readiness says the warehouse answers
and its schema is the one this code needs. Both are what Kubernetes probes expect."""

import anyio
import sqlalchemy as sa
from sqlalchemy.engine import Engine
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from impactin_pipelines.api.routes.context import context
from impactin_pipelines.store import migrations

SERVICE = "impact-in"
CHECK_TIMEOUT_S = 5.0


async def _database_checks(engine: Engine) -> dict[str, str]:
    wanted = migrations.latest_version()
    try:
        with anyio.fail_after(CHECK_TIMEOUT_S):
            have = await anyio.to_thread.run_sync(migrations.current_version, engine, abandon_on_cancel=True)
    except TimeoutError:
        return {"database": f"unavailable: no answer within {CHECK_TIMEOUT_S:.0f} s"}
    except sa.exc.SQLAlchemyError as exc:  # the driver's message may name hosts and users: say only what failed
        return {"database": f"unavailable: {type(exc).__name__}"}
    schema = "ok" if have >= wanted else f"at version {have}, needs {wanted}: run `impactin db upgrade`"
    return {"database": "ok", "schema": schema}


def _answer(checks: dict[str, str], ok_word: str) -> JSONResponse:
    ok = all(v == "ok" for v in checks.values())
    body = {"status": ok_word if ok else "unavailable", "service": SERVICE, "checks": checks}
    return JSONResponse(body, status_code=200 if ok else 503)


async def health(request: Request) -> JSONResponse:
    return _answer(await _database_checks(context(request).engine), "ok")


async def liveness(_request: Request) -> JSONResponse:
    return JSONResponse({"status": "alive", "service": SERVICE})


async def readiness(request: Request) -> JSONResponse:
    return _answer(await _database_checks(context(request).engine), "ready")


ROUTES = [
    Route("/health", health, methods=["GET"]),
    Route("/health/liveness", liveness, methods=["GET"]),
    Route("/health/readiness", readiness, methods=["GET"]),
]
