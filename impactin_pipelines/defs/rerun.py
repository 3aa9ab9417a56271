"""The rerun sensor: heals transient trouble by itself, and stops when it should.

Two sources of work, both re-run as range runs of `impact_delivery_job` (one per provider):
- failed delivery runs (of the job, or of the implicit asset job when a delivery asset was launched from the UI):
  their partitions that still have work are re-run after a growing pause
  (`RetryPolicy.next_run_delay`), as attempt N+1 of the same chain (`impactin/rerun_of`, `impactin/rerun_attempt`),
  `run_key` = chain + attempt + provider. At `max_run_attempts` the chain stops (logged). Runs Dagster will
  retry itself (`dagster/will_retry`) are left to Dagster.
- `retrying` rows whose `next_attempt_at` has come. Their spacing and cap are the rows' own (DeliveryRun
  parks them with a growing `next_attempt_at` and turns them `failed/exhausted` at the cap); the run_key is
  derived from the rows' run counts, which every claim increments, so one state of the rows gets one run.
  Rows already past the cap (a run died before settling them) are left to the asset check, not re-run.

Partitions a run of the job is already working on are left alone. The cursor remembers failed runs already
dealt with, so a tick only looks at new ones.
"""

import hashlib
import json
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import dagster as dg

from impactin_pipelines.connectors.retry import RetryPolicy
from impactin_pipelines.defs.assets.delivery import impact_deliveries, impact_outbox
from impactin_pipelines.defs.jobs import impact_delivery_job
from impactin_pipelines.defs.orchestration.partitions import COMPANY_PARTITIONS, split_key
from impactin_pipelines.defs.orchestration.planning import RANGE_END_TAG, RANGE_START_TAG, covering_range, run_request
from impactin_pipelines.defs.resources import DeliveryResource, WarehouseResource
from impactin_pipelines.domain.providers import PROVIDERS
from impactin_pipelines.store.reruns import due_retrying
from impactin_pipelines.store.source import work_by_provider

RERUN_OF_TAG = "impactin/rerun_of"
ATTEMPT_TAG = "impactin/rerun_attempt"
WILL_RETRY_TAG = "dagster/will_retry"
PARTITION_TAG = "dagster/partition"
TRIGGER = "rerun"
ASSET_JOB = "__ASSET_JOB"  # the implicit job Dagster runs asset backfills and asset-page launches as
DELIVERY_ASSETS = {impact_outbox.key, impact_deliveries.key}
LOOKBACK = timedelta(days=2)  # failed runs older than this are no longer the sensor's business
MAX_FAILED_RUNS = 500  # per tick; the cursor lets the next tick see the rest
IN_PROGRESS = [
    dg.DagsterRunStatus.QUEUED,
    dg.DagsterRunStatus.NOT_STARTED,
    dg.DagsterRunStatus.STARTING,
    dg.DagsterRunStatus.STARTED,
]

Partitions = dict[str, set[str]]  # provider -> companies


def run_partitions(tags: Mapping[str, str], known: Sequence[str]) -> Partitions:
    """The (provider -> companies) a run of the job covered, from its range tags or its partition tag."""
    start, end = tags.get(RANGE_START_TAG), tags.get(RANGE_END_TAG)
    if not (start and end):
        start = end = tags.get(PARTITION_TAG)
    if not (start and end):
        return {}
    try:
        (c0, p0), (c1, p1) = split_key(start), split_key(end)
    except Exception:  # a tag we did not write: nothing to re-run from it
        return {}
    if c0 not in known or c1 not in known or p0 not in PROVIDERS or p1 not in PROVIDERS:
        return {}
    companies = set(known[known.index(c0) : known.index(c1) + 1])
    return {p: set(companies) for p in PROVIDERS[PROVIDERS.index(p0) : PROVIDERS.index(p1) + 1]}


def attempt_of(tags: Mapping[str, str]) -> int:
    try:
        return max(1, int(tags.get(ATTEMPT_TAG, "1")))
    except ValueError:
        return 1


@dataclass
class RerunCursor:
    handled: dict[str, float] = field(default_factory=dict)  # failed run id -> its end time

    @classmethod
    def load(cls, text: str | None) -> "RerunCursor":
        try:
            doc = json.loads(text or "{}")
            return cls({str(k): float(v) for k, v in dict(doc.get("handled", {})).items()})
        except (ValueError, TypeError, AttributeError):
            return cls()

    def dump(self, oldest: float) -> str:
        return json.dumps({"handled": {k: v for k, v in sorted(self.handled.items()) if v >= oldest}})


def _add(target: Partitions, provider: str, companies: set[str]) -> None:
    target.setdefault(provider, set()).update(companies)


def delivery_run_records(
    instance: dg.DagsterInstance,
    statuses: Sequence[dg.DagsterRunStatus],
    updated_after: datetime | None = None,
    limit: int = MAX_FAILED_RUNS,
) -> list[dg.RunRecord]:
    """Runs that deliver, whoever launched them: `impact_delivery_job`, and the implicit asset job's runs (a
    backfill from an asset page, `dagster asset materialize`) whose selection holds a delivery asset."""
    records: list[dg.RunRecord] = []
    for job in (impact_delivery_job.name, ASSET_JOB):
        found = instance.get_run_records(
            filters=dg.RunsFilter(job_name=job, statuses=list(statuses), updated_after=updated_after), limit=limit
        )
        records += [r for r in found if job != ASSET_JOB or (r.dagster_run.asset_selection or set()) & DELIVERY_ASSETS]
    return records


def _busy(instance: dg.DagsterInstance, known: Sequence[str]) -> Partitions:
    busy: Partitions = {}
    for record in delivery_run_records(instance, IN_PROGRESS):
        for provider, companies in run_partitions(record.dagster_run.tags, known).items():
            _add(busy, provider, companies)
    return busy


def _with_tags(request: dg.RunRequest, **tags: str) -> dg.RunRequest:
    return dg.RunRequest(run_key=request.run_key, tags={**request.tags, **tags}, run_config=request.run_config)


@dg.sensor(
    name="impact_rerun_sensor",
    job=impact_delivery_job,
    minimum_interval_seconds=60,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Re-runs partitions of failed delivery runs (spaced, capped) and partitions with due retrying rows.",
)
def impact_rerun_sensor(
    context: dg.SensorEvaluationContext, warehouse: WarehouseResource, delivery: DeliveryResource
) -> dg.SensorResult:
    now = datetime.now(UTC)
    cap = delivery.max_run_attempts
    policy = RetryPolicy(delivery.retry.settings())
    cursor = RerunCursor.load(context.cursor)
    known = context.instance.get_dynamic_partitions(COMPANY_PARTITIONS)
    busy = _busy(context.instance, known)
    work = work_by_provider(warehouse.engine, now)
    requests: list[dg.RunRequest] = []
    planned: Partitions = {}
    notes: list[str] = []

    failed = delivery_run_records(context.instance, [dg.DagsterRunStatus.FAILURE], updated_after=now - LOOKBACK)
    for record in sorted(failed, key=lambda r: r.storage_id):
        run = record.dagster_run
        if run.run_id in cursor.handled:
            continue
        ended = record.end_time or record.update_timestamp.timestamp()
        tags = run.tags
        if tags.get(WILL_RETRY_TAG, "").lower() == "true":
            cursor.handled[run.run_id] = ended  # Dagster's own run retry takes it from here
            continue
        attempt = attempt_of(tags)
        root = tags.get(RERUN_OF_TAG, run.run_id)
        if attempt >= cap:
            context.log.warning(f"run {run.run_id} failed on attempt {attempt} of {cap}: not re-run again")
            notes.append(f"run {run.run_id[:8]} gave up after {attempt} attempt(s)")
            cursor.handled[run.run_id] = ended
            continue
        due = datetime.fromtimestamp(ended, UTC) + timedelta(seconds=policy.next_run_delay(attempt))
        if now < due:
            notes.append(f"run {run.run_id[:8]} is re-run at {due.isoformat(timespec='seconds')}")
            continue
        for provider, companies in sorted(run_partitions(tags, known).items()):
            todo = (companies & work.get(provider, set())) - busy.get(provider, set())
            rng = covering_range(known, todo, provider)
            if rng is None:
                continue
            key = f"rerun-{root}-{attempt + 1}-{provider}"
            request = run_request(rng, trigger=TRIGGER, run_key=key)
            requests.append(_with_tags(request, **{ATTEMPT_TAG: str(attempt + 1), RERUN_OF_TAG: root}))
            _add(planned, provider, todo)
        cursor.handled[run.run_id] = ended

    due_rows: dict[str, list] = defaultdict(list)
    for group in due_retrying(warehouse.engine, now, max_run_count=cap):  # one last run settles a row at the cap
        taken = busy.get(group.provider, set()) | planned.get(group.provider, set())
        if group.company_id not in taken and group.company_id in known:
            due_rows[group.provider].append(group)
    for provider, groups in sorted(due_rows.items()):
        rng = covering_range(known, [g.company_id for g in groups], provider)
        if rng is None:
            continue
        state = json.dumps([(g.company_id, g.rows, g.run_total) for g in groups])
        digest = hashlib.sha256(state.encode()).hexdigest()[:16]
        attempt = max(g.max_run_count for g in groups) + 1
        key = f"rerun-rows-{provider}-{digest}"
        request = run_request(rng, trigger=TRIGGER, run_key=key)
        requests.append(_with_tags(request, **{ATTEMPT_TAG: str(attempt)}))

    new_cursor = cursor.dump(oldest=(now - LOOKBACK).timestamp())
    if requests:
        return dg.SensorResult(run_requests=requests, cursor=new_cursor)
    reason = "; ".join(notes[:10]) or "no failed delivery runs to re-run and no due retrying rows"
    return dg.SensorResult(skip_reason=reason, cursor=new_cursor)
