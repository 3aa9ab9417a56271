"""Deliver: claim due outbox rows, send each through its connector with retries, record every attempt, settle.

Concurrency is a bounded thread pool (network-bound work); a row is only ever in one worker because it is
only ever held by one claim. Claims carry a lease renewed by a heartbeat while the run lives; a crashed run's
rows come back when its lease lapses, or at once when its process is provably dead (same boot and PID namespace).
A worker confirms the claim right before each request (without a round trip while the claim is younger than half a
lease by the run's own clocks: nobody takes over an unlapsed claim of a live run), and settling checks it again: a
row whose claim was taken over or lapsed while it waited in the pool, or between retries, is left to its new
holder, never sent. Attempts and settlements are written in batches by the run's settlement writer
(services/settlement_writer), so a send thread goes on to its next row while its last one is being written; a row
counts as done once it is written.
"""

import logging
import queue
import random
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any, cast

from sqlalchemy.engine import Engine

from impactin_pipelines.connectors.base import (
    AttemptResult,
    Connector,
    Deferral,
    DeferringConnector,
    OutboundDelivery,
    defers_for_quota,
)
from impactin_pipelines.connectors.registry import ConnectorFactory
from impactin_pipelines.connectors.retry import Decision, RetryPolicy, Spent, Step
from impactin_pipelines.domain.errors import ConfigError
from impactin_pipelines.domain.providers import Provider
from impactin_pipelines.domain.statuses import DeliveryStatus, ErrorKind, RowOutcome
from impactin_pipelines.observability import log_delivery
from impactin_pipelines.services.deferred import Deferred, DeferredRows, Held
from impactin_pipelines.services.settlement_writer import SettlementWriter, Written
from impactin_pipelines.settings import DeliverySettings
from impactin_pipelines.store.circuits import CircuitGate, Hold
from impactin_pipelines.store.claimants import Claimant
from impactin_pipelines.store.held_connections import HeldConnections
from impactin_pipelines.store.outbox import (
    ClaimBatch,
    ClaimPosition,
    LeaseStart,
    Outbox,
    Recording,
    Settlement,
    utcnow,
)

LOG = logging.getLogger("impactin.delivery")
PROVIDER_RESPONSE_CHARS = 16 * 1024
ROWS_KEPT = 1000  # per-row results a report keeps for rows that did not succeed (the counts cover every row)
LOST_AT_SEND = "claim lost before sending (taken over or lapsed): not sent"
LOST_AT_SETTLE = "claim lost before settling (another claimant holds it now): attempt recorded, row left to it"
HALTED_NOT_SENT = "not sent: this run could no longer record deliveries"
HELD_CLAIM_BATCHES = 5  # rows held for their quota, at most, in claim batches: a run does not claim the whole outbox


@dataclass(frozen=True)
class RowResult:
    """What this run did with one claimed row: its outcome, why it failed (if settled as failed or retrying), and
    how many requests this run sent for it."""

    row: OutboundDelivery
    status: RowOutcome
    error_kind: ErrorKind | None
    attempts: int
    error: str | None = None


@dataclass(frozen=True)
class Settling:
    """What a send thread hands back for a row whose last attempt is sent and being written: the run reports it
    once `written` resolves (the claim may turn out lost, or the write fail)."""

    row: OutboundDelivery
    written: "Future[Written]"
    settlement: Settlement
    result: AttemptResult
    step: Step
    attempts: int


@dataclass
class DeliveryCounts:
    """Counts of row outcomes, error kinds and requests sent, for one company or a whole pass."""

    outcomes: Counter[RowOutcome] = field(default_factory=Counter)
    error_kinds: Counter[ErrorKind] = field(default_factory=Counter)
    attempts: int = 0

    def add(self, result: RowResult) -> None:
        self.outcomes[result.status] += 1
        self.attempts += result.attempts
        if result.error_kind is not None:
            self.error_kinds[result.error_kind] += 1

    def update(self, other: "DeliveryCounts") -> None:
        self.outcomes.update(other.outcomes)
        self.error_kinds.update(other.error_kinds)
        self.attempts += other.attempts

    @property
    def rows(self) -> int:
        return self.outcomes.total()


@dataclass
class DeliveryReport:
    """What one delivery pass did, per company (the Dagster asset turns it into per-partition metadata).

    Memory stays flat in the number of rows: counts per company, and per-row results (payload dropped) only for
    the rows that did not succeed, up to `ROWS_KEPT` of them, unless `keep_rows` (targeted runs: replay and
    deliver-now answer per row, and are bounded by the ids they were given)."""

    provider: str
    by_company: dict[str, DeliveryCounts] = field(default_factory=lambda: defaultdict(DeliveryCounts))
    errors: list[str] = field(default_factory=list)  # rows left unsent or unrecorded because the warehouse failed
    seconds: float = 0.0
    rows: dict[str, RowResult] = field(default_factory=dict)  # by row id: what happened to the rows kept
    keep_rows: bool = False

    def add(self, result: RowResult) -> None:
        if self.keep_rows or (result.status is not RowOutcome.SUCCESS and len(self.rows) < ROWS_KEPT):
            self.rows[result.row.id] = replace(result, row=replace(result.row, payload=""))
        self.by_company[result.row.company_id].add(result)
        if result.status in (RowOutcome.NOT_SENT, RowOutcome.UNRECORDED) and result.error:
            self.errors.append(f"{result.row.delivery_id}: {result.error}")

    @property
    def totals(self) -> DeliveryCounts:
        total = DeliveryCounts()
        for counts in self.by_company.values():
            total.update(counts)
        return total


Outcome = RowResult | Deferred | Settling  # what a send thread hands back for a row
Finished = Future[Outcome] | Settling  # what the drain loop is told of: a send thread's row, or a row written


def _finished(finished: "queue.SimpleQueue[Finished]", timeout: float | None) -> list[Finished]:
    """What finished: waits up to `timeout` (None: until something does) for the first, then takes the rest that
    are ready."""
    try:
        done = [finished.get(timeout=timeout)]
    except queue.Empty:
        return []
    while True:
        try:
            done.append(finished.get_nowait())
        except queue.Empty:
            return done


def _tell(finished: "queue.SimpleQueue[Finished]", settling: Settling) -> Callable[[Future[Written]], None]:
    """A callback for a row's write that puts the row in `finished` (run on the writer's thread)."""
    return lambda _: finished.put(settling)


class _UnwrittenSends:
    """Rows whose request went out and whose attempt is not written yet: at most `limit`, because they are what a
    crash leaves to be sent again. A send thread takes a place right before its request; the attempt's write gives
    it back."""

    def __init__(self, limit: int) -> None:
        self._places = threading.Semaphore(limit)

    def take(self) -> "_Place":
        self._places.acquire()
        return _Place(self._places)


class _Place:
    def __init__(self, places: threading.Semaphore) -> None:
        self._places: threading.Semaphore | None = places
        self._lock = threading.Lock()

    def give_back(self, *_: object) -> None:
        """Give the place back (once, however many times it is called)."""
        with self._lock:
            places, self._places = self._places, None
        if places is not None:
            places.release()


class _Heartbeat:
    """Renews this claimant's leases every third of the lease while the run is alive."""

    def __init__(self, outbox: Outbox, claimant: str, lease_s: float, logger: logging.Logger) -> None:
        self._outbox, self._claimant, self._lease_s, self._log = outbox, claimant, lease_s, logger
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="impactin-lease-heartbeat", daemon=True)

    def __enter__(self) -> "_Heartbeat":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _run(self) -> None:
        while not self._stop.wait(self._lease_s / 3):
            try:
                self._outbox.renew(self._claimant, self._lease_s)
            except Exception as exc:  # the warehouse may blip; the next beat tries again
                self._log.warning(f"lease renewal failed: {type(exc).__name__}: {exc}")


class DeliveryRun:
    """One pass over (provider, companies). Create, call `run()`, read the report."""

    def __init__(
        self,
        engine: Engine,
        factory: ConnectorFactory,
        *,
        provider: Provider,
        company_ids: Sequence[str] | None,
        settings: DeliverySettings | None = None,
        run_id: str | None = None,
        logger: logging.Logger = LOG,
        sleep: Callable[[float], None] = time.sleep,
        rng: random.Random | None = None,
        only_ids: Sequence[str] | None = None,
        keep_rows: bool | None = None,
    ) -> None:
        """`only_ids` targets given rows (replay, deliver-now): any status but success, due or not, and no waiting
        for rows someone else holds (those are reported as not claimed). `keep_rows`: the report keeps every row's
        result (default: only for targeted runs)."""
        self.engine = engine
        self.factory = factory
        self.provider = provider
        self.company_ids = list(company_ids) if company_ids is not None else None
        self.settings = settings or factory.settings
        self.policy = RetryPolicy(self.settings.retry)
        self.run_id = run_id
        self.log = logger
        self.sleep = sleep
        self.rng = rng or random.Random()
        # Each thread of the run (the drain loop, the send threads, the settlement writer) keeps a connection for
        # the run: a claim, a row's confirm, a batch's record is one round trip each.
        self._held = HeldConnections(engine)
        self.outbox = Outbox(engine, held=self._held)
        # Rows sent and not yet written: up to the run's concurrency in flight and as many again waiting for their
        # write, so that a write's round trip does not keep a send thread from its next request.
        unwritten = 2 * self.settings.concurrency
        self._writer = SettlementWriter(self.outbox, max_waiting=unwritten)
        self._unwritten = _UnwrittenSends(unwritten)
        self.only_ids = list(only_ids) if only_ids is not None else None
        self._taken: set[str] = set()  # targeted rows claimed once already: a settled row is never re-claimed
        self._claimed_up_to: ClaimPosition | None = None  # where the last claim ended (store/outbox.ClaimPosition)
        # When each claimed row's lease began (claim version, start), until its first send: a claim younger than
        # half a lease is sent without a confirm round trip (store/outbox.LeaseStart).
        self._lease_starts: dict[str, tuple[int, LeaseStart]] = {}
        self.claimant = str(Claimant.new())
        keep = self.only_ids is not None if keep_rows is None else keep_rows
        self.report = DeliveryReport(provider.value, keep_rows=keep)
        self.circuits = CircuitGate(engine, provider.value, self.settings, logger=logger)  # held rows stay due
        # Set when the warehouse fails us (a delivery could not be recorded, or claiming failed): from then on this
        # run sends nothing more, since what it sent could not be recorded; its unsent rows come back when released
        # or when their lease lapses. Without it, every claimed row would go out unrecorded and be sent again.
        self._halted = threading.Event()
        self._deferred = DeferredRows()  # rows held for their quota (services/deferred), by the drain loop only
        self._defers: bool | None = None  # does this provider's connector defer for a quota (known once one is built)
        self._quotas: dict[str, tuple[str, float] | None] = {}

    # -- the pass --------------------------------------------------------------------------------------------
    def run(self) -> DeliveryReport:
        started = time.monotonic()
        try:
            with (
                _Heartbeat(self.outbox, self.claimant, self.settings.lease_s, self.log),
                self._writer,
                ThreadPoolExecutor(
                    self.settings.concurrency,
                    thread_name_prefix="impactin-send",
                    initializer=self._held.bind_this_thread,  # a quota's slot: on the thread's own connection
                ) as pool,
            ):
                try:
                    self._drain(pool)
                    if self.only_ids is None and not self._halted.is_set():
                        self._wait_for_foreign_claims(pool)
                except BaseException:
                    self._halted.set()  # before the pool winds down: rows still queued in it are not sent
                    raise
        finally:
            self._held.close()  # the send threads are done, and the writer has written what they sent
            try:
                self.outbox.release_all(self.claimant)
            except Exception as exc:  # leases lapse on their own; say so and move on
                self.log.warning(f"could not release claims of {self.claimant}: {exc}")
            self.report.seconds = time.monotonic() - started
        return self.report

    def _claim(self, dead: Sequence[str]) -> list[OutboundDelivery]:
        targeted: dict[str, Any] = {}
        if self.only_ids is not None:
            targeted = {
                "ids": [i for i in self.only_ids if i not in self._taken],
                "statuses": (DeliveryStatus.PENDING, DeliveryStatus.RETRYING, DeliveryStatus.FAILED),
                "due_only": False,
            }

        def claim(after: ClaimPosition | None) -> ClaimBatch:
            batch = self.outbox.claim(
                claimant=self.claimant,
                provider=self.provider.value,
                company_ids=self.company_ids,
                limit=self.settings.claim_batch,
                lease_s=self.settings.lease_s,
                dead=dead,
                after=after,
                **targeted,
            )
            if batch.lease_start is not None:
                self._lease_starts.update((row.id, (row.claim_version, batch.lease_start)) for row in batch)
            return batch

        if self.only_ids is not None:
            claimed = claim(None)
            self._taken.update(row.id for row in claimed)
            return claimed
        # Each claim starts where the last one ended; a short batch ends the pass, and the next claim starts from
        # the top again (rows freed behind the position meanwhile), so the run ends on a claim from the top.
        claimed = claim(self._claimed_up_to)
        if not claimed and self._claimed_up_to is not None:
            claimed = claim(None)
        self._claimed_up_to = claimed.end
        return claimed

    def _drain(self, pool: ThreadPoolExecutor) -> None:
        """Keep the pool busy until nothing claimable is left."""
        dead = self.outbox.dead_claimants(self.provider.value, self.company_ids)
        if dead:
            self.log.warning(f"reclaiming rows of {len(dead)} dead claimant(s): {', '.join(dead)}")
        self._drain_with(pool, dead)

    def _drain_with(self, pool: ThreadPoolExecutor, dead: Sequence[str]) -> None:
        """Claim and send until nothing claimable is left and no row is held for its quota. A row whose quota has
        no slot comes back deferred: it is held (still claimed) and offered again when its bucket should have
        room, while the send threads take other rows; claiming goes on while rows are held, up to a bound."""
        in_flight: set[Future[Outcome]] = set()  # rows in the send threads
        settling = 0  # rows sent and being written
        held_limit = self.settings.claim_batch * HELD_CLAIM_BATCHES
        exhausted = False
        # The last batch went to busy buckets only (nothing of it could go now): claiming more would most likely
        # bring rows of the same buckets, so the run claims again only once few rows are held (as few as it would
        # have in its pool), and leaves the rest to other runs meanwhile.
        stalled = False

        # Finished rows arrive here (one callback each), so noticing one costs the same however many are in flight;
        # `concurrent.futures.wait` would visit every future in flight (a claim batch of them) each time.
        finished: queue.SimpleQueue[Finished] = queue.SimpleQueue()

        def submit(row: OutboundDelivery, held: Held | None = None) -> None:
            future = pool.submit(self._deliver_row, row, held)
            in_flight.add(future)
            future.add_done_callback(finished.put)

        def room() -> bool:  # the pool has (nearly) nothing queued
            return len(in_flight) < self.settings.concurrency * 2

        while True:
            if self._halted.is_set():
                for held in self._deferred.take_all():  # nothing more goes out: leave them to a later run
                    self.report.add(RowResult(held.row, RowOutcome.NOT_SENT, None, held.attempts, HALTED_NOT_SENT))
            if room():
                for held in self._deferred.due():  # the longest due first; the rest stay due until there is room
                    submit(held.row, held)
                    if not room():
                        break
            if (
                not exhausted
                and not self._halted.is_set()
                and room()
                and len(self._deferred) < held_limit
                and (not stalled or len(self._deferred) < self.settings.concurrency * 2)
            ):
                batch = self._claim(dead)
                exhausted = not batch
                self._preload_settings(batch)
                submitted = 0
                for row in batch:
                    if self._deferred.admit_fresh(row, self._quota(row.company_id)):
                        submit(row)
                        submitted += 1
                stalled = bool(batch) and not submitted
                continue
            if not in_flight and not settling and not len(self._deferred):
                return
            due_in = self._deferred.next_due_in() if room() else None  # a full pool: wait for it, not for the time
            if due_in is None and not in_flight and not settling:  # defensive: a held row always has a due time
                due_in = 0.05
            for done in _finished(finished, due_in):
                if isinstance(done, Settling):
                    settling -= 1
                    self.report.add(self._written(done))
                    continue
                in_flight.discard(done)
                outcome = done.result()
                if isinstance(outcome, Deferred):
                    self._deferred.hold(outcome)
                elif isinstance(outcome, Settling):
                    settling += 1
                    outcome.written.add_done_callback(_tell(finished, outcome))
                else:
                    self.report.add(outcome)

    def _preload_settings(self, batch: Sequence[OutboundDelivery]) -> None:
        """Read the settings of the batch's companies met for the first time in one query: their connectors are
        built next (by `_quota` here, or by the send threads), and one query each would pace this loop."""
        if not batch:
            return
        try:
            self.factory.preload(self.provider, {row.company_id for row in batch})
        except Exception as exc:  # each connector then reads its own settings, as without the read-ahead
            self.log.warning(f"could not read ahead the settings of a claim batch: {type(exc).__name__}: {exc}")

    def _quota(self, company_id: str) -> tuple[str, float] | None:
        """The quota a company's rows draw on (bucket key, interval between requests), when its provider's
        connector can defer for one (None: send as claimed). Asked of the company's connector, built once per
        factory (a config error: None, and the send path settles the row)."""
        if self._defers is False:
            return None
        if company_id in self._quotas:
            return self._quotas[company_id]
        try:
            connector = self.factory.connector(company_id, self.provider)
        except ConfigError:
            return None
        self._defers = defers_for_quota(connector)  # one connector class per provider
        quota = None
        if self._defers:
            deferring = cast(DeferringConnector, connector)
            quota = (deferring.quota_key, deferring.quota_spacing_s)
        self._quotas[company_id] = quota
        return quota

    def _wait_for_foreign_claims(self, pool: ThreadPoolExecutor) -> None:
        """Rows held by another claimant: wait for their lease unless the claimant shows it is alive (its lease
        moves forward). Bounded by one lease. This is how a plain re-run finishes a crashed run's work."""
        deadline = time.monotonic() + self.settings.lease_s + 1.0
        seen: dict[str, datetime] = {}
        alive: set[str] = set()
        while time.monotonic() < deadline:
            foreign = self.outbox.foreign_claims(self.claimant, self.provider.value, self.company_ids)
            alive |= {who for who, expires in foreign.items() if who in seen and expires > seen[who]}
            seen.update(foreign)
            waiting_for = set(foreign) - alive
            if not waiting_for:
                if seen:  # what they held may have been given back since the last drain: take it now
                    self._drain_with(pool, ())
                return
            dead = self.outbox.dead_claimants(self.provider.value, self.company_ids)
            before = self.report.totals.rows
            self._drain_with(pool, dead)
            if self.report.totals.rows == before:
                soonest = min(foreign[w] for w in waiting_for)
                pause = (soonest - utcnow()).total_seconds() + 0.05
                self.sleep(min(1.0, max(0.05, pause)))

    # -- one row ---------------------------------------------------------------------------------------------
    def _deliver_row(self, row: OutboundDelivery, held: Held | None = None) -> Outcome:
        if self._halted.is_set():
            return RowResult(row, RowOutcome.NOT_SENT, None, held.attempts if held else 0, HALTED_NOT_SENT)
        try:
            return self._send_until_settled(row, held)
        except Exception as exc:  # the warehouse went away mid-row: the lease brings the row back later
            return self._unrecorded(row, exc)

    def _unrecorded(self, row: OutboundDelivery, exc: BaseException) -> RowResult:
        self._halted.set()
        message = f"delivery could not be recorded (no more sends in this run): {type(exc).__name__}: {exc}"
        self._log_row(logging.ERROR, message, row, row.status, row.attempt_count)
        return RowResult(row, RowOutcome.UNRECORDED, None, 0, f"{type(exc).__name__}: {exc}")

    def _send_until_settled(self, row: OutboundDelivery, held: Held | None = None) -> Outcome:
        fresh = self._lease_starts.pop(row.id, None)  # its claim's start, for its first send only
        if not row.payload:
            settlement = Settlement(
                DeliveryStatus.FAILED, ErrorKind.INVALID_EVENT, "no payload was built for this event"
            )
            if not self._settle(row, None, settlement)[1]:
                return self._claim_lost(row, 0, LOST_AT_SETTLE)
            return RowResult(row, RowOutcome.FAILED, ErrorKind.INVALID_EVENT, 0)
        try:
            connector = self.factory.connector(row.company_id, self.provider)
        except ConfigError as exc:
            if not self._settle(row, None, Settlement(DeliveryStatus.FAILED, ErrorKind.CONFIG, str(exc)))[1]:
                return self._claim_lost(row, 0, LOST_AT_SETTLE)
            self._log_row(logging.ERROR, "delivery not configured", row, DeliveryStatus.FAILED, row.attempt_count)
            return RowResult(row, RowOutcome.FAILED, ErrorKind.CONFIG, 0)

        spent, attempts = (held.spent, held.attempts) if held else (Spent(), 0)
        waiting_since = held.waiting_since if held else None  # its quota wait so far (until it sends)
        while True:
            if attempts and self._halted.is_set():  # its last attempt is recorded; the next waits for a later run
                return RowResult(
                    row, RowOutcome.NOT_SENT, None, attempts, "not retried: this run could no longer record deliveries"
                )
            ticket = self.circuits.admit(row, connector)
            if isinstance(ticket, Hold):  # circuit open or paused: no request, no attempt spent
                return RowResult(row, RowOutcome.HELD, None, attempts, ticket.reason)
            if not self._still_ours(row, fresh):
                return self._claim_lost(row, attempts, LOST_AT_SEND)
            fresh = None
            place = self._unwritten.take()  # given back once this attempt is written (or if none is sent)
            if self._halted.is_set():  # a write failed while this thread waited for its place
                place.give_back()
                return RowResult(row, RowOutcome.NOT_SENT, None, attempts, HALTED_NOT_SENT)
            try:
                sent = self._offer(connector, row, waiting_since)
                if isinstance(sent, Deferral):  # no quota slot now: nothing sent, no attempt; the run holds the row
                    place.give_back()
                    self.circuits.release(ticket)
                    return Deferred(row, sent, spent, attempts, waiting_since)
                result, waiting_since = sent, None
                attempts += 1
                decision = self.policy.decide(
                    result.outcome,
                    spent,
                    token_stale=result.token_stale,
                    retry_after_s=result.retry_after_s,
                    rng=self.rng,
                )
                settlement = self._settlement(row, result, decision)
                self.circuits.report(ticket, row, result)
                written = self._submit(row, result, settlement)
            except BaseException:
                place.give_back()
                raise
            written.add_done_callback(place.give_back)
            settling = Settling(row, written, settlement, result, decision.step, attempts)
            if decision.step is not Step.RETRY:
                return settling  # reported once written; this thread takes its next row meanwhile
            outcome = self._written(settling)  # the next attempt waits for this one's record
            if outcome.status is not RowOutcome.RETRYING:
                return outcome
            spent = decision.spent
            self.sleep(decision.delay_s)

    @staticmethod
    def _offer(connector: Connector, row: OutboundDelivery, waiting_since: float | None) -> AttemptResult | Deferral:
        """One send, unless the connector has a quota it can check without waiting and it has no slot now."""
        if not defers_for_quota(connector):
            return connector.send(row)
        waited_s = 0.0 if waiting_since is None else max(0.0, time.monotonic() - waiting_since)
        return cast(DeferringConnector, connector).try_send(row, waited_s)

    def _settlement(self, row: OutboundDelivery, result: AttemptResult, decision: Decision) -> Settlement:
        response = (result.response_body or "")[:PROVIDER_RESPONSE_CHARS] or None
        now = utcnow()
        match decision.step:
            case Step.SUCCEED:
                return Settlement(DeliveryStatus.SUCCESS, provider_response=response)
            case Step.FAIL:
                return Settlement(DeliveryStatus.FAILED, decision.error_kind, result.error, response)
            case Step.RETRY:
                return Settlement(
                    DeliveryStatus.RETRYING,
                    ErrorKind.TRANSIENT,
                    result.error,
                    response,
                    next_attempt_at=now + timedelta(seconds=decision.delay_s),
                    release=False,
                )
        if row.run_count >= self.settings.max_run_attempts:
            message = f"gave up after {row.run_count} run(s): {result.error}"
            return Settlement(DeliveryStatus.FAILED, ErrorKind.EXHAUSTED, message, response)
        delay = self.policy.next_run_delay(row.run_count, decision.delay_s)
        return Settlement(
            DeliveryStatus.RETRYING,
            ErrorKind.TRANSIENT,
            result.error,
            response,
            next_attempt_at=now + timedelta(seconds=delay),
        )

    def _claim_lost(self, row: OutboundDelivery, attempts: int, message: str) -> RowResult:
        self._log_row(logging.WARNING, message, row, row.status, row.attempt_count)
        return RowResult(row, RowOutcome.CLAIM_LOST, None, attempts, message)

    def _still_ours(self, row: OutboundDelivery, fresh: tuple[int, LeaseStart] | None) -> bool:
        """Do we still hold this row's claim, with at least half a lease left? A first send within half a lease of
        its claim (`fresh`) knows it without asking; any later one (a retry, a row held for its quota) confirms in
        the store, which also pushes a lease that is more than half gone."""
        if fresh is not None and fresh[0] == row.claim_version and fresh[1].holds(self.settings.lease_s):
            return True
        return self.outbox.confirm(self.claimant, row.id, row.claim_version, self.settings.lease_s)

    def _submit(self, row: OutboundDelivery, result: AttemptResult | None, settlement: Settlement) -> "Future[Written]":
        """Hand the attempt and the row's settlement under our claim to the writer. A write that fails halts the
        run at once (from the writer's thread): what it sends from then on could not be recorded."""
        recording = Recording(
            self.claimant, row.claim_version, row.delivery_id, self.run_id, result, settlement, utcnow()
        )
        written = self._writer.submit(recording)
        written.add_done_callback(lambda w: self._halted.set() if w.exception() is not None else None)
        return written

    def _settle(self, row: OutboundDelivery, result: AttemptResult | None, settlement: Settlement) -> tuple[int, bool]:
        """Record the attempt and settle the row under our claim, and wait for it; (attempt count, whether it was
        settled)."""
        return self._submit(row, result, settlement).result()

    def _written(self, settling: Settling) -> RowResult:
        """A sent row's result once its recording is written (or failed), with its log line."""
        row, settlement, result = settling.row, settling.settlement, settling.result
        try:
            attempt_count, applied = settling.written.result()
        except Exception as exc:
            return self._unrecorded(row, exc)
        if not applied:
            return self._claim_lost(row, settling.attempts, LOST_AT_SETTLE)
        level = logging.INFO if settlement.status is DeliveryStatus.SUCCESS else logging.WARNING
        self._log_row(
            level,
            f"attempt {settling.step.value}",
            row,
            settlement.status,
            attempt_count,
            httpStatus=result.http_status,
            error=result.error,
            providerReference=result.provider_reference,
        )
        return RowResult(row, RowOutcome.settled(settlement.status), settlement.error_kind, settling.attempts)

    def _log_row(
        self, level: int, message: str, row: OutboundDelivery, status: str, attempt_count: int, **more: object
    ) -> None:
        log_delivery(
            self.log,
            level,
            message,
            delivery_id=row.delivery_id,
            provider=row.provider,
            event_id=row.event_id,
            status=str(status),
            attempt_count=attempt_count,
            companyId=row.company_id,
            **more,
        )
