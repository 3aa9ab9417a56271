"""Reconciliation: compare our `success` rows with what the provider says it holds, per company x provider.

A `success` only means the provider answered 2xx; this asks it later (the connector's `read_back`,
connectors/readback) and names every difference:

- `missing_at_provider`: our row succeeded in the period, the provider holds nothing under its key or event id;
- `not_in_our_log`: the provider holds a record received in the period that matches none of our rows, or matches a
  row of this company that is not `success` (the detail says its status);
- `payload_differs`: both hold it, but the provider's document hashes differently from the bytes we stored;
- `deleted_at_provider`: missing, but the provider told us by webhook it deleted it (store/confirmations). Listed,
  never a failure, and never re-queued: the deletion was the provider's (or its user's) decision.

The provider is asked for the period widened by `margin` on both sides, so a record received a moment before or
after our own clock said "delivered" still matches. `repair` re-queues the rows the provider lacks as `pending`
with the same delivery id (idempotency key) and payload, for the next delivery run. Each run's result replaces the
pair's previous one in `impact_reconciliations` / `impact_reconciliation_differences`, which the asset check reads.
"""

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from impactin_pipelines.connectors.readback import HeldRecord, Period, ReadBackError, ReadsBack
from impactin_pipelines.connectors.registry import ConnectorFactory
from impactin_pipelines.domain.errors import ConfigError
from impactin_pipelines.domain.providers import Provider
from impactin_pipelines.domain.statuses import DeliveryStatus
from impactin_pipelines.mapping.encoding import encode_json
from impactin_pipelines.store.engine import read_connection
from impactin_pipelines.store.schema import impact_deliveries as d
from impactin_pipelines.store.schema import impact_reconciliation_differences as rd
from impactin_pipelines.store.schema import impact_reconciliations as rc

MISSING, EXTRA, DIFFERS, DELETED = "missing_at_provider", "not_in_our_log", "payload_differs", "deleted_at_provider"
FAILING = (MISSING, EXTRA, DIFFERS)
DEFAULT_MARGIN = timedelta(minutes=10)
_CHUNK = 1000


@dataclass(frozen=True)
class Difference:
    problem: str
    ref: str  # our delivery_id, else the provider's idempotency key or event id
    row_id: str | None
    event_id: str | None
    detail: str

    def as_row(self) -> dict[str, Any]:
        return {"problem": self.problem, "ref": self.ref, "event_id": self.event_id, "detail": self.detail}


@dataclass
class Reconciliation:
    company_id: str
    provider: str
    period: Period
    ours: int = 0
    held: int = 0
    differences: list[Difference] = field(default_factory=list)
    error: str | None = None
    requeued: int = 0

    @property
    def failing(self) -> list[Difference]:
        return [x for x in self.differences if x.problem in FAILING]

    @property
    def ok(self) -> bool:
        return self.error is None and not self.failing


def _hash_of(payload: str | None, stored: str | None) -> str | None:
    """Our document's hash in the read-back's terms (sha256 of our serialisation); the stored hash otherwise."""
    if payload is None:
        return stored
    try:
        return hashlib.sha256(encode_json(json.loads(payload))).hexdigest()
    except ValueError:
        return stored


def _ours(engine: Engine, company_id: str, provider: str, period: Period) -> list[Any]:
    stmt = sa.select(
        d.c.id, d.c.delivery_id, d.c.event_id, d.c.payload, d.c.payload_hash, d.c.confirmation, d.c.delivered_at
    ).where(
        d.c.company_id == company_id,
        d.c.provider == provider,
        d.c.status == DeliveryStatus.SUCCESS.value,
        d.c.delivered_at >= period.since,
        d.c.delivered_at < period.until,
    )
    with read_connection(engine) as conn:
        return list(conn.execute(stmt).all())


def _log_rows(engine: Engine, provider: str, keys: Sequence[str], column: sa.Column[Any]) -> dict[str, Any]:
    """Our rows of this provider (any company, any status) by delivery_id or event_id."""
    found: dict[str, Any] = {}
    with read_connection(engine) as conn:
        for start in range(0, len(keys), _CHUNK):
            chunk = list(keys[start : start + _CHUNK])
            stmt = sa.select(d.c.id, d.c.company_id, d.c.delivery_id, d.c.event_id, d.c.status, d.c.delivered_at)
            for row in conn.execute(stmt.where(d.c.provider == provider, column.in_(chunk))).all():
                found[getattr(row, column.name)] = row
    return found


def compare(
    engine: Engine, company_id: str, provider: str, period: Period, held: Sequence[HeldRecord]
) -> Reconciliation:
    """The differences between our success rows delivered in `period` and `held` (read back over the period
    widened by the margin). Pure apart from reading our log."""
    result = Reconciliation(company_id, provider, period, held=len(held))
    ours = _ours(engine, company_id, provider, period)
    result.ours = len(ours)
    by_key = {h.idempotency_key: h for h in held if h.idempotency_key}
    by_event = {h.event_id: h for h in held if h.event_id}
    matched: set[int] = set()
    for row in ours:
        record = by_key.get(row.delivery_id) or by_event.get(row.event_id)
        if record is None:
            if row.confirmation == "deleted":
                result.differences.append(
                    Difference(DELETED, row.delivery_id, row.id, row.event_id, "the provider deleted it (webhook)")
                )
            else:
                when = row.delivered_at.isoformat(timespec="seconds") if row.delivered_at else "?"
                result.differences.append(
                    Difference(MISSING, row.delivery_id, row.id, row.event_id, f"delivered {when}, not held")
                )
            continue
        matched.add(id(record))
        ours_hash = _hash_of(row.payload, row.payload_hash)
        if record.payload_hash is not None and ours_hash is not None and record.payload_hash != ours_hash:
            detail = f"ours {ours_hash[:12]}, provider's {record.payload_hash[:12]}"
            result.differences.append(Difference(DIFFERS, row.delivery_id, row.id, row.event_id, detail))
    unmatched = [h for h in held if id(h) not in matched]
    known_keys = _log_rows(
        engine, provider, [h.idempotency_key for h in unmatched if h.idempotency_key], d.c.delivery_id
    )
    known_events = _log_rows(engine, provider, [h.event_id for h in unmatched if h.event_id], d.c.event_id)
    for record in unmatched:
        row = known_keys.get(record.idempotency_key or "") or known_events.get(record.event_id or "")
        ref = record.idempotency_key or record.event_id or record.reference or "?"
        if row is None:
            detail = f"held by the provider as {record.reference or '?'}; no row of ours has this key or event id"
            result.differences.append(Difference(EXTRA, ref, None, record.event_id, detail))
        elif row.company_id == company_id and row.status != DeliveryStatus.SUCCESS.value:
            detail = f"held by the provider, but our row is {row.status}"
            result.differences.append(Difference(EXTRA, row.delivery_id, row.id, row.event_id, detail))
        # else: another company's record (shared credentials) or one of ours delivered outside the period
    return result


def reconcile(
    engine: Engine,
    factory: ConnectorFactory,
    company_id: str,
    provider: str,
    period: Period,
    *,
    margin: timedelta = DEFAULT_MARGIN,
    repair: bool = False,
    now: datetime | None = None,
) -> Reconciliation:
    """Ask the provider, compare, store the result (and re-queue what it lacks when `repair`). Never raises for
    a provider or configuration problem: the result carries the error."""
    now = now or datetime.now(UTC)
    try:
        connector = factory.connector(company_id, Provider(provider))
        if not isinstance(connector, ReadsBack):
            raise ReadBackError(f"{provider}'s connector in this configuration cannot read back what it holds")
        held = connector.read_back(Period(period.since - margin, period.until + margin))
    except (ConfigError, ReadBackError) as exc:
        result = Reconciliation(company_id, provider, period, error=str(exc))
    else:
        result = compare(engine, company_id, provider, period, held)
        if repair:
            result.requeued = requeue_missing(engine, [x.row_id for x in result.differences if x.problem == MISSING])
    save(engine, result, now)
    return result


def requeue_missing(engine: Engine, row_ids: Sequence[str | None], *, now: datetime | None = None) -> int:
    """Success rows the provider lacks become pending again: same delivery id, same stored payload; the next
    delivery run sends them. A row someone holds or that changed meanwhile is left alone."""
    ids = [i for i in row_ids if i]
    if not ids:
        return 0
    now = now or datetime.now(UTC)
    stmt = (
        sa.update(d)
        .where(d.c.id.in_(ids), d.c.status == DeliveryStatus.SUCCESS.value, d.c.claimed_by.is_(None))
        .values(
            status=DeliveryStatus.PENDING.value,
            error_kind=None,
            next_attempt_at=None,
            last_error="re-queued by reconciliation: the provider does not hold it",
            confirmation=None,
            confirmed_at=None,
            updated_at=now,
        )
        .execution_options(preserve_rowcount=True)
    )
    with engine.begin() as conn:
        return conn.execute(stmt).rowcount


def save(engine: Engine, result: Reconciliation, now: datetime) -> None:
    """Replace the pair's previous result and differences."""
    pair = {"company_id": result.company_id, "provider": result.provider}
    with engine.begin() as conn:
        conn.execute(sa.delete(rc).where(rc.c.company_id == result.company_id, rc.c.provider == result.provider))
        conn.execute(sa.delete(rd).where(rd.c.company_id == result.company_id, rd.c.provider == result.provider))
        conn.execute(
            rc.insert().values(
                **pair,
                period_start=result.period.since,
                period_end=result.period.until,
                ours=result.ours,
                held=result.held,
                differences=len(result.failing),
                error=result.error,
                reconciled_at=now,
            )
        )
        unique = {(x.problem, x.ref): x for x in result.differences}
        if unique:
            conn.execute(
                rd.insert(),
                [{**pair, **x.as_row(), "row_id": x.row_id, "found_at": now} for x in unique.values()],
            )


def latest(engine: Engine, *, company_id: str | None = None, provider: str | None = None) -> list[dict[str, Any]]:
    """The stored results, one per pair, with their differences under `rows`."""
    runs = sa.select(rc).order_by(rc.c.company_id, rc.c.provider)
    diffs = sa.select(rd).order_by(rd.c.company_id, rd.c.provider, rd.c.problem, rd.c.ref)
    if company_id is not None:
        runs, diffs = runs.where(rc.c.company_id == company_id), diffs.where(rd.c.company_id == company_id)
    if provider is not None:
        runs, diffs = runs.where(rc.c.provider == provider), diffs.where(rd.c.provider == provider)
    with read_connection(engine) as conn:
        found = [{**dict(r._mapping), "rows": []} for r in conn.execute(runs).all()]
        index = {(r["company_id"], r["provider"]): r for r in found}
        for row in conn.execute(diffs).all():
            pair = index.get((row.company_id, row.provider))
            if pair is not None:
                pair["rows"].append(dict(row._mapping))
    return found
