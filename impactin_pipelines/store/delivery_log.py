"""Reads of the delivery log for people: list (filters, page or keyset cursor), show, attempts and run summaries
(CLI and API share these). The indexes that keep each filter fast are in sql/0009_delivery_filters.sql."""

import base64
import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.engine import Engine

from impactin_pipelines.store.engine import read_connection
from impactin_pipelines.store.schema import UTCDateTime
from impactin_pipelines.store.schema import impact_deliveries as d
from impactin_pipelines.store.schema import impact_delivery_attempts as a
from impactin_pipelines.store.schema import impact_events as e

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
    d.c.confirmation,
    d.c.confirmed_at,
)


MAX_SEARCH_CHARS = 200
MIN_SEARCH_CHARS = 3  # the shortest text a trigram index can serve
METADATA_KEY = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
MAX_METADATA_VALUE_CHARS = 200


def _like_pattern(text: str) -> str:
    """`%text%` with LIKE's own wildcards (and the escape character) taken literally."""
    return "%" + text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"


def _typed(value: str) -> Any:
    """A JSON number or boolean spelled in `value` (metadata.count=3 matches 3 and "3"); else the text."""
    if value in ("true", "false"):
        return value == "true"
    try:
        number = json.loads(value)
    except ValueError:
        return value
    is_number = isinstance(number, int | float) and not isinstance(number, bool) and math.isfinite(number)
    return number if is_number else value  # NaN and Infinity are no JSON values: matched as text


def _metadata_matches(dialect: str, key: str, value: str) -> Any:
    """The event's metadata has `key` (top level) equal to `value`: as text, or as the number or boolean `value`
    spells. PostgreSQL: containment on the stored, GIN-indexed `metadata_doc` (0012: no function call per row);
    SQLite: json_extract, malformed JSON is no match."""
    candidates = [value] + ([typed] if (typed := _typed(value)) != value else [])
    if dialect == "postgresql":
        doc = e.c.metadata_doc
        return sa.or_(*(doc.op("@>")(sa.literal({key: c}, JSONB)) for c in candidates))
    path = f'$."{key}"'
    kinds = {str: ("text",), bool: ("true", "false"), int: ("integer",), float: ("integer", "real")}
    tests = []
    for c in candidates:
        kind_ok = sa.func.json_type(e.c.metadata, path).in_(kinds[type(c)])
        equal = sa.func.json_extract(e.c.metadata, path) == (int(c) if isinstance(c, bool) else c)
        tests.append(sa.and_(kind_ok, equal))
    return sa.case((sa.func.json_valid(e.c.metadata) == 1, sa.or_(*tests)), else_=sa.false())


@dataclass(frozen=True)
class DeliveryFilter:
    company_ids: Sequence[str] | None = None  # None: every company (admin scope)
    providers: Sequence[str] | None = None
    statuses: Sequence[str] | None = None
    since: datetime | None = None  # created_at >= since
    until: datetime | None = None  # created_at < until
    error_kinds: Sequence[str] | None = None
    event_ids: Sequence[str] | None = None  # the stored event ids (a company key's are scoped: the caller maps)
    user_id: str | None = None  # the event's user
    search: str | None = None  # case-insensitive text inside last_error
    metadata: Mapping[str, str] = field(default_factory=dict)  # event metadata key -> value, all must match

    def __post_init__(self) -> None:
        if self.search is not None and not MIN_SEARCH_CHARS <= len(self.search) <= MAX_SEARCH_CHARS:
            raise ValueError(f"search={self.search!r} must be {MIN_SEARCH_CHARS} to {MAX_SEARCH_CHARS} characters")
        for key, value in self.metadata.items():
            if not METADATA_KEY.match(key):
                raise ValueError(f"metadata key {key!r} must be 1 to 64 letters, digits, '_' or '-'")
            if not 1 <= len(value) <= MAX_METADATA_VALUE_CHARS:
                raise ValueError(f"metadata.{key}={value!r} must be 1 to {MAX_METADATA_VALUE_CHARS} characters")

    def where(self, dialect: str = "sqlite") -> list[Any]:
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
        if self.error_kinds:
            clauses.append(d.c.error_kind.in_(list(self.error_kinds)))
        if self.event_ids:
            clauses.append(d.c.event_id.in_(list(self.event_ids)))
        if self.search is not None:
            clauses.append(d.c.last_error.ilike(_like_pattern(self.search), escape="\\"))
        if self.user_id is not None or self.metadata:
            events: list[Any] = [e.c.user_id == self.user_id] if self.user_id is not None else []
            events += [_metadata_matches(dialect, k, v) for k, v in sorted(self.metadata.items())]
            clauses.append(d.c.event_id.in_(sa.select(e.c.event_id).where(*events)))
        return clauses


# -- keyset pagination -----------------------------------------------------------------------------------------------
_CURSOR_VERSION = "1"


def encode_cursor(created_at: datetime, ident: str) -> str:
    """Opaque to callers: the position (created_at, id) of the last row of a page, newest-first order."""
    raw = json.dumps([_CURSOR_VERSION, created_at.astimezone(UTC).isoformat(), ident], separators=(",", ":"))
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, str]:
    """The position a cursor names; ValueError when it is not one `encode_cursor` made."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        version, created, ident = json.loads(raw)
        position = datetime.fromisoformat(created)
        if version != _CURSOR_VERSION or position.tzinfo is None or not isinstance(ident, str) or len(ident) > 64:
            raise ValueError
    except (ValueError, TypeError, UnicodeDecodeError):
        raise ValueError("is not a cursor this service issued (take nextCursor from a previous page)") from None
    return position, ident


@dataclass(frozen=True)
class Page:
    rows: list[dict[str, Any]]
    total: int | None  # None for a cursor page (counting every match would cost what the cursor saves)
    page: int | None  # None for a cursor page
    limit: int
    next_cursor: str | None = None  # where the next page starts; None on the last page
    after_cursor: bool = False  # this page was asked for with a cursor naming a position

    @property
    def total_pages(self) -> int:
        total = self.total or 0
        return (total + self.limit - 1) // self.limit if total else 0


def list_deliveries(
    engine: Engine, flt: DeliveryFilter, *, page: int = 1, limit: int = 20, cursor: str | None = None
) -> Page:
    """Newest first. By `page` (1-based, with the total) or, when `cursor` is given, the page after that
    position ('' for the first page): a cursor page seeks through the (..., created_at, id) indexes and costs the
    same at any depth; an offset page reads and skips every row before it."""
    if page < 1:
        raise ValueError(f"page={page!r} must be at least 1")
    if not 1 <= limit <= 1000:
        raise ValueError(f"limit={limit!r} must be between 1 and 1000")
    where = flt.where(engine.dialect.name)
    order = (d.c.created_at.desc(), d.c.id.desc())
    with read_connection(engine) as conn:
        if cursor is not None:
            seek = list(where)
            if cursor:
                created, ident = decode_cursor(cursor)
                position = sa.tuple_(sa.literal(created, UTCDateTime), sa.literal(ident, sa.Text))
                seek.append(sa.tuple_(d.c.created_at, d.c.id) < position)
            found = conn.execute(sa.select(*SUMMARY_COLUMNS).where(*seek).order_by(*order).limit(limit + 1)).all()
            rows = [dict(r._mapping) for r in found[:limit]]
            more = len(found) > limit
            return Page(rows, None, None, limit, _cursor_after(rows) if more else None, bool(cursor))
        total = conn.execute(sa.select(sa.func.count()).select_from(d).where(*where)).scalar_one()
        rows = [
            dict(r._mapping)
            for r in conn.execute(
                sa.select(*SUMMARY_COLUMNS).where(*where).order_by(*order).limit(limit).offset((page - 1) * limit)
            ).all()
        ]
    more = page * limit < total
    return Page(rows, total, page, limit, _cursor_after(rows) if more else None)


def _cursor_after(rows: list[dict[str, Any]]) -> str | None:
    return encode_cursor(rows[-1]["created_at"], rows[-1]["id"]) if rows else None


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
        .where(*flt.where(engine.dialect.name))
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
