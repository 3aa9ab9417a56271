"""The circuit breakers' shared state (`impactin_circuits`, 0008) and a delivery run's cached view of it.

Every change is a locked read-modify-write (SQLite: BEGIN IMMEDIATE; PostgreSQL: SELECT ... FOR UPDATE), so two
processes never both take the probe or lose each other's failure counts. The send path reads the table at most once
per `IMPACTIN_CIRCUIT_REFRESH_S` per run and writes only when a transient failure is counted or a state changes:
a run whose sends succeed pays nothing per row.
"""

import hashlib
import logging
import math
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Engine

from impactin_pipelines.connectors.base import AttemptResult, OutboundDelivery
from impactin_pipelines.connectors.circuit import (
    ALL_COMPANIES,
    Admission,
    Circuit,
    CircuitState,
    company_scope,
    credential_scope,
    verdict,
)
from impactin_pipelines.settings import DeliverySettings
from impactin_pipelines.store.engine import is_sqlite, read_connection
from impactin_pipelines.store.outbox import utcnow
from impactin_pipelines.store.schema import impactin_circuits as c

LOG = logging.getLogger("impactin.circuit")
_ERROR_CHARS = 500


def _circuit(row: Any) -> Circuit:
    return Circuit(
        provider=row.provider,
        scope=row.scope,
        state=CircuitState(row.state),
        failures=row.failures,
        trips=row.trips,
        open_until=row.open_until,
        probe_until=row.probe_until,
        company_id=row.company_id,
        last_error=row.last_error,
        updated_at=row.updated_at,
    )


def _values(circuit: Circuit) -> dict[str, Any]:
    return {
        "provider": circuit.provider,
        "scope": circuit.scope,
        "state": circuit.state.value,
        "failures": circuit.failures,
        "trips": circuit.trips,
        "open_until": circuit.open_until,
        "probe_until": circuit.probe_until,
        "company_id": circuit.company_id,
        "last_error": (circuit.last_error or "")[:_ERROR_CHARS] or None,
        "updated_at": circuit.updated_at or utcnow(),
    }


class CircuitStore:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def load(self, provider: str | None = None) -> list[Circuit]:
        stmt = sa.select(c).order_by(c.c.provider, c.c.scope)
        if provider is not None:
            stmt = stmt.where(c.c.provider == provider)
        with read_connection(self.engine) as conn:
            return [_circuit(row) for row in conn.execute(stmt)]

    def change(self, provider: str, scope: str, how: Callable[[Circuit], Circuit]) -> tuple[Circuit, bool]:
        """Apply `how` to the stored state under a lock; (the state now, whether `how` changed it)."""
        where = sa.and_(c.c.provider == provider, c.c.scope == scope)
        with self.engine.begin() as conn:
            # a row to lock first: two senders must not both find none and both insert
            insert = sqlite.insert if is_sqlite(self.engine) else postgresql.insert
            conn.execute(insert(c).values(**_values(Circuit(provider, scope))).on_conflict_do_nothing())
            stmt = sa.select(c).where(where)
            if not is_sqlite(self.engine):  # SQLite's BEGIN IMMEDIATE already holds the write lock
                stmt = stmt.with_for_update()
            current = _circuit(conn.execute(stmt).one())
            new = how(current)
            if new == current:
                return current, False
            conn.execute(sa.update(c).where(where).values(**_values(new)))
            return new, True

    def pause(self, provider: str, company_id: str | None, *, reason: str | None = None) -> Circuit:
        """An operator's maintenance window: nothing is sent for the provider (or one company) until resumed."""
        scope = company_scope(company_id) if company_id else ALL_COMPANIES
        now = utcnow()
        paused = Circuit(provider, scope, CircuitState.PAUSED, company_id=company_id, last_error=reason, updated_at=now)
        return self.change(provider, scope, lambda _: paused)[0]

    def resume(self, provider: str, company_id: str | None) -> bool:
        """End an operator's pause; False when there was none."""
        scope = company_scope(company_id) if company_id else ALL_COMPANIES
        with self.engine.begin() as conn:
            stmt = sa.delete(c).where(c.c.provider == provider, c.c.scope == scope, c.c.state == "paused")
            return conn.execute(stmt.execution_options(preserve_rowcount=True)).rowcount > 0

    def reset(self, provider: str, scope: str) -> bool:
        """Close a breaker by hand (forget its failures); False when it was not stored."""
        with self.engine.begin() as conn:
            stmt = sa.delete(c).where(c.c.provider == provider, c.c.scope == scope, c.c.state != "paused")
            return conn.execute(stmt.execution_options(preserve_rowcount=True)).rowcount > 0


def credential_of(connector: object, company_id: str) -> str:
    """The credential a connector sends with, as the key its rate limiter uses: the OAuth client's key where there
    is one; otherwise the company (whose settings hold the credential), hashed."""
    oauth = getattr(connector, "oauth", None)
    key = getattr(oauth, "credential_key", None)
    if isinstance(key, str) and key:
        return key
    return hashlib.sha256(f"company\0{company_id}".encode()).hexdigest()


@dataclass(frozen=True)
class Ticket:
    """Leave to send one request: which breaker it answers to, and whether it is the probe."""

    scope: str
    probe: bool = False


@dataclass(frozen=True)
class Hold:
    """No leave: the reason, for the row's result."""

    reason: str


class CircuitGate:
    """A delivery run's view of its provider's breakers: `admit` before each request, `report` after it."""

    def __init__(
        self,
        engine: Engine,
        provider: str,
        settings: DeliverySettings,
        *,
        logger: logging.Logger = LOG,
        clock: Callable[[], datetime] = utcnow,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.store = CircuitStore(engine)
        self.provider = provider
        self.settings = settings.circuit
        self.probe_s = settings.connect_timeout_s + settings.read_timeout_s + 5.0
        self.log = logger
        self.clock = clock
        self.monotonic = monotonic
        self._lock = threading.Lock()
        self._view: dict[str, Circuit] = {}
        self._read_at = -math.inf
        self._scopes: dict[str, str] = {}

    def _circuits(self) -> dict[str, Circuit]:
        with self._lock:
            if self.monotonic() - self._read_at >= self.settings.refresh_s:
                self._view = {found.scope: found for found in self.store.load(self.provider)}
                self._read_at = self.monotonic()
            return self._view

    def _remember(self, circuit: Circuit) -> None:
        with self._lock:
            self._view[circuit.scope] = circuit

    def admit(self, row: OutboundDelivery, connector: object) -> Ticket | Hold:
        view = self._circuits()
        for pause_scope in (ALL_COMPANIES, company_scope(row.company_id)):
            paused = view.get(pause_scope)
            if paused is not None and paused.state is CircuitState.PAUSED:
                whom = self.provider if pause_scope == ALL_COMPANIES else f"{self.provider} for {row.company_id}"
                return Hold(f"held: {whom} is paused by an operator (impactin providers resume)")
        scope = self._scopes.get(row.company_id)
        if scope is None:  # a company's credential does not change within a run
            scope = self._scopes[row.company_id] = credential_scope(
                self.provider, credential_of(connector, row.company_id)
            )
        circuit = view.get(scope, Circuit(self.provider, scope))
        now = self.clock()
        match circuit.admit(now):
            case Admission.SEND:
                return Ticket(scope)
            case Admission.HOLD:
                return Hold(self._held(circuit))
        taken, took = self.store.change(
            self.provider,
            scope,
            lambda cur: cur.probing(now, self.probe_s) if cur.admit(now) is Admission.PROBE else cur,
        )
        self._remember(taken)
        if not took:
            return Hold(self._held(taken)) if taken.admit(now) is not Admission.SEND else Ticket(scope)
        self.log.warning(f"circuit {self.provider} {scope}: cool-down over, sending one probe request")
        return Ticket(scope, probe=True)

    def _held(self, circuit: Circuit) -> str:
        if circuit.state is CircuitState.HALF_OPEN:
            return f"held: the circuit for {self.provider} is half-open (another sender is probing)"
        until = f" until {circuit.open_until:%Y-%m-%d %H:%M:%S}Z" if circuit.open_until else ""
        return f"held: the circuit for {self.provider} is open{until} after {circuit.failures} transient failure(s)"

    def release(self, ticket: Ticket) -> None:
        """The leave went unused (the row was deferred for its quota, nothing sent): a probe's turn is given back
        at once instead of holding the breaker half-open until the probe times out. Advisory, like `report`."""
        if not ticket.probe:
            return
        now = self.clock()
        try:
            self._remember(self.store.change(self.provider, ticket.scope, lambda cur: cur.probe_undecided(now))[0])
        except Exception as exc:
            self.log.warning(f"circuit {self.provider} {ticket.scope}: probe not released: {type(exc).__name__}")

    def report(self, ticket: Ticket, row: OutboundDelivery, result: AttemptResult) -> None:
        """Count a transient failure, close after a success; write only when that changes something. Advisory: a
        warehouse error here is logged, never raised (the attempt itself is already recorded)."""
        try:
            self._report(ticket, row, result)
        except Exception as exc:
            self.log.warning(f"circuit {self.provider} {ticket.scope}: state not updated: {type(exc).__name__}")

    def _report(self, ticket: Ticket, row: OutboundDelivery, result: AttemptResult) -> None:
        up = verdict(result.outcome)
        now = self.clock()
        if up is None and ticket.probe:
            self._remember(self.store.change(self.provider, ticket.scope, lambda cur: cur.probe_undecided(now))[0])
        if up is None or (self.settings.failures == 0 and not ticket.probe):
            return
        if up:
            known = self._circuits().get(ticket.scope)
            if not ticket.probe and (known is None or known.clean):
                return
            new, changed = self.store.change(self.provider, ticket.scope, lambda cur: cur.after_success(now))
            if changed and known is not None and known.state is not CircuitState.CLOSED:
                self.log.warning(f"circuit {self.provider} {ticket.scope}: closed, the provider answered")
        else:
            before: list[Circuit] = []

            def fail(cur: Circuit) -> Circuit:
                before.append(cur)
                return cur.after_failure(
                    now, self.settings, probe=ticket.probe, company_id=row.company_id, error=result.error
                )

            new, changed = self.store.change(self.provider, ticket.scope, fail)
            if changed and new.state is CircuitState.OPEN and before and before[0].state is not CircuitState.OPEN:
                seconds = (new.open_until - now).total_seconds() if new.open_until else 0.0
                self.log.warning(
                    f"circuit {self.provider} {ticket.scope}: opened after {new.failures} consecutive transient "
                    f"failure(s); nothing is sent for {seconds:.0f} s, then one probe"
                )
        self._remember(new)


def snapshot(engine: Engine, providers: Sequence[str] | None = None) -> list[Circuit]:
    """Every stored breaker and pause (for the CLI, the checks, the metrics and the stats)."""
    found = CircuitStore(engine).load()
    return [x for x in found if providers is None or x.provider in providers]
