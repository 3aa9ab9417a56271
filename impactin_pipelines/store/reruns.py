"""What the rerun sensor reads from the warehouse: `retrying` rows whose time has come, per partition."""

from dataclasses import dataclass
from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from impactin_pipelines.domain.statuses import DeliveryStatus
from impactin_pipelines.store.engine import read_connection
from impactin_pipelines.store.schema import company_integrations as ci
from impactin_pipelines.store.schema import impact_deliveries as d


@dataclass(frozen=True)
class DueRetries:
    """Due `retrying` rows of one (company, provider). `run_total` moves whenever a run claims any of them,
    so it identifies this state of the rows: the sensor's run_key for them."""

    provider: str
    company_id: str
    rows: int
    run_total: int
    max_run_count: int


def due_retrying(engine: Engine, now: datetime, *, max_run_count: int | None = None) -> list[DueRetries]:
    """Per partition; rows that already had more than `max_run_count` runs are left out (the asset check on
    rows retrying past the cap names them) so a run that keeps dying before it settles them cannot loop."""
    stmt = (
        sa.select(
            d.c.provider,
            d.c.company_id,
            sa.func.count(),
            sa.func.coalesce(sa.func.sum(d.c.run_count), 0),
            sa.func.coalesce(sa.func.max(d.c.run_count), 0),
        )
        .join(ci, sa.and_(ci.c.company_id == d.c.company_id, ci.c.provider == d.c.provider))
        .where(
            ci.c.enabled.is_(True),
            d.c.status == DeliveryStatus.RETRYING.value,
            d.c.next_attempt_at <= now,
            *([d.c.run_count <= max_run_count] if max_run_count is not None else []),
        )
        .group_by(d.c.provider, d.c.company_id)
        .order_by(d.c.provider, d.c.company_id)
    )
    with read_connection(engine) as conn:
        return [DueRetries(p, c, int(n), int(total), int(top)) for p, c, n, total, top in conn.execute(stmt).all()]
