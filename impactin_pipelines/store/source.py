"""Reads of the source contract: the TEEI platform's events and the companies' integrations."""

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from impactin_pipelines.domain.providers import PROVIDERS
from impactin_pipelines.store.engine import read_connection
from impactin_pipelines.store.outbox import CLAIMABLE, status_in
from impactin_pipelines.store.schema import company_integrations as ci
from impactin_pipelines.store.schema import impact_deliveries as d
from impactin_pipelines.store.schema import impact_events as e

_IN_CHUNK = 2000  # company ids per IN (...) list


@dataclass(frozen=True)
class Integration:
    company_id: str
    provider: str
    enabled: bool
    settings: Any  # raw: dict (PostgreSQL) or JSON text (SQLite), parsed by connectors.config


def integrations(engine: Engine, *, enabled_only: bool = True) -> list[Integration]:
    stmt = sa.select(ci.c.company_id, ci.c.provider, ci.c.enabled, ci.c.settings).order_by(
        ci.c.company_id, ci.c.provider
    )
    if enabled_only:
        stmt = stmt.where(ci.c.enabled.is_(True))
    with read_connection(engine) as conn:
        return [Integration(*row) for row in conn.execute(stmt).all()]


def integration(engine: Engine, company_id: str, provider: str) -> Integration | None:
    stmt = sa.select(ci.c.company_id, ci.c.provider, ci.c.enabled, ci.c.settings).where(
        ci.c.company_id == company_id, ci.c.provider == provider
    )
    with read_connection(engine) as conn:
        row = conn.execute(stmt).first()
    return Integration(*row) if row else None


def integration_settings(engine: Engine, provider: str, company_ids: Sequence[str]) -> dict[str, Any]:
    """The stored settings of each of `company_ids` that has an integration for `provider` (enabled or not, as
    `integration` reads them), in one query per few thousand companies; companies without one are left out."""
    found: dict[str, Any] = {}
    with read_connection(engine) as conn:
        for start in range(0, len(company_ids), _IN_CHUNK):
            stmt = sa.select(ci.c.company_id, ci.c.settings).where(
                ci.c.provider == provider, ci.c.company_id.in_(list(company_ids[start : start + _IN_CHUNK]))
            )
            found.update((company_id, settings) for company_id, settings in conn.execute(stmt).all())
    return found


def undelivered_events(
    engine: Engine, company_id: str, provider: str, *, batch_size: int = 1000
) -> Iterator[list[Mapping[str, Any]]]:
    """Events of the company that have no outbox row for this provider yet, in batches, keyset-paginated
    (each batch is a fresh short transaction, so extraction never holds a lock for long). Events written after a
    page that came back short are left for the next extraction."""
    # The outbox grows while extraction reads, so its statistics are stale by design: planned as a join, a page
    # could hash or sort every row the company already has (a page of a 1M-row staging took seconds). An OFFSET
    # keeps PostgreSQL from turning the probe into a join, so each event is one look-up in the unique index.
    no_row = ~(
        sa.select(sa.literal(1))
        .where(d.c.company_id == e.c.company_id, d.c.provider == provider, d.c.event_id == e.c.event_id)
        .offset(0)
        .exists()
    )
    columns = [c for c in e.c if c.name != "created_at"]  # everything the gate reads, nothing it does not
    after = ""
    while True:
        stmt = (
            sa.select(*columns)
            .where(e.c.company_id == company_id, e.c.event_id > _bindable(after), no_row)
            .order_by(e.c.event_id)
            .limit(batch_size)
        )
        with read_connection(engine) as conn:
            rows: list[Mapping[str, Any]] = [dict(row._mapping) for row in conn.execute(stmt).all()]
        if rows:
            yield rows
        if len(rows) < batch_size:  # a short page is the last: most companies' nights are one page, one query
            return
        after = rows[-1]["event_id"]


def _bindable(key: str) -> Any:
    """A key read back from SQLite may hold bytes that are not UTF-8 as surrogate escapes (store.engine). Bound as
    those same bytes, pagination carries on past it (as text, it could not be bound at all)."""
    try:
        key.encode("utf-8")
    except UnicodeEncodeError:
        return sa.cast(sa.literal(key.encode("utf-8", "surrogateescape"), sa.LargeBinary), sa.Text)
    return key


def companies_with_new_events(engine: Engine, provider: str, company_ids: Sequence[str]) -> set[str]:
    """Of `company_ids`, those with an enabled integration for `provider` and events that have no outbox row for it
    yet: one probe per integration, stopping at its first hit, so a range with nothing new costs one query per
    few thousand companies instead of queries per company."""
    no_row = ~sa.exists().where(
        d.c.company_id == e.c.company_id, d.c.provider == provider, d.c.event_id == e.c.event_id
    )
    found: set[str] = set()
    with read_connection(engine) as conn:
        for start in range(0, len(company_ids), _IN_CHUNK):
            stmt = sa.select(ci.c.company_id).where(
                ci.c.provider == provider,
                ci.c.enabled.is_(True),
                ci.c.company_id.in_(list(company_ids[start : start + _IN_CHUNK])),
                sa.exists().where(e.c.company_id == ci.c.company_id, no_row),
            )
            found.update(conn.execute(stmt).scalars())
    return found


def work_by_provider(engine: Engine, now: datetime) -> dict[str, set[str]]:
    """Which (provider -> companies) have something to do: events of an enabled integration without an
    outbox row, or rows that are due (pending, or retrying with next_attempt_at passed). Integrations naming a
    provider we do not know are left out: a run for them could only fail (no such partition)."""
    # One probe per integration, each stopping at its first hit: the cost follows the integrations, not the rows.
    no_row = ~sa.exists().where(
        d.c.company_id == e.c.company_id, d.c.provider == ci.c.provider, d.c.event_id == e.c.event_id
    )
    new_events = sa.select(ci.c.provider, ci.c.company_id).where(
        ci.c.enabled.is_(True),
        ci.c.provider.in_(PROVIDERS),
        sa.exists().where(e.c.company_id == ci.c.company_id, no_row),
    )
    due_rows = sa.select(ci.c.provider, ci.c.company_id).where(
        ci.c.enabled.is_(True),
        sa.exists().where(
            d.c.company_id == ci.c.company_id,
            d.c.provider == ci.c.provider,
            status_in(CLAIMABLE),
            sa.or_(d.c.next_attempt_at.is_(None), d.c.next_attempt_at <= now),
        ),
    )
    work: dict[str, set[str]] = {}
    with read_connection(engine) as conn:
        for stmt in (new_events, due_rows):
            for provider, company in conn.execute(stmt).all():
                work.setdefault(provider, set()).add(company)
    return work
