"""Bulk work outside the request: `retry-all-failed` over more rows than `inline_replay_max` answers 202 with a job,
which a worker of the API runs; `GET /v1/impact-in/jobs/{id}` reports it from any replica (SQLite and PostgreSQL)."""

import time
from datetime import UTC, datetime, timedelta

import pytest
from jsonschema import Draft202012Validator

from impactin_pipelines.api.openapi import document
from impactin_pipelines.settings import ApiSettings
from impactin_pipelines.store import api_jobs
from impactin_pipelines.store.api_keys import ApiKeyStore
from tests.api.conftest import BASE, start_api
from tests.api.test_replay_api import seed_failed
from tests.support import rows

INLINE_MAX = 3
ROWS = 8
STILL_REJECTED = ("evt_acme_00002", "evt_acme_00005")


@pytest.fixture
def api_settings() -> ApiSettings:
    return ApiSettings(rate_limit_per_minute=100_000, inline_replay_max=INLINE_MAX)


def _conforms(body: dict, schema: str) -> None:
    """The response is what the OpenAPI document says it is."""
    doc = document()
    Draft202012Validator({"$ref": f"#/components/schemas/{schema}", "components": doc["components"]}).validate(body)


def _wait_done(api, location: str, key: str) -> dict:
    deadline = time.monotonic() + 60
    while True:
        job = api.get(location, key=key)
        assert job.status_code == 200, job.text
        data = job.json()["data"]
        if data["status"] in ("succeeded", "failed"):
            return data
        assert data["status"] in ("queued", "running"), data
        assert time.monotonic() < deadline, f"job still {data['status']} after 60 s: {data}"
        time.sleep(0.1)


def test_a_large_retry_all_failed_runs_as_a_job_that_any_replica_reports(api):
    failed = seed_failed(api, "acme", n=ROWS)
    api.sandbox.providers["benevity"].configure({"reject_events": list(STILL_REJECTED)})

    accepted = api.post(f"{BASE}/deliveries/retry-all-failed", {"companyId": "acme"}, key="acme")
    assert accepted.status_code == 202, accepted.text
    body = accepted.json()
    assert body["status"] == "queued" and body["total"] == ROWS
    assert accepted.headers["Location"] == body["location"] == f"{BASE}/jobs/{body['jobId']}"
    _conforms(body, "JobAccepted")

    done = _wait_done(api, body["location"], key="acme")
    assert done["status"] == "succeeded" and done["error"] is None
    _conforms({"data": done}, "JobResponse")
    assert done["progress"] == {"total": ROWS, "processed": ROWS}
    outcomes = done["outcomes"]
    assert (outcomes["succeeded"], outcomes["failed"]) == (ROWS - 2, 2)
    assert outcomes["byNewStatus"] == {"success": ROWS - 2, "failed": 2}
    by_event = {r["id"]: r["event_id"] for r in failed}
    assert sorted(by_event[f["id"]] for f in outcomes["failures"]) == sorted(STILL_REJECTED)
    assert all(f["newStatus"] == "failed" and f["error"] for f in outcomes["failures"])
    assert sorted(r["event_id"] for r in rows(api.engine, status="failed")) == sorted(STILL_REJECTED)

    # a second replica on the same warehouse answers for the job; scope holds there too
    other = start_api(api.engine, api.factory, ApiSettings(rate_limit_per_minute=100_000))
    try:
        seen = api.http.get(
            other.url + body["location"], headers={"Authorization": f"Bearer {api.keys['admin']}"}, timeout=30
        )
        assert seen.status_code == 200 and seen.json()["data"] == done
        foreign = api.http.get(
            other.url + body["location"], headers={"Authorization": f"Bearer {api.keys['globex']}"}, timeout=30
        )
        assert foreign.status_code == 404  # another company's job reads as missing
    finally:
        other.stop()


def test_small_requests_still_answer_inline(api):
    seed_failed(api, "acme", n=INLINE_MAX)
    response = api.post(f"{BASE}/deliveries/retry-all-failed", {"companyId": "acme"}, key="acme")
    assert response.status_code == 200
    assert response.json()["summary"] == {"total": INLINE_MAX, "successful": INLINE_MAX, "failed": 0}


def test_unknown_and_malformed_job_ids(api):
    assert api.get(f"{BASE}/jobs/{'0' * 32}").status_code == 404
    malformed = api.get(f"{BASE}/jobs/not-a-job")
    assert malformed.status_code == 400 and malformed.json()["details"][0]["field"] == "id"


def test_a_job_whose_worker_stopped_reads_as_abandoned(engine):
    key = ApiKeyStore(engine).create(admin=True).key
    job_id = api_jobs.create(
        engine, kind="retry-all-failed", company_id="acme", provider=None, key_id=key.key_id, total=5
    )
    api_jobs.start(engine, job_id)
    api_jobs.progress(engine, job_id, processed=2, succeeded=2, failed=0, summary={"byNewStatus": {"success": 2}})
    running = api_jobs.get(engine, job_id, company_ids=None)
    assert running is not None and running.status is api_jobs.JobStatus.RUNNING and running.processed == 2
    later = datetime.now(UTC) + api_jobs.ABANDONED_AFTER + timedelta(seconds=1)  # past the last heartbeat
    stale = api_jobs.get(engine, job_id, company_ids=None, now=later)
    assert stale is not None and stale.status is api_jobs.JobStatus.ABANDONED
    assert api_jobs.get(engine, job_id, company_ids=("globex",)) is None
    api_jobs.finish(engine, job_id)
    finished = api_jobs.get(engine, job_id, company_ids=("acme",), now=later + timedelta(days=1))
    assert finished is not None and finished.status is api_jobs.JobStatus.SUCCEEDED  # finished jobs never go stale
