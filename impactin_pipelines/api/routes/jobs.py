"""`GET /v1/impact-in/jobs/{id}`: progress and outcome summary of bulk work the API runs outside the request."""

from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from impactin_pipelines.api import validation
from impactin_pipelines.api.auth import api_key
from impactin_pipelines.api.errors import ApiError
from impactin_pipelines.api.routes.context import context
from impactin_pipelines.domain.events import format_timestamp
from impactin_pipelines.store import api_jobs


def job_shape(job: api_jobs.Job) -> dict[str, Any]:
    def time(value: Any) -> str | None:
        return format_timestamp(value) if value is not None else None

    return {
        "jobId": job.job_id,
        "kind": job.kind,
        "status": job.status.value,
        "companyId": job.company_id,
        "provider": job.provider,
        "progress": {"total": job.total, "processed": job.processed},
        "outcomes": {"succeeded": job.succeeded, "failed": job.failed, **job.summary},
        "error": job.error,
        "createdAt": time(job.created_at),
        "startedAt": time(job.started_at),
        "finishedAt": time(job.finished_at),
    }


async def get_job_route(request: Request) -> JSONResponse:
    """Any replica answers (the job lives in the warehouse). Another company's job is 404, like a missing one."""
    ident = validation.path(request, validation.JobPath).id
    job = await run_in_threadpool(
        api_jobs.get, context(request).engine, ident, company_ids=api_key(request).company_ids
    )
    if job is None:
        raise ApiError(404, "Job not found", f"job {ident} not found", id=ident)
    return JSONResponse({"data": job_shape(job)})


ROUTES = [Route("/v1/impact-in/jobs/{id}", get_job_route, methods=["GET"])]
