"""Health of the delivery ledger: what the asset checks evaluate. Each function answers one question and names
the rows at fault (a sample, with the total), so the check's metadata says exactly where to look.

A company or window with nothing settled is healthy, never a breach: no deliveries is not a failure rate.
"""

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from impactin_pipelines.connectors.circuit import Circuit, CircuitState, describe
from impactin_pipelines.domain.providers import PROVIDERS
from impactin_pipelines.domain.statuses import DeliveryStatus
from impactin_pipelines.settings import CheckSettings
from impactin_pipelines.store.engine import read_connection
from impactin_pipelines.store.schema import company_integrations as ci
from impactin_pipelines.store.schema import impact_deliveries as d
from impactin_pipelines.store.schema import impact_delivery_callbacks as cb
from impactin_pipelines.store.schema import impact_events as e

SAMPLE_ROWS = 50
ERROR, WARN = "ERROR", "WARN"


@dataclass(frozen=True)
class Finding:
    passed: bool
    description: str
    severity: str = ERROR
    metrics: Mapping[str, float | int] = field(default_factory=dict)
    rows: list[dict[str, Any]] = field(default_factory=list)  # a sample of the rows at fault


ROW_COLUMNS = (d.c.id, d.c.delivery_id, d.c.company_id, d.c.provider, d.c.event_id, d.c.status)


def _rows(conn: sa.Connection, stmt: sa.Select, **extra: Any) -> list[dict[str, Any]]:
    return [{**dict(r._mapping), **extra} for r in conn.execute(stmt.limit(SAMPLE_ROWS)).all()]


def _count(conn: sa.Connection, where: list[Any]) -> int:
    return conn.execute(sa.select(sa.func.count()).select_from(d).where(*where)).scalar_one()


def stuck_rows(engine: Engine, settings: CheckSettings, now: datetime) -> Finding:
    """Pending rows no run has taken for `stuck_pending_hours`, and claims that have not moved for
    `stuck_claim_minutes` (a hung run: its heartbeat renews the lease but nothing is sent or settled)."""
    pending_before = now - timedelta(hours=settings.stuck_pending_hours)
    claim_before = now - timedelta(minutes=settings.stuck_claim_minutes)
    pending = [d.c.status == DeliveryStatus.PENDING.value, d.c.claimed_by.is_(None), d.c.created_at < pending_before]
    claimed = [d.c.claimed_by.is_not(None), d.c.updated_at < claim_before]
    with read_connection(engine) as conn:
        n_pending, n_claimed = _count(conn, pending), _count(conn, claimed)
        rows = _rows(
            conn,
            sa.select(*ROW_COLUMNS, d.c.created_at, d.c.updated_at).where(*pending).order_by(d.c.created_at),
            stuck="pending",
        )
        rows += _rows(
            conn,
            sa.select(*ROW_COLUMNS, d.c.created_at, d.c.updated_at, d.c.claimed_by)
            .where(*claimed)
            .order_by(d.c.updated_at),
            stuck="claimed",
        )
    metrics = {"stuck_pending": n_pending, "stuck_claimed": n_claimed}
    if not n_pending and not n_claimed:
        return Finding(True, "no stuck rows", metrics=metrics)
    return Finding(
        False,
        f"{n_pending} row(s) pending for over {settings.stuck_pending_hours:g} h, "
        f"{n_claimed} claim(s) unmoved for over {settings.stuck_claim_minutes:g} min",
        metrics=metrics,
        rows=rows[:SAMPLE_ROWS],
    )


def failure_rate(engine: Engine, settings: CheckSettings, now: datetime) -> Finding:
    """failed / (success + failed) among rows settled in the window: WARN and ERROR thresholds."""
    since = now - timedelta(hours=settings.failure_window_hours)
    settled = [d.c.status.in_((DeliveryStatus.SUCCESS.value, DeliveryStatus.FAILED.value)), d.c.updated_at >= since]
    stmt = sa.select(d.c.provider, d.c.status, sa.func.count()).where(*settled).group_by(d.c.provider, d.c.status)
    with read_connection(engine) as conn:
        counts = conn.execute(stmt).all()
        failed_rows = _rows(
            conn,
            sa.select(*ROW_COLUMNS, d.c.error_kind, sa.func.substr(d.c.last_error, 1, 200).label("last_error"))
            .where(*settled, d.c.status == DeliveryStatus.FAILED.value)
            .order_by(d.c.updated_at.desc()),
        )
    by_provider: dict[str, dict[str, int]] = {}
    for provider, status, n in counts:
        by_provider.setdefault(provider, {"success": 0, "failed": 0})[status] = n
    failed = sum(c["failed"] for c in by_provider.values())
    total = failed + sum(c["success"] for c in by_provider.values())
    metrics: dict[str, float | int] = {"settled": total, "failed": failed}
    for provider, c in sorted(by_provider.items()):
        metrics[f"{provider}_failure_rate"] = round(c["failed"] / (c["failed"] + c["success"]), 4)
    window = f"in the last {settings.failure_window_hours:g} h"
    if not total:
        return Finding(True, f"no deliveries settled {window}", metrics=metrics)
    rate = round(failed / total, 4)
    metrics["failure_rate"] = rate
    summary = f"{failed} of {total} deliveries settled {window} failed ({rate:.1%})"
    if rate >= settings.failure_rate_error:
        return Finding(False, f"{summary}: at or over {settings.failure_rate_error:.0%}", ERROR, metrics, failed_rows)
    if rate >= settings.failure_rate_warn:
        return Finding(False, f"{summary}: at or over {settings.failure_rate_warn:.0%}", WARN, metrics, failed_rows)
    return Finding(True, summary, metrics=metrics, rows=failed_rows)


def ledger_balance(engine: Engine, settings: CheckSettings, now: datetime) -> Finding:
    """Every eligible event (of an enabled integration, older than the grace period) has exactly one row per
    enabled provider, and no event has two successful rows for one provider.

    An enabled integration naming a provider we do not know gets no rows by design, so its events are not missing
    rows: each such integration is reported once, as a WARN, until it is fixed or disabled."""
    eligible_before = now - timedelta(hours=settings.ledger_grace_hours)
    has_row = sa.exists().where(
        d.c.company_id == e.c.company_id, d.c.provider == ci.c.provider, d.c.event_id == e.c.event_id
    )
    known = ci.c.provider.in_(PROVIDERS)
    missing = (
        sa.select(e.c.company_id, ci.c.provider, e.c.event_id, e.c.created_at)
        .join(ci, sa.and_(ci.c.company_id == e.c.company_id, ci.c.enabled.is_(True), known))
        .where(e.c.created_at < eligible_before, ~has_row)
    )
    per_event = (d.c.company_id, d.c.provider, d.c.event_id)
    duplicated = sa.select(*per_event, sa.func.count().label("rows")).group_by(*per_event).having(sa.func.count() > 1)
    twice_ok = duplicated.where(d.c.status == DeliveryStatus.SUCCESS.value)
    unknown = (
        sa.select(ci.c.company_id, ci.c.provider)
        .where(ci.c.enabled.is_(True), ~known)
        .order_by(ci.c.company_id, ci.c.provider)
    )
    with read_connection(engine) as conn:
        counts = {
            name: conn.execute(sa.select(sa.func.count()).select_from(stmt.subquery())).scalar_one()
            for name, stmt in (
                ("missing_rows", missing),
                ("duplicate_rows", duplicated),
                ("double_success", twice_ok),
                ("unknown_provider_integrations", unknown),
            )
        }
        rows = _rows(conn, missing.order_by(e.c.created_at, e.c.event_id), problem="no delivery row")
        rows += _rows(conn, duplicated.order_by(*per_event), problem="more than one row")
        rows += _rows(conn, twice_ok.order_by(*per_event), problem="two successful rows")
        ignored = _rows(conn, unknown, problem=f"unknown provider (not one of {', '.join(PROVIDERS)}); no rows")
    n_unknown = counts["unknown_provider_integrations"]
    names = [f"{r['company_id']}/{r['provider']}" for r in ignored[:10]] + (["..."] if n_unknown > 10 else [])
    also = f"; {n_unknown} enabled integration(s) with an unknown provider: {', '.join(names)}"
    if not any(counts[k] for k in ("missing_rows", "duplicate_rows", "double_success")):
        description = "every eligible event has exactly one row per enabled provider"
        if ignored:
            return Finding(False, description + also, WARN, metrics=counts, rows=ignored)
        return Finding(True, description, metrics=counts)
    parts = [f"{counts['missing_rows']} event x provider without a row"]
    parts += [f"{counts['duplicate_rows']} with more than one row", f"{counts['double_success']} delivered twice"]
    description = "ledger does not balance: " + ", ".join(parts) + (also if ignored else "")
    return Finding(False, description, metrics=counts, rows=(ignored + rows)[:SAMPLE_ROWS])


def retrying_past_cap(engine: Engine, max_run_attempts: int, now: datetime) -> Finding:
    """`retrying` rows that already had their `max_run_attempts` runs and nobody holds (a run turns such a row
    `failed/exhausted`; one still retrying means the cap was lowered, or a run died settling it)."""
    free = sa.or_(d.c.claimed_by.is_(None), d.c.lease_expires_at < now)
    where = [d.c.status == DeliveryStatus.RETRYING.value, d.c.run_count >= max_run_attempts, free]
    with read_connection(engine) as conn:
        n = _count(conn, where)
        rows = _rows(conn, sa.select(*ROW_COLUMNS, d.c.run_count, d.c.next_attempt_at).where(*where).order_by(d.c.id))
    metrics = {"retrying_past_cap": n, "max_run_attempts": max_run_attempts}
    if not n:
        return Finding(True, f"no retrying row has had {max_run_attempts} runs", metrics=metrics)
    return Finding(False, f"{n} retrying row(s) already had {max_run_attempts} runs", WARN, metrics, rows)


def circuit_finding(circuits: Sequence[Circuit], now: datetime) -> Finding:
    """Fails while a circuit breaker is open or half-open (ERROR: a provider is failing, its rows wait) or an
    operator's pause holds a provider (WARN: deliberate, but nothing goes out until it is resumed)."""
    not_closed = [x for x in circuits if x.state is not CircuitState.CLOSED]
    by_state = Counter(x.state.value for x in circuits)
    metrics = {f"circuits_{state.value}": by_state[state.value] for state in CircuitState}
    rows = [
        {
            "provider": x.provider,
            "scope": x.scope,
            "state": x.state.value,
            "company": x.company_id,
            "detail": describe(x, now),
        }
        for x in not_closed
    ]
    if not not_closed:
        return Finding(True, "every circuit breaker is closed", metrics=metrics)
    tripped = [x for x in not_closed if x.state is not CircuitState.PAUSED]
    names = ", ".join(sorted({f"{x.provider} ({x.state.value})" for x in not_closed}))
    return Finding(False, f"not sending: {names}", ERROR if tripped else WARN, metrics, rows[:SAMPLE_ROWS])


def confirmation_ledger(engine: Engine, now: datetime) -> Finding:
    """The providers' verdicts agree with the log: no row is `success` while its provider rejected it (ERROR: a
    rejection should have turned it failed/rejected), and every callback matched a delivery of ours (WARN: an
    unmatched one is kept in impact_delivery_callbacks, to be looked at). Confirmed, deleted and unconfirmed
    success rows are counted."""
    success = d.c.status == DeliveryStatus.SUCCESS.value
    contradicted = [success, d.c.confirmation == "rejected"]
    with read_connection(engine) as conn:
        counts = {
            "success_but_rejected": _count(conn, contradicted),
            "confirmed": _count(conn, [success, d.c.confirmation == "confirmed"]),
            "deleted_at_provider": _count(conn, [d.c.confirmation == "deleted"]),
            "unconfirmed_success": _count(conn, [success, d.c.confirmation.is_(None)]),
            "unmatched_callbacks": conn.execute(
                sa.select(sa.func.count()).select_from(cb).where(cb.c.delivery_id.is_(None))
            ).scalar_one(),
        }
        rows = _rows(
            conn,
            sa.select(*ROW_COLUMNS, d.c.confirmed_at).where(*contradicted).order_by(d.c.id),
            problem="success, but the provider rejected it",
        )
        unmatched = [
            {**dict(r._mapping), "problem": "callback for no delivery of ours"}
            for r in conn.execute(
                sa.select(
                    cb.c.id,
                    cb.c.provider,
                    cb.c.callback_id,
                    cb.c.kind,
                    cb.c.idempotency_key,
                    cb.c.event_id,
                    cb.c.received_at,
                )
                .where(cb.c.delivery_id.is_(None))
                .order_by(cb.c.received_at.desc())
                .limit(SAMPLE_ROWS)
            ).all()
        ]
    if counts["success_but_rejected"]:
        description = f"{counts['success_but_rejected']} row(s) are success although their provider rejected them"
        return Finding(False, description, ERROR, counts, (rows + unmatched)[:SAMPLE_ROWS])
    if counts["unmatched_callbacks"]:
        description = f"{counts['unmatched_callbacks']} provider callback(s) matched no delivery of ours"
        return Finding(False, description, WARN, counts, unmatched)
    return Finding(True, "the providers' confirmations agree with the delivery log", metrics=counts)
