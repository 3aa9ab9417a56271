"""Progress of a delivery or a replay in flight, per provider, read from the warehouse (one grouped query), so a
CLI can show it while the work runs in another thread or process and the work itself pays nothing for it."""

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from impactin_pipelines.domain.statuses import DeliveryStatus
from impactin_pipelines.store.engine import read_connection
from impactin_pipelines.store.schema import impact_deliveries as d


@dataclass(frozen=True)
class ProviderProgress:
    done: int  # rows settled since the start (delivered, failed or parked as retrying)
    delivered: int  # of which delivered
    remaining: int  # rows still due (pending, or retrying and due)

    @property
    def total(self) -> int:
        return self.done + self.remaining


def _scope(company_ids: Sequence[str] | None, providers: Sequence[str] | None) -> list[sa.ColumnElement[bool]]:
    clauses: list[sa.ColumnElement[bool]] = []
    if company_ids is not None:
        clauses.append(d.c.company_id.in_(list(company_ids)))
    if providers:
        clauses.append(d.c.provider.in_(list(providers)))
    return clauses


def delivery_progress(
    engine: Engine,
    since: datetime,
    now: datetime,
    *,
    company_ids: Sequence[str] | None = None,
    providers: Sequence[str] | None = None,
) -> dict[str, ProviderProgress]:
    """provider -> progress of the deliveries started at `since`: rows settled since then, and rows still due."""
    pending, retrying = DeliveryStatus.PENDING.value, DeliveryStatus.RETRYING.value
    due = sa.or_(
        d.c.status == pending,
        sa.and_(d.c.status == retrying, sa.or_(d.c.next_attempt_at.is_(None), d.c.next_attempt_at <= now)),
    )
    settled = sa.and_(d.c.updated_at >= since, d.c.status != pending, sa.not_(due))
    stmt = (
        sa.select(
            d.c.provider,
            sa.func.sum(sa.case((settled, 1), else_=0)),
            sa.func.sum(sa.case((sa.and_(settled, d.c.status == DeliveryStatus.SUCCESS.value), 1), else_=0)),
            sa.func.sum(sa.case((due, 1), else_=0)),
        )
        .where(*_scope(company_ids, providers), sa.or_(due, d.c.updated_at >= since))
        .group_by(d.c.provider)
    )
    with read_connection(engine) as conn:
        return {
            provider: ProviderProgress(int(done or 0), int(ok or 0), int(left or 0))
            for provider, done, ok, left in conn.execute(stmt).all()
        }


def replay_progress(
    engine: Engine, since: datetime, failed_at_start: dict[str, int], *, company_id: str, provider: str | None
) -> dict[str, ProviderProgress]:
    """provider -> progress of a replay of every failed row of a company that started at `since`, given how many
    were failed then: rows replayed since (whatever came of them) out of those."""
    stmt = (
        sa.select(
            d.c.provider,
            sa.func.count(),
            sa.func.sum(sa.case((d.c.status == DeliveryStatus.SUCCESS.value, 1), else_=0)),
        )
        .where(*_scope([company_id], [provider] if provider else None), d.c.updated_at >= since)
        .group_by(d.c.provider)
    )
    with read_connection(engine) as conn:
        touched = {p: (int(n), int(ok or 0)) for p, n, ok in conn.execute(stmt).all()}
    found = {}
    for name, total in failed_at_start.items():
        done, ok = touched.get(name, (0, 0))
        done = min(done, total)
        found[name] = ProviderProgress(done, min(ok, done), total - done)
    return found


def failed_counts(engine: Engine, *, company_id: str, provider: str | None) -> dict[str, int]:
    """provider -> failed rows of the company (the work of `replay --all-failed`)."""
    stmt = (
        sa.select(d.c.provider, sa.func.count())
        .where(*_scope([company_id], [provider] if provider else None), d.c.status == DeliveryStatus.FAILED.value)
        .group_by(d.c.provider)
    )
    with read_connection(engine) as conn:
        return {p: int(n) for p, n in conn.execute(stmt).all()}
