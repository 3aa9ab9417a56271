"""The outbox state machine: create rows, claim them under a lease, record attempts, settle them.

Each claim of a row gets a new `claim_version`; (claimant, version) is the claim's fencing token. The holder
confirms it right before each request (`confirm`), unless its own clocks show that the claim is younger than half a
lease (`LeaseStart`), and every settlement checks it, so a claim that was taken over (or whose lease lapsed)
neither sends the row nor settles it. Attempts are always recorded, because a request that went out is a fact
whoever holds the claim now.
"""

import functools
import json
import math
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection, Engine

from impactin_pipelines.connectors.base import AttemptResult, OutboundDelivery
from impactin_pipelines.domain.statuses import DeliveryStatus, ErrorKind
from impactin_pipelines.store.claimants import is_provably_dead
from impactin_pipelines.store.engine import SERVER_PREPARED, read_connection
from impactin_pipelines.store.held_connections import HeldConnections
from impactin_pipelines.store.ids import new_row_id
from impactin_pipelines.store.schema import impact_deliveries as d
from impactin_pipelines.store.schema import impact_delivery_attempts as a

CLAIMABLE = (DeliveryStatus.PENDING.value, DeliveryStatus.RETRYING.value)
RESPONSE_EXCERPT_CHARS = 2000  # of a provider's answer, kept with each attempt
_IN_CHUNK = 2000  # company ids per IN (...) list


def utcnow() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True)
class NewDelivery:
    """An outbox row as extract creates it: pending with its payload, or failed as an invalid event."""

    company_id: str
    provider: str
    event_id: str
    delivery_id: str
    payload: str | None
    payload_hash: str | None
    status: DeliveryStatus = DeliveryStatus.PENDING
    error_kind: ErrorKind | None = None
    last_error: str | None = None
    priority: int = 0  # domain/events.Priority.rank: claims take the highest first


@dataclass(frozen=True)
class Settlement:
    """Where a row goes after an attempt (or without one, for config errors). `None` fields are cleared."""

    status: DeliveryStatus
    error_kind: ErrorKind | None = None
    last_error: str | None = None
    provider_response: str | None = None
    next_attempt_at: datetime | None = None
    release: bool = True  # give up the claim (the run is done with this row)


@dataclass(frozen=True)
class ClaimPosition:
    """Where a claim batch ended in claim order (highest priority first, then oldest). A run's next claim starts
    after it: rows it claimed leave entries in the claim index that stay (dead) until VACUUM, and a claim from the
    top would read past all of them, each time, so a night's claims would grow with the square of its rows."""

    priority: int
    created_at: datetime
    id: str


@dataclass(frozen=True)
class LeaseStart:
    """When a claim's lease began by this process's clocks, read before the claim computed its expiry: the lease
    lasts at least `lease_s` from here. Until half of it has passed, the claim holds as surely as `Outbox.confirm`
    would say (nobody takes over an unlapsed claim of a live claimant), so the holder sends without asking."""

    monotonic: float
    wall: float

    @classmethod
    def now(cls) -> "LeaseStart":
        return cls(time.monotonic(), time.time())

    def elapsed_s(self) -> float:
        """Seconds since, by whichever clock says more: the monotonic clock stops while the machine is suspended,
        the wall clock can be set; a wall clock set back makes the age unknown (infinite)."""
        wall = time.time() - self.wall
        return max(wall, time.monotonic() - self.monotonic) if wall >= 0 else math.inf

    def holds(self, lease_s: float) -> bool:
        """At least half of the lease is left."""
        return self.elapsed_s() < lease_s / 2


class ClaimBatch(list[OutboundDelivery]):
    """The rows a claim took, in id order, and where the batch ended in claim order (None: the claim did not fill
    its batch, or it cannot tell: the next claim starts from the top). `lease_start`: when their leases began, by
    this process's clocks (None when the caller gave the claim its own `now`)."""

    end: ClaimPosition | None = None
    lease_start: LeaseStart | None = None


def _insert(engine: Engine) -> Callable[[sa.Table], postgresql.Insert | sqlite.Insert]:
    return postgresql.insert if engine.dialect.name == "postgresql" else sqlite.insert


def _chunks(values: Sequence[str], size: int = _IN_CHUNK) -> Iterable[Sequence[str]]:
    for start in range(0, len(values), size):
        yield values[start : start + size]


# A batch of rows is copied (COPY, the server's bulk path; psycopg formats the rows in C) into a temporary table
# and moved into the outbox by one INSERT … SELECT, which skips rows that exist already. COPY carries any text
# exactly, so the stored payload is the mapped payload byte for byte. The row id is drawn by the server.
_CREATE_STAGED = """
CREATE TEMPORARY TABLE IF NOT EXISTS impactin_staged_deliveries (
    company_id TEXT, provider TEXT, event_id TEXT, delivery_id TEXT, payload TEXT, payload_hash TEXT, status TEXT,
    error_kind TEXT, last_error TEXT, priority INTEGER
) ON COMMIT DELETE ROWS
"""
_COPY_STAGED = "COPY impactin_staged_deliveries FROM STDIN"
_MOVE_STAGED = """
INSERT INTO impact_deliveries (id, company_id, provider, event_id, delivery_id, payload, payload_hash, status,
                               error_kind, last_error, priority, attempt_count, run_count, created_at, updated_at)
SELECT impactin_new_row_id(), company_id, provider, event_id, delivery_id, payload, payload_hash, status,
       error_kind, last_error, priority, 0, 0, %(now)s, %(now)s
FROM impactin_staged_deliveries
ON CONFLICT DO NOTHING
"""


def _new_row(row: NewDelivery) -> dict[str, Any]:
    """The columns of a new outbox row that come from the delivery itself (the counters and times are added by
    the statement that inserts it)."""
    return {
        "id": new_row_id(),
        "company_id": row.company_id,
        "provider": row.provider,
        "event_id": row.event_id,
        "delivery_id": row.delivery_id,
        "payload": row.payload,
        "payload_hash": row.payload_hash,
        "status": row.status.value,
        "error_kind": row.error_kind.value if row.error_kind else None,
        "last_error": row.last_error,
        "priority": row.priority,
    }


# The per-row statements of a delivery on PostgreSQL, written out so they are built once (not per row) and psycopg
# prepares them on a connection that runs them often. Each is one statement: atomic in autocommit.
# Confirm reads the claim, and writes only a lease that has run down to half its length (`push_before`): the run's
# heartbeat renews its leases every third of one, so a confirm nearly always finds plenty left and costs a read by
# primary key instead of a new version of the wide row in each of its indexes. The write re-checks the claim.
_CONFIRM_PG = """
WITH mine AS (
    SELECT id, lease_expires_at FROM impact_deliveries
    WHERE id = %(id)s AND claimed_by = %(claimant)s AND claim_version = %(claim_version)s
      AND lease_expires_at > %(now)s AND status <> 'success'
), pushed AS (
    UPDATE impact_deliveries AS d SET lease_expires_at = %(lease_expires_at)s
    FROM mine
    WHERE d.id = mine.id AND mine.lease_expires_at <= %(push_before)s
      AND d.claimed_by = %(claimant)s AND d.claim_version = %(claim_version)s
      AND d.lease_expires_at > %(now)s AND d.status <> 'success'
    RETURNING d.id
)
SELECT mine.lease_expires_at > %(push_before)s OR pushed.id IS NOT NULL AS confirmed
FROM mine LEFT JOIN pushed ON pushed.id = mine.id
"""
# Record a batch: for each recording (an object of one JSON array, written by the json module's C encoder, where an
# array parameter per column cost a dumper per column; the delivery ids come as an array too, since the planner
# guesses 100 rows for any JSON set and would scan the outbox for them), lock its row (in id order, so two batches
# never wait on each other in a cycle) and read whether we still hold the claim; bump the attempt count if an
# attempt is recorded; settle the row only if we hold the claim (a success the provider has meanwhile rejected by
# webhook settles failed/rejected, keeping the provider's reason); insert the attempt under the new count.
_RECORD_PG = """
WITH batch AS (
    SELECT * FROM json_to_recordset(%(batch)s::json) AS b(
        delivery_id text, claimant text, claim_version integer, now timestamptz, success boolean, status text,
        error_kind text, last_error text, next_attempt_at timestamptz, provider_response text, release boolean,
        attempted boolean, run_id text, started_at timestamptz, finished_at timestamptz, duration_ms integer,
        outcome text, http_status integer, error text, response_excerpt text, request_body text
    )
), old AS (
    SELECT d.id, b.*,
           (d.claimed_by = b.claimant AND d.claim_version = b.claim_version AND d.status <> 'success') AS owned,
           coalesce(d.confirmation = 'rejected', false) AS rejected
    FROM impact_deliveries AS d JOIN batch AS b ON b.delivery_id = d.delivery_id
    WHERE d.delivery_id = ANY(%(delivery_ids)s::text[])
    ORDER BY d.id
    FOR UPDATE OF d
), moved AS (
    UPDATE impact_deliveries AS d SET
        status = CASE WHEN NOT old.owned THEN d.status
                      WHEN old.success AND old.rejected THEN 'failed' ELSE old.status END,
        error_kind = CASE WHEN NOT old.owned THEN d.error_kind
                          WHEN old.success AND old.rejected THEN 'rejected' ELSE old.error_kind END,
        last_error = CASE WHEN NOT old.owned THEN d.last_error
                          WHEN old.success AND old.rejected THEN d.last_error ELSE old.last_error END,
        next_attempt_at = CASE WHEN old.owned THEN old.next_attempt_at ELSE d.next_attempt_at END,
        provider_response = CASE WHEN old.owned AND old.provider_response IS NOT NULL
                                 THEN old.provider_response ELSE d.provider_response END,
        delivered_at = CASE WHEN old.owned AND old.success THEN old.now ELSE d.delivered_at END,
        claimed_by = CASE WHEN old.owned AND old.release THEN NULL ELSE d.claimed_by END,
        lease_expires_at = CASE WHEN old.owned AND old.release THEN NULL ELSE d.lease_expires_at END,
        attempt_count = d.attempt_count + CASE WHEN old.attempted THEN 1 ELSE 0 END,
        updated_at = CASE WHEN old.owned OR old.attempted THEN old.now ELSE d.updated_at END
    FROM old WHERE d.id = old.id
    RETURNING d.delivery_id, d.attempt_count, old.owned
), recorded AS (
    INSERT INTO impact_delivery_attempts (delivery_id, attempt_number, run_id, started_at, finished_at, duration_ms,
                                          outcome, http_status, error, response_excerpt, request_body)
    SELECT moved.delivery_id, moved.attempt_count, old.run_id, old.started_at, old.finished_at, old.duration_ms,
           old.outcome, old.http_status, old.error, old.response_excerpt, old.request_body
    FROM moved JOIN old ON old.delivery_id = moved.delivery_id
    WHERE old.attempted
)
SELECT delivery_id, attempt_count, owned FROM moved
"""


STALE_ROWS = 1000  # changed rows beyond those the statistics know of that make them worth taking again
# The rows the planner's statistics know of (-1: never analyzed) and the rows changed since they were taken.
_STATISTICS_AGE = """
SELECT c.reltuples::bigint, coalesce(s.n_mod_since_analyze, 0)
FROM pg_class AS c LEFT JOIN pg_stat_user_tables AS s ON s.relid = c.oid
WHERE c.oid = CAST(:table AS regclass)
"""


class Outbox:
    """`held`: connections the calling threads keep (a delivery run's); the per-row statements (`confirm`,
    `record`) then use them, on PostgreSQL, instead of a pooled transaction each."""

    def __init__(self, engine: Engine, *, held: HeldConnections | None = None) -> None:
        self.engine = engine
        self.held = held if engine.dialect.name == "postgresql" else None

    @contextmanager
    def _row_statement(self) -> Iterator[Connection]:
        """Where a single statement of a run's thread runs (a claim, a confirm, a batch of recordings): this thread's
        held connection (autocommit), or a pooled transaction."""
        if self.held is not None:
            with self.held.connection() as conn:
                yield conn
        else:
            with self.engine.begin() as conn:
                yield conn

    # -- extract -------------------------------------------------------------------------------------------
    def add(self, rows: Sequence[NewDelivery], *, now: datetime | None = None) -> int:
        """Insert rows that do not exist yet (by event and by delivery id); return how many were new. Set-based:
        on PostgreSQL one COPY and one INSERT … SELECT, on SQLite one multi-row INSERT."""
        if not rows:
            return 0
        now = now or utcnow()
        if self.engine.dialect.name == "postgresql":
            return self._add_copy(rows, now)
        fresh = {"attempt_count": 0, "run_count": 0, "created_at": now, "updated_at": now}
        values = [{**_new_row(r), **fresh} for r in rows]
        stmt = _insert(self.engine)(d).on_conflict_do_nothing().returning(d.c.id)
        with self.engine.begin() as conn:
            return len(conn.execute(stmt, values).all())

    def _add_copy(self, rows: Sequence[NewDelivery], now: datetime) -> int:
        with self.engine.begin() as conn:
            conn.exec_driver_sql(_CREATE_STAGED)
            cursor = conn.connection.dbapi_connection.cursor()  # type: ignore[union-attr]  # psycopg's, for COPY
            try:
                with cursor.copy(_COPY_STAGED) as copy:
                    for r in rows:
                        copy.write_row(
                            (
                                r.company_id,
                                r.provider,
                                r.event_id,
                                r.delivery_id,
                                r.payload,
                                r.payload_hash,
                                r.status.value,
                                r.error_kind.value if r.error_kind else None,
                                r.last_error,
                                r.priority,
                            )
                        )
            finally:
                cursor.close()
            moved = conn.execution_options(preserve_rowcount=True).exec_driver_sql(_MOVE_STAGED, {"now": now})
            return moved.rowcount

    def refresh_statistics(self, *, changed: int = 0) -> bool:
        """ANALYZE the outbox (PostgreSQL) when the planner's picture of it is stale: as many rows changed since
        its last ANALYZE as it knows of, plus STALE_ROWS. `changed` is the caller's own count, for a server whose
        statistics count nothing. Extraction and claims are planned from these statistics, and autovacuum may be
        off, or a minute behind a table that grew from nothing. Returns whether it analyzed; another ANALYZE
        holding the table makes it skip (the statistics will be as fresh). SQLite's planner ranks indexes by their
        columns, not by statistics: a no-op there."""
        if self.engine.dialect.name != "postgresql":
            return False
        with self.engine.connect() as conn:
            conn = conn.execution_options(isolation_level="AUTOCOMMIT")
            known, counted = conn.execute(sa.text(_STATISTICS_AGE), {"table": d.name}).one()
            if max(changed, counted) < max(known, 0) + STALE_ROWS:
                return False
            conn.exec_driver_sql(f"ANALYZE (SKIP_LOCKED) {d.name}")
        return True

    # -- claims --------------------------------------------------------------------------------------------
    def dead_claimants(self, provider: str, company_ids: Sequence[str] | None) -> list[str]:
        """Claimants in scope whose process is provably gone (same host): their rows are free now."""
        stmt = sa.select(d.c.claimed_by).distinct().where(d.c.claimed_by.is_not(None), d.c.provider == provider)
        found: set[str] = set()
        with read_connection(self.engine) as conn:
            for chunk in _scope_chunks(company_ids):
                scoped = stmt if chunk is None else stmt.where(d.c.company_id.in_(chunk))
                found.update(conn.execute(scoped).scalars())
        return sorted(c for c in found if is_provably_dead(c))

    def claim(
        self,
        *,
        claimant: str,
        provider: str,
        company_ids: Sequence[str] | None,
        limit: int,
        lease_s: float,
        now: datetime | None = None,
        ids: Sequence[str] | None = None,
        statuses: Sequence[str] = CLAIMABLE,
        due_only: bool = True,
        dead: Sequence[str] = (),
        after: ClaimPosition | None = None,
    ) -> ClaimBatch:
        """Take up to `limit` due rows, urgent before normal and oldest first, that nobody (alive) holds. Each row
        goes to one claimant. `after`: the previous batch's end; rows before it in claim order are not looked at,
        except rows of a higher priority (an urgent row staged meanwhile) and held rows whose lease lapsed. A
        caller that claims after positions goes back to the top once a batch comes back short, so rows freed
        behind it meanwhile (released by another run) are claimed at the end of its pass."""
        lease_start = None if now else LeaseStart.now()
        now = now or utcnow()
        arrays = self.engine.dialect.name == "postgresql"
        chunks = [company_ids] if arrays else list(_scope_chunks(company_ids))
        if len(chunks) > 1:  # one position per statement: across chunks, every claim starts from the top
            after = None
        claimed = ClaimBatch()
        claimed.lease_start = lease_start
        for chunk in chunks:
            if len(claimed) >= limit:
                break
            rows = self._claim_chunk(
                claimant, provider, chunk, limit - len(claimed), lease_s, now, ids, statuses, due_only, dead, after
            )
            claimed.extend(_claimed(row) for row in rows)
            if len(chunks) == 1 and len(rows) == limit:
                last = max(rows, key=lambda r: (-r[-2], _aware(r[-1]), r[0]))
                claimed.end = ClaimPosition(last[-2], _aware(last[-1]), last[0])
        claimed.sort(key=lambda c: c.id)
        return claimed

    def _claim_chunk(
        self,
        claimant: str,
        provider: str,
        company_ids: Sequence[str] | None,
        limit: int,
        lease_s: float,
        now: datetime,
        ids: Sequence[str] | None,
        statuses: Sequence[str],
        due_only: bool,
        dead: Sequence[str],
        after: ClaimPosition | None,
    ) -> list[Sequence[Any]]:
        companies, targets = _how_many(company_ids), _how_many(ids)
        stmt = _claim_statement(
            tuple(statuses),
            due_only,
            companies,
            targets,
            bool(dead),
            after is not None,
            arrays=self.engine.dialect.name == "postgresql",
        )
        params: dict[str, Any] = {
            "claim_claimant": claimant,
            "claim_provider": provider,
            "claim_limit": limit,
            "claim_now": now,
            "claim_lease_expires_at": now + timedelta(seconds=lease_s),
            "claim_company_ids": _bound(company_ids),
            "claim_ids": _bound(ids),
            "claim_dead": list(dead),
        }
        if after is not None:
            params |= {
                "claim_after_priority": after.priority,
                "claim_after_created_at": after.created_at,
                "claim_after_id": after.id,
            }
        with self._row_statement() as conn:  # one statement, atomic by itself: a run's held connection if any
            return list(conn.execute(stmt, params).all())

    def confirm(
        self, claimant: str, row_id: str, claim_version: int, lease_s: float, *, now: datetime | None = None
    ) -> bool:
        """Just before a request: do we still hold this claim, unlapsed, with at least half a lease left? If less
        is left, push it to a whole lease, so it cannot lapse between this check and the request. One statement by
        primary key; on PostgreSQL it writes only when it pushes."""
        now = now or utcnow()
        lease_expires_at = now + timedelta(seconds=lease_s)
        if self.engine.dialect.name == "postgresql":
            params = {
                "id": row_id,
                "claimant": claimant,
                "claim_version": claim_version,
                "now": _utc(now),
                "lease_expires_at": _utc(lease_expires_at),
                "push_before": _utc(now + timedelta(seconds=lease_s / 2)),
            }
            with self._row_statement() as conn:
                # a push that found the row changed under it (taken over meanwhile) does not confirm
                return bool(conn.exec_driver_sql(_CONFIRM_PG, params).scalar())
        stmt = (
            sa.update(d)
            .where(
                d.c.id == row_id,
                d.c.claimed_by == claimant,
                d.c.claim_version == claim_version,
                d.c.lease_expires_at > now,
                d.c.status != DeliveryStatus.SUCCESS.value,
            )
            .values(lease_expires_at=lease_expires_at)
            .returning(d.c.id)
        )
        with self.engine.begin() as conn:
            return conn.execute(stmt).first() is not None

    def renew(self, claimant: str, lease_s: float, *, now: datetime | None = None) -> int:
        """Heartbeat: push the lease of every row this claimant still holds. Rows locked right now are skipped
        (the run's settlement writer holds them for a moment; the next beat renews them): the heartbeat never
        waits on a batch that waits on it."""
        now = now or utcnow()
        mine = sa.select(d.c.id).where(d.c.claimed_by == claimant).with_for_update(skip_locked=True)
        stmt = (
            sa.update(d)
            .where(d.c.id.in_(mine.scalar_subquery()), d.c.claimed_by == claimant)
            .values(lease_expires_at=now + timedelta(seconds=lease_s))
            .execution_options(preserve_rowcount=True)
        )
        with self.engine.begin() as conn:
            return conn.execute(stmt).rowcount

    def release_all(self, claimant: str) -> int:
        """Give back whatever this claimant still holds (rows it never got to), untouched otherwise."""
        stmt = (
            sa.update(d)
            .where(d.c.claimed_by == claimant)
            .values(claimed_by=None, lease_expires_at=None)
            .execution_options(preserve_rowcount=True)
        )
        with self.engine.begin() as conn:
            return conn.execute(stmt).rowcount

    def foreign_claims(self, claimant: str, provider: str, company_ids: Sequence[str] | None) -> dict[str, datetime]:
        """Other claimants holding due rows in scope, with the latest lease expiry of each."""
        stmt = (
            sa.select(d.c.claimed_by, sa.func.max(d.c.lease_expires_at))
            .where(
                d.c.provider == provider,
                d.c.claimed_by.is_not(None),
                d.c.claimed_by != claimant,
                d.c.status.in_(CLAIMABLE),
            )
            .group_by(d.c.claimed_by)
        )
        result: dict[str, datetime] = {}
        with read_connection(self.engine) as conn:
            for chunk in _scope_chunks(company_ids):
                scoped = stmt if chunk is None else stmt.where(d.c.company_id.in_(chunk))
                for who, expires in conn.execute(scoped).all():
                    expires = _aware(expires)
                    result[who] = max(result.get(who, expires), expires)
        return result

    # -- attempts and settlement ---------------------------------------------------------------------------
    def record(
        self,
        *,
        claimant: str,
        claim_version: int,
        delivery_id: str,
        run_id: str | None,
        attempt: AttemptResult | None,
        settlement: Settlement,
        now: datetime | None = None,
    ) -> tuple[int, bool]:
        """Write the attempt (if any: the exchange as the connector reported it) and, if we still hold this claim
        (claimant and version), move the row. One transaction. A lapsed lease nobody took over still settles: no one
        else can have sent the row meanwhile.

        Returns the row's attempt count (-1 when not applied) and whether the settlement was applied.
        """
        recording = Recording(claimant, claim_version, delivery_id, run_id, attempt, settlement, now or utcnow())
        [written] = self.record_many([recording])
        if isinstance(written, LookupError):
            raise written
        return written

    def record_many(self, recordings: Sequence["Recording"]) -> list[tuple[int, bool] | LookupError]:
        """`record` for many rows (at most one recording each) in one transaction: a delivery run's settlement
        writer. On PostgreSQL one statement (`_RECORD_PG`). Returns, in order, each row's (attempt count, applied),
        or a LookupError for an attempt whose row does not exist (the others are written). A database error raises,
        and nothing is written. On PostgreSQL rows are locked in id order, whatever the order given."""
        if not recordings:
            return []
        by_delivery = {r.delivery_id: i for i, r in enumerate(recordings)}
        if len(by_delivery) < len(recordings):
            raise ValueError("a batch of recordings holds one row twice; record its attempts one after the other")
        recordings = [_storable(recording) for recording in recordings]
        if self.engine.dialect.name != "postgresql":  # one writer at a time: no row locks to order
            with self.engine.begin() as conn:
                return [_record_sqlite(conn, recording) for recording in recordings]
        params = {
            "batch": json.dumps([_record_params(recording) for recording in recordings]),
            "delivery_ids": list(by_delivery),
        }
        found: list[tuple[int, bool] | None] = [None] * len(recordings)
        with self._row_statement() as conn:
            for delivery_id, attempt_count, owned in conn.exec_driver_sql(_RECORD_PG, params):
                found[by_delivery[delivery_id]] = (attempt_count if owned else -1), bool(owned)
        return [
            written if written is not None else _no_row(r) if r.attempt is not None else (-1, False)
            for r, written in zip(recordings, found, strict=True)
        ]


@dataclass(frozen=True)
class Recording:
    """One attempt (None: a settlement without a request) and the settlement it leads to, under a claim."""

    claimant: str
    claim_version: int
    delivery_id: str
    run_id: str | None
    attempt: AttemptResult | None
    settlement: Settlement
    now: datetime


def _storable(recording: Recording) -> Recording:
    """The recording with every NUL character in its texts (a provider's reply, an error quoting it) replaced by
    U+FFFD: PostgreSQL's text cannot hold one, and a batch that fails to write halts its run."""
    attempt, settlement = recording.attempt, recording.settlement
    texts = [settlement.last_error, settlement.provider_response]
    if attempt is not None:
        texts += [attempt.error, attempt.response_body, attempt.request_body]
    if not any(text and "\x00" in text for text in texts):
        return recording
    settlement = replace(
        settlement, last_error=_no_nul(settlement.last_error), provider_response=_no_nul(settlement.provider_response)
    )
    if attempt is not None:
        attempt = replace(
            attempt,
            error=_no_nul(attempt.error),
            response_body=_no_nul(attempt.response_body),
            request_body=_no_nul(attempt.request_body),
        )
    return replace(recording, attempt=attempt, settlement=settlement)


def _no_nul(text: str | None) -> str | None:
    return text.replace("\x00", "\ufffd") if text else text


def _no_row(recording: Recording) -> LookupError:
    return LookupError(f"no outbox row with delivery_id {recording.delivery_id!r} to record an attempt for")


def _record_params(recording: Recording) -> dict[str, object]:
    """One recording's values in `_RECORD_PG` (an object of its JSON array; times in ISO 8601 with their zone): the
    same effects as the three statements SQLite runs in one transaction."""
    attempt, settlement = recording.attempt, recording.settlement
    return {
        "claimant": recording.claimant,
        "claim_version": recording.claim_version,
        "delivery_id": recording.delivery_id,
        "now": _iso(recording.now),
        "success": settlement.status is DeliveryStatus.SUCCESS,
        "status": settlement.status.value,
        "error_kind": settlement.error_kind.value if settlement.error_kind else None,
        "last_error": settlement.last_error,
        "next_attempt_at": _iso(settlement.next_attempt_at),
        "provider_response": settlement.provider_response,
        "release": settlement.release,
        "attempted": attempt is not None,
        "run_id": recording.run_id,
        "started_at": _iso(attempt.started_at) if attempt else None,
        "finished_at": _iso(attempt.finished_at) if attempt else None,
        "duration_ms": _duration_ms(attempt) if attempt else None,
        "outcome": attempt.outcome.value if attempt else None,
        "http_status": attempt.http_status if attempt else None,
        "error": attempt.error if attempt else None,
        "response_excerpt": ((attempt.response_body or "")[:RESPONSE_EXCERPT_CHARS] or None) if attempt else None,
        "request_body": attempt.request_body if attempt else None,
    }


def _record_sqlite(conn: Connection, recording: Recording) -> tuple[int, bool] | LookupError:
    """`record` on SQLite: bump the attempt count and insert the attempt (if any), then settle under the claim."""
    attempt, settlement, now = recording.attempt, recording.settlement, recording.now
    if attempt is not None:
        bumped = conn.execute(
            sa.update(d)
            .where(d.c.delivery_id == recording.delivery_id)
            .values(attempt_count=d.c.attempt_count + 1, updated_at=now)
            .returning(d.c.attempt_count)
        ).scalar()
        if bumped is None:
            return _no_row(recording)
        conn.execute(
            a.insert().values(
                delivery_id=recording.delivery_id,
                attempt_number=bumped,
                run_id=recording.run_id,
                started_at=attempt.started_at,
                finished_at=attempt.finished_at,
                duration_ms=_duration_ms(attempt),
                outcome=attempt.outcome.value,
                http_status=attempt.http_status,
                error=attempt.error,
                response_excerpt=(attempt.response_body or "")[:RESPONSE_EXCERPT_CHARS] or None,
                request_body=attempt.request_body,
            )
        )
    values: dict[str, object] = {
        "status": settlement.status.value,
        "error_kind": settlement.error_kind.value if settlement.error_kind else None,
        "last_error": settlement.last_error,
        "next_attempt_at": settlement.next_attempt_at,
        "updated_at": now,
    }
    if settlement.provider_response is not None:
        values["provider_response"] = settlement.provider_response
    if settlement.status is DeliveryStatus.SUCCESS:
        values["delivered_at"] = now
        values.update(_unless_rejected_meanwhile())
    if settlement.release:
        values.update(claimed_by=None, lease_expires_at=None)
    moved = conn.execute(
        sa.update(d)
        .where(
            d.c.delivery_id == recording.delivery_id,
            d.c.claimed_by == recording.claimant,
            d.c.claim_version == recording.claim_version,
            d.c.status != DeliveryStatus.SUCCESS.value,
        )
        .values(**values)
        .returning(d.c.attempt_count)
    ).first()
    return (moved.attempt_count if moved else -1), moved is not None


def _claimed(row: Sequence[Any]) -> OutboundDelivery:
    """A claimed row (the claim's RETURNING columns, in order) as the send path takes it. Unpacked by position: a
    claim converts a batch of rows, and each named access on a Row is a lookup of its own."""
    row_id, company_id, provider, event_id, delivery_id, payload, status, attempt_count, run_count, version = row[:10]
    return OutboundDelivery(
        delivery_id=delivery_id,
        company_id=company_id,
        provider=provider,
        event_id=event_id,
        payload=payload or "",
        id=row_id,
        status=DeliveryStatus(status),
        attempt_count=attempt_count,
        run_count=run_count,
        claim_version=version,
    )


def _unless_rejected_meanwhile() -> dict[str, sa.ColumnElement[Any]]:
    """A success settlement of a row the provider has meanwhile rejected by webhook (its callback raced our
    bookkeeping: store/confirmations) settles it failed/rejected instead, keeping the provider's reason."""
    rejected = d.c.confirmation == "rejected"
    return {
        "status": sa.case((rejected, DeliveryStatus.FAILED.value), else_=DeliveryStatus.SUCCESS.value),
        "error_kind": sa.case((rejected, ErrorKind.REJECTED.value), else_=sa.null()),
        "last_error": sa.case((rejected, d.c.last_error), else_=sa.null()),
    }


HowMany = Literal["none", "one", "many"]  # values in a claim's list (none: the claim has no such list)


@functools.cache
def _claim_statement(
    statuses: tuple[str, ...],
    due_only: bool,
    companies: HowMany,
    targets: HowMany,
    dead: bool,
    after: bool,
    *,
    arrays: bool,
) -> sa.Update:
    """The claim's statement for one shape of claim, built once: its values are bound at each execution
    (`Outbox._claim_chunk`), so a claim costs no statement building, only the database's work. With `arrays`
    (PostgreSQL) each list of values is one array parameter (`= ANY(...)`), so the statement's text is the same
    whatever the lists hold and the driver parses it once, where a list written out as `IN (...)` cost a parse per
    claim that grew with the run's companies (and split a list of thousands into several claims). A list of one
    value is an equality: the planner reads a company's rows in claim order from the claim index only when it sees
    one company. The statement is planned for its values at every execution (`SERVER_PREPARED`): a plan made for
    any values guesses the array's size, and then reads and sorts every row of the run's companies."""

    def one_of(column: sa.ColumnElement[str], name: str, how_many: HowMany = "many") -> sa.ColumnElement[bool]:
        if how_many == "one":
            return column == sa.bindparam(name)
        if arrays:
            return column == sa.any_(sa.bindparam(name, type_=postgresql.ARRAY(sa.Text)))
        return column.in_(sa.bindparam(name, expanding=True))

    now = sa.bindparam("claim_now", type_=d.c.updated_at.type)
    # Free rows are unclaimed ones (the claim indexes hold only those, so rows in flight cost a claim nothing)
    # and held ones whose claim lapsed or whose claimant is dead (few, found through the lease index).
    lapsed: sa.ColumnElement[bool] = d.c.lease_expires_at < now
    if dead:
        lapsed = sa.or_(lapsed, one_of(d.c.claimed_by, "claim_dead"))
    free = sa.or_(d.c.claimed_by.is_(None), lapsed)
    conditions = [d.c.provider == sa.bindparam("claim_provider"), status_in(statuses)]
    if due_only:
        conditions.append(sa.or_(d.c.next_attempt_at.is_(None), d.c.next_attempt_at <= now))
    if companies != "none":
        conditions.append(one_of(d.c.company_id, "claim_company_ids", companies))
    if targets != "none":
        conditions.append(one_of(d.c.id, "claim_ids", targets))
    order = (d.c.priority.desc(), d.c.created_at, d.c.id)
    limit = sa.bindparam("claim_limit", type_=sa.Integer)

    def branch(*where: sa.ColumnElement[bool]) -> sa.Subquery:
        return (
            sa.select(d.c.id, d.c.priority, d.c.created_at)
            .where(*conditions, *where)
            .order_by(*order)
            .limit(limit)
            .with_for_update(skip_locked=True)
            .subquery()
        )

    # Unclaimed rows: from the top, or after the position (three ranges of the claim index: a higher priority, the
    # rest of the position's priority, the lower ones).
    ranges: list[tuple[sa.ColumnElement[bool], ...]] = [()]
    if after:
        priority = sa.bindparam("claim_after_priority", type_=d.c.priority.type)
        position = sa.tuple_(
            sa.bindparam("claim_after_created_at", type_=d.c.created_at.type),
            sa.bindparam("claim_after_id", type_=d.c.id.type),
        )
        ranges = [
            (d.c.priority > priority,),
            (d.c.priority == priority, sa.tuple_(d.c.created_at, d.c.id) > position),
            (d.c.priority < priority,),
        ]
    unclaimed = [branch(d.c.claimed_by.is_(None), *extra) for extra in ranges]
    taken_back = branch(d.c.claimed_by.is_not(None), lapsed)
    either = sa.union_all(*(sa.select(b) for b in [*unclaimed, taken_back])).subquery()
    candidates = (
        sa.select(either.c.id).order_by(either.c.priority.desc(), either.c.created_at, either.c.id).limit(limit)
    )
    failed = d.c.status == DeliveryStatus.FAILED.value
    return (
        sa.update(d)
        .execution_options(**{SERVER_PREPARED: False})
        .where(d.c.id.in_(candidates.scalar_subquery()), free)
        .values(
            claimed_by=sa.bindparam("claim_claimant"),
            lease_expires_at=sa.bindparam("claim_lease_expires_at", type_=d.c.lease_expires_at.type),
            run_count=d.c.run_count + 1,
            claim_version=d.c.claim_version + 1,
            updated_at=now,
            # a failed row claimed again is being replayed: the provider's earlier verdict was about the old send
            confirmation=sa.case((failed, None), else_=d.c.confirmation),
            confirmed_at=sa.case((failed, None), else_=d.c.confirmed_at),
        )
        .returning(
            d.c.id,
            d.c.company_id,
            d.c.provider,
            d.c.event_id,
            d.c.delivery_id,
            d.c.payload,
            d.c.status,
            d.c.attempt_count,
            d.c.run_count,
            d.c.claim_version,
            d.c.priority,
            d.c.created_at,
        )
    )


def status_in(statuses: Sequence[str]) -> sa.ColumnElement[bool]:
    """`status IN (...)` with the statuses written as literals: the claim indexes cover only claimable rows, and
    a planner can use such a partial index only when it sees the statuses themselves, not placeholders."""
    return d.c.status.in_(sa.bindparam(None, list(statuses), expanding=True, literal_execute=True))


def _how_many(values: Sequence[str] | None) -> HowMany:
    if values is None:
        return "none"
    return "one" if len(values) == 1 else "many"


def _bound(values: Sequence[str] | None) -> str | list[str]:
    """A claim's list as its parameter: its one value (compared by equality), or all of them."""
    if values is not None and len(values) == 1:
        return values[0]
    return list(values or ())


def _scope_chunks(company_ids: Sequence[str] | None) -> Iterable[Sequence[str] | None]:
    if company_ids is None:
        yield None
        return
    yield from _chunks(list(company_ids))


def _duration_ms(attempt: AttemptResult) -> int:
    return max(0, round((attempt.finished_at - attempt.started_at).total_seconds() * 1000))


def _iso(moment: datetime | None) -> str | None:
    """`_utc`, written out for a JSON parameter."""
    utc = _utc(moment)
    return utc.isoformat() if utc is not None else None


def _utc(moment: datetime | None) -> datetime | None:
    """A time for a written-out statement, checked as the schema's UTCDateTime checks what it binds."""
    if moment is None:
        return None
    if moment.tzinfo is None:
        raise ValueError(f"naive datetime {moment!r} would be stored without its zone")
    return moment.astimezone(UTC)


def _aware(moment: datetime) -> datetime:
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment
