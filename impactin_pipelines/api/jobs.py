"""Bulk API work outside the request: a worker thread pool the API process owns, with each job's progress and
outcome summary in the warehouse (store/api_jobs), so whichever replica a client reaches answers
`GET /v1/impact-in/jobs/{id}`.

Why a worker in the API rather than the Dagster replay job: the API is a store-only process (it imports no Dagster
and may run where no Dagster instance is reachable), and the replay service already settles rows page by page, so a
thread reports progress per page with no run launcher, daemon or run queue in between. If the process dies, the job
stops where it was and reads as abandoned; its rows stay failed or retrying, replayable again (each row is claimed
before it is sent, so nothing is sent twice).
"""

import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy.engine import Engine

from impactin_pipelines.api import shapes
from impactin_pipelines.connectors.registry import ConnectorFactory
from impactin_pipelines.services import replay
from impactin_pipelines.store import api_jobs

LOG = logging.getLogger("impactin.api.jobs")
MAX_FAILURES_LISTED = 100  # per job summary: the first rows that did not deliver, with their error


@dataclass
class Tally:
    """Running totals of a job's results and the summary GET shows."""

    processed: int = 0
    succeeded: int = 0
    failed: int = 0
    by_status: dict[str, int] = field(default_factory=dict)
    failures: list[dict[str, Any]] = field(default_factory=list)

    def add(self, results: list[replay.ReplayResult]) -> None:
        for r in results:
            self.processed += 1
            status = r.new_status or "unchanged"
            self.by_status[status] = self.by_status.get(status, 0) + 1
            if r.success:
                self.succeeded += 1
                continue
            self.failed += 1
            if len(self.failures) < MAX_FAILURES_LISTED:
                self.failures.append(shapes.replay_item(r.id, r.success, r.new_status, r.error))

    def summary(self) -> dict[str, Any]:
        return {"byNewStatus": dict(sorted(self.by_status.items())), "failures": self.failures}


class JobRunner:
    def __init__(self, engine: Engine, factory: ConnectorFactory, *, workers: int = 1) -> None:
        self.engine, self.factory = engine, factory
        self._pool = ThreadPoolExecutor(workers, thread_name_prefix="impactin-api-job")

    def retry_all_failed(self, *, company_id: str, provider: str | None, key_id: str, run_id: str, total: int) -> str:
        """Record the job (queued) and hand it to a worker; returns its id at once."""
        job_id = api_jobs.create(
            self.engine, kind="retry-all-failed", company_id=company_id, provider=provider, key_id=key_id, total=total
        )
        self._pool.submit(self._retry_all_failed, job_id, company_id, provider, run_id)
        return job_id

    def _retry_all_failed(self, job_id: str, company_id: str, provider: str | None, run_id: str) -> None:
        tally = Tally()

        def on_page(results: list[replay.ReplayResult]) -> None:
            tally.add(results)
            api_jobs.progress(
                self.engine,
                job_id,
                processed=tally.processed,
                succeeded=tally.succeeded,
                failed=tally.failed,
                summary=tally.summary(),
            )

        try:
            api_jobs.start(self.engine, job_id)
            replay.replay_all_failed(
                self.engine, self.factory, company_id=company_id, provider=provider, run_id=run_id, on_page=on_page
            )
        except Exception as exc:  # the job ends failed and says why; the worker lives on for the next job
            LOG.exception(f"API job {job_id} failed")
            try:
                api_jobs.finish(self.engine, job_id, error=f"the job stopped: {type(exc).__name__}")
            except Exception:
                LOG.exception(f"API job {job_id}: could not record the failure (it will read as abandoned)")
            return
        api_jobs.finish(self.engine, job_id)

    def close(self) -> None:
        """Let running jobs finish; jobs still queued are dropped (they read as abandoned)."""
        self._pool.shutdown(wait=True, cancel_futures=True)
