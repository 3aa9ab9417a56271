"""What replay needs beyond the outbox: the source event behind a quarantined row, failed rows page by page,
and handing a quarantined row the payload rebuilt from its (now valid) event."""

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from impactin_pipelines.domain.statuses import DeliveryStatus, ErrorKind
from impactin_pipelines.store.engine import read_connection
from impactin_pipelines.store.outbox import utcnow
from impactin_pipelines.store.schema import impact_deliveries as d
from impactin_pipelines.store.schema import impact_events as e


def source_event(engine: Engine, company_id: str, event_id: str) -> Mapping[str, Any] | None:
    with read_connection(engine) as conn:
        row = conn.execute(sa.select(e).where(e.c.company_id == company_id, e.c.event_id == event_id)).first()
    return dict(row._mapping) if row else None


def failed_page(
    engine: Engine,
    company_id: str,
    provider: str | None,
    *,
    after: tuple[datetime, str] | None,
    limit: int,
) -> list[dict[str, Any]]:
    """Failed rows of a company, oldest first, after the keyset `(created_at, id)`: a row that fails again
    stays behind the cursor, so paging always ends."""
    conditions: list[Any] = [d.c.company_id == company_id, d.c.status == DeliveryStatus.FAILED.value]
    if provider is not None:
        conditions.append(d.c.provider == provider)
    if after is not None:
        created, ident = after
        conditions.append(sa.or_(d.c.created_at > created, sa.and_(d.c.created_at == created, d.c.id > ident)))
    stmt = sa.select(d).where(*conditions).order_by(d.c.created_at, d.c.id).limit(limit)
    with read_connection(engine) as conn:
        return [dict(r._mapping) for r in conn.execute(stmt).all()]


def rows_by_id(engine: Engine, ids: Sequence[str]) -> dict[str, dict[str, Any]]:
    if not ids:
        return {}
    with read_connection(engine) as conn:
        found = conn.execute(sa.select(d).where(d.c.id.in_(list(ids)))).all()
    return {r.id: dict(r._mapping) for r in found}


def requeue_with_payload(engine: Engine, row_id: str, payload: str, payload_hash: str | None) -> bool:
    """A quarantined row (failed/invalid_event, no payload, nobody holding it) gets its payload and becomes
    pending. False if the row changed meanwhile (someone else requeued or holds it)."""
    now = utcnow()
    stmt = (
        sa.update(d)
        .where(
            d.c.id == row_id,
            d.c.payload.is_(None),
            d.c.status == DeliveryStatus.FAILED.value,
            d.c.error_kind == ErrorKind.INVALID_EVENT.value,
            sa.or_(d.c.claimed_by.is_(None), d.c.lease_expires_at < now),
        )
        .values(
            payload=payload,
            payload_hash=payload_hash,
            status=DeliveryStatus.PENDING.value,
            error_kind=None,
            last_error=None,
            next_attempt_at=None,
            updated_at=now,
        )
        .returning(d.c.id)
    )
    with engine.begin() as conn:
        return conn.execute(stmt).first() is not None
