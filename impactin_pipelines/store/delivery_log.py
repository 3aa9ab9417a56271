"""Reads of the delivery log for people: list, show, attempts and run summaries (CLI and API share these)."""

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from impactin_pipelines.store.engine import read_connection
from impactin_pipelines.store.schema import impact_deliveries as d
from impactin_pipelines.store.schema import impact_delivery_attempts as a

SUMMARY_COLUMNS = (
    d.c.id,
    d.c.company_id,
    d.c.provider,
    d.c.event_id,
    d.c.delivery_id,
    d.c.status,
    d.c.error_kind,
    d.c.attempt_count,
    d.c.last_error,
    d.c.next_attempt_at,
    d.c.delivered_at,
    d.c.created_at,
    d.c.updated_at,
)


@dataclass(frozen=True)
class DeliveryFilter:
    company_ids: Sequence[str] | None = None  # None: every company (admin scope)
    providers: Sequence[str] | None = None
    statuses: Sequence[str] | None = None
    since: datetime | None = None  # created_at >= since
    until: datetime | None = None  # created_at < until

    def where(self) -> list[Any]:
        clauses: list[Any] = []
        if self.company_ids is not None:
            clauses.append(d.c.company_id.in_(list(self.company_ids)))
        if self.providers:
            clauses.append(d.c.provider.in_(list(self.providers)))
        if self.statuses:
            clauses.append(d.c.status.in_(list(self.statuses)))
        if self.since is not None:
            clauses.append(d.c.created_at >= self.since)
        if self.until is not None:
            clauses.append(d.c.created_at < self.until)
        return clauses


@dataclass(frozen=True)
class Page:
    rows: list[dict[str, Any]]
    total: int
    page: int
    limit: int

    @property
    def total_pages(self) -> int:
        return (self.total + self.limit - 1) // self.limit if self.total else 0


def list_deliveries(engine: Engine, flt: DeliveryFilter, *, page: int = 1, limit: int = 20) -> Page:
    """Newest first; `page` is 1-based."""
    if page < 1:
        raise ValueError(f"page={page!r} must be at least 1")
    if not 1 <= limit <= 1000:
        raise ValueError(f"limit={limit!r} must be between 1 and 1000")
    where = flt.where()
    with read_connection(engine) as conn:
        total = conn.execute(sa.select(sa.func.count()).select_from(d).where(*where)).scalar_one()
        rows = conn.execute(
            sa.select(*SUMMARY_COLUMNS)
            .where(*where)
            .order_by(d.c.created_at.desc(), d.c.id.desc())
            .limit(limit)
            .offset((page - 1) * limit)
        ).all()
    return Page([dict(r._mapping) for r in rows], total, page, limit)


def get_delivery(engine: Engine, ident: str, *, company_ids: Sequence[str] | None = None) -> dict[str, Any] | None:
    """A row by its `id` or its `delivery_id` (both are UUIDs; operators paste either), within scope."""
    conditions: list[Any] = [sa.or_(d.c.id == ident, d.c.delivery_id == ident)]
    if company_ids is not None:
        conditions.append(d.c.company_id.in_(list(company_ids)))
    with read_connection(engine) as conn:
        row = conn.execute(sa.select(d).where(*conditions)).first()
    return dict(row._mapping) if row else None


def attempts_for(engine: Engine, delivery_id: str) -> list[dict[str, Any]]:
    with read_connection(engine) as conn:
        rows = conn.execute(sa.select(a).where(a.c.delivery_id == delivery_id).order_by(a.c.attempt_number)).all()
    return [dict(r._mapping) for r in rows]


def status_counts(
    engine: Engine, *, company_ids: Sequence[str] | None = None, providers: Sequence[str] | None = None
) -> dict[tuple[str, str], dict[str, int]]:
    """(company, provider) -> {status: count} for the given scope."""
    flt = DeliveryFilter(company_ids=company_ids, providers=providers)
    stmt = (
        sa.select(d.c.company_id, d.c.provider, d.c.status, sa.func.count())
        .where(*flt.where())
        .group_by(d.c.company_id, d.c.provider, d.c.status)
    )
    counts: dict[tuple[str, str], dict[str, int]] = {}
    with read_connection(engine) as conn:
        for company, provider, status, n in conn.execute(stmt).all():
            counts.setdefault((company, provider), {})[status] = n
    return counts


def attempts_in_runs(engine: Engine, run_ids: Sequence[str]) -> dict[tuple[str, str], dict[str, int]]:
    """(company, provider) -> {outcome: attempts} made by the given Dagster runs."""
    if not run_ids:
        return {}
    stmt = (
        sa.select(d.c.company_id, d.c.provider, a.c.outcome, sa.func.count())
        .select_from(a.join(d, d.c.delivery_id == a.c.delivery_id))
        .where(a.c.run_id.in_(list(run_ids)))
        .group_by(d.c.company_id, d.c.provider, a.c.outcome)
    )
    counts: dict[tuple[str, str], dict[str, int]] = {}
    with read_connection(engine) as conn:
        for company, provider, outcome, n in conn.execute(stmt).all():
            counts.setdefault((company, provider), {})[outcome] = n
    return counts


def config_failures_since(
    engine: Engine, since: datetime, *, company_ids: Sequence[str] | None = None, providers: Sequence[str] | None = None
) -> dict[tuple[str, str], int]:
    """(company, provider) -> rows settled failed/config at or after `since` (a run's start): credentials or
    settings are missing, so nothing was sent."""
    flt = DeliveryFilter(company_ids=company_ids, providers=providers, statuses=["failed"])
    stmt = (
        sa.select(d.c.company_id, d.c.provider, sa.func.count())
        .where(*flt.where(), d.c.error_kind == "config", d.c.updated_at >= since)
        .group_by(d.c.company_id, d.c.provider)
    )
    with read_connection(engine) as conn:
        return {(company, provider): n for company, provider, n in conn.execute(stmt).all()}
