"""Bulk API work run outside the request: one row per job in `impact_api_jobs`, so any API replica can report it.

A job is `queued` when the request answers 202, `running` while its worker moves `heartbeat_at`, then `succeeded`
or `failed` (the job itself broke; rows that failed to deliver are counted in `failed`, they do not fail the job).
A running job whose heartbeat is older than `ABANDONED_AFTER` lost its process: readers see it as abandoned.
"""

import json
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from impactin_pipelines.store.engine import read_connection
from impactin_pipelines.store.outbox import utcnow
from impactin_pipelines.store.schema import impact_api_jobs as jobs

ABANDONED_AFTER = timedelta(minutes=5)  # workers beat at least once per page of rows, far more often than this


class JobStatus(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    ABANDONED = "abandoned"  # reported only: a running row whose heartbeat stopped


@dataclass(frozen=True)
class Job:
    job_id: str
    kind: str
    status: JobStatus
    company_id: str
    provider: str | None
    total: int
    processed: int
    succeeded: int
    failed: int
    summary: dict[str, Any]
    error: str | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None


def create(engine: Engine, *, kind: str, company_id: str, provider: str | None, key_id: str, total: int) -> str:
    job_id = uuid.uuid4().hex
    with engine.begin() as conn:
        conn.execute(
            sa.insert(jobs).values(
                job_id=job_id,
                kind=kind,
                status=JobStatus.QUEUED.value,
                company_id=company_id,
                provider=provider,
                key_id=key_id,
                total=total,
                processed=0,
                succeeded=0,
                failed=0,
                created_at=utcnow(),
            )
        )
    return job_id


def start(engine: Engine, job_id: str) -> None:
    now = utcnow()
    with engine.begin() as conn:
        conn.execute(
            sa.update(jobs)
            .where(jobs.c.job_id == job_id)
            .values(status=JobStatus.RUNNING.value, started_at=now, heartbeat_at=now)
        )


def progress(
    engine: Engine, job_id: str, *, processed: int, succeeded: int, failed: int, summary: dict[str, Any]
) -> None:
    """The running totals so far (not increments: a repeated write is harmless) and a heartbeat."""
    with engine.begin() as conn:
        conn.execute(
            sa.update(jobs)
            .where(jobs.c.job_id == job_id)
            .values(
                processed=processed,
                succeeded=succeeded,
                failed=failed,
                total=sa.func.max(jobs.c.total, processed)
                if engine.dialect.name == "sqlite"
                else sa.func.greatest(jobs.c.total, processed),  # rows that failed during the job join it
                summary=json.dumps(summary, sort_keys=True),
                heartbeat_at=utcnow(),
            )
        )


def finish(engine: Engine, job_id: str, *, error: str | None = None) -> None:
    status = JobStatus.FAILED if error else JobStatus.SUCCEEDED
    with engine.begin() as conn:
        conn.execute(
            sa.update(jobs)
            .where(jobs.c.job_id == job_id)
            .values(status=status.value, error=error, finished_at=utcnow(), heartbeat_at=utcnow())
        )


def get(engine: Engine, job_id: str, *, company_ids: tuple[str, ...] | None, now: datetime | None = None) -> Job | None:
    """The job if it exists and is in scope (None: every company)."""
    stmt = sa.select(jobs).where(jobs.c.job_id == job_id)
    if company_ids is not None:
        stmt = stmt.where(jobs.c.company_id.in_(company_ids))
    with read_connection(engine) as conn:
        row = conn.execute(stmt).first()
    if row is None:
        return None
    status = JobStatus(row.status)
    beat = row.heartbeat_at or row.created_at
    if status in (JobStatus.QUEUED, JobStatus.RUNNING) and (now or utcnow()) - beat > ABANDONED_AFTER:
        status = JobStatus.ABANDONED
    return Job(
        job_id=row.job_id,
        kind=row.kind,
        status=status,
        company_id=row.company_id,
        provider=row.provider,
        total=row.total,
        processed=row.processed,
        succeeded=row.succeeded,
        failed=row.failed,
        summary=json.loads(row.summary) if row.summary else {},
        error=row.error,
        created_at=row.created_at,
        started_at=row.started_at,
        finished_at=row.finished_at,
    )
