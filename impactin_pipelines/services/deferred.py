"""Rows a delivery run holds back for a quota: no head-of-line blocking behind one credential's bucket.

A connector with a quota (Goodera: one bucket per credential) answers a row whose bucket has no slot now with a
`Deferral` instead of waiting in the send thread. The run keeps such rows here, still claimed (its heartbeat renews
their leases), and its send threads take other rows meanwhile: fifty companies with fifty buckets all send at
their own pace instead of eight at a time.

The run knows each company's bucket and its interval from the connector, so it paces rows itself: a newly claimed
row goes to a send thread when its bucket should have room, otherwise it is queued here without a try; the rows of
one bucket go out a quota interval apart (a roomy quota's interval is short: nothing is serialised behind a row in
flight). The bucket's own answer (a deferral, when another process took the slot) re-times its queue. Per bucket,
rows wait in arrival order and only the first is offered, when due. The first row's wait is what counts against
the connector's max wait, as a send thread waiting for the slot would count it: rows behind it are queued, not
starved. Used by the run's drain loop only (one thread): no locks.
"""

import heapq
import itertools
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from impactin_pipelines.connectors.base import Deferral, OutboundDelivery
from impactin_pipelines.connectors.retry import Spent

# How early a bucket's row may go. The drain loop looks at the buckets every so often, not every microsecond: for a
# quota faster than that (a raised quota's interval is microseconds), the rows due by the next look go together,
# each a quota interval after the last, instead of one row per look. Far below a real quota's interval (100 a
# minute: 0.6 s), where rows go one at a time; the shared bucket has the last word either way.
EARLY_S = 0.002


@dataclass(frozen=True)
class Deferred:
    """What a send thread hands back instead of a settled row: not sent (no attempt for the quota wait), and
    what the row had spent in this run so far, to resume from."""

    row: OutboundDelivery
    deferral: Deferral
    spent: Spent = field(default_factory=Spent)
    attempts: int = 0
    waiting_since: float | None = None  # carried over from the `Held` it was offered as, if it was waiting


@dataclass
class Held:
    """A row the run holds for its quota. `waiting_since`: when it became the next row of its bucket to go (its
    quota wait counts from then); None while it is queued behind another."""

    row: OutboundDelivery
    spent: Spent = field(default_factory=Spent)
    attempts: int = 0
    waiting_since: float | None = None

    def waited_s(self, now: float) -> float:
        return 0.0 if self.waiting_since is None else max(0.0, now - self.waiting_since)


@dataclass
class _Bucket:
    spacing_s: float  # the quota's interval between two requests
    rows: deque[Held] = field(default_factory=deque)  # held, first to go first
    due: float = 0.0  # when the bucket should have room for this run's next row


class DeferredRows:
    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self._buckets: dict[str, _Bucket] = {}
        self._dues: list[tuple[float, int, str]] = []  # heap of (due, tie-break, key); stale entries skipped
        self._pushed = itertools.count()
        self._count = 0

    def __len__(self) -> int:
        """Rows held here (not counting the ones offered and now in a send thread)."""
        return self._count

    def admit_fresh(self, row: OutboundDelivery, quota: tuple[str, float] | None) -> bool:
        """A newly claimed row and its quota (bucket key, interval between requests; None: no quota to wait for):
        True to send it now, when its bucket should have room and no row of it is held; otherwise False, and it is
        queued behind them here. Rows of one bucket go a quota interval apart, whether or not the last is back."""
        if quota is None:
            return True
        key, spacing_s = quota
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = self._buckets[key] = _Bucket(spacing_s)
        now = self.clock()
        if not bucket.rows and bucket.due <= now + EARLY_S:
            bucket.due = max(bucket.due, now) + bucket.spacing_s
            return True
        bucket.rows.append(Held(row))
        self._count += 1
        if len(bucket.rows) == 1:
            self._schedule(key, bucket, bucket.due)
        return False

    def hold(self, deferred: Deferred) -> None:
        """A row came back unsent: its bucket has no slot for `deferral.ready_in_s`."""
        now = self.clock()
        key = deferred.deferral.key
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = self._buckets[key] = _Bucket(deferred.deferral.spacing_s)
        held = Held(deferred.row, deferred.spent, deferred.attempts, deferred.waiting_since)
        if held.waiting_since is not None:  # offered again and still too early: first again, its wait running on
            bucket.rows.appendleft(held)
        elif not bucket.rows:  # the first row of this bucket to wait: its wait starts now
            held.waiting_since = now
            bucket.rows.append(held)
        else:  # rows of the bucket wait already: queue behind them
            bucket.rows.append(held)
        self._count += 1
        self._schedule(key, bucket, now + deferred.deferral.ready_in_s)  # the bucket's latest word on its room

    def due(self) -> Iterator[Held]:
        """Rows to offer now: the first held row of each bucket whose time has come; the bucket's next row one
        quota interval later."""
        now = self.clock()
        while self._dues and self._dues[0][0] <= now + EARLY_S:
            due, _, key = heapq.heappop(self._dues)
            bucket = self._buckets[key]
            if not bucket.rows or bucket.due != due:
                continue  # stale: rescheduled, or nothing left to offer
            held = bucket.rows.popleft()
            self._count -= 1
            if held.waiting_since is None:
                held.waiting_since = now
            bucket.due = max(due, now) + bucket.spacing_s
            if bucket.rows:
                self._schedule(key, bucket, bucket.due)
            yield held

    def next_due_in(self) -> float | None:
        """Seconds until the next row is due (0 when one is), None when no row is held."""
        while self._dues:
            due, _, key = self._dues[0]
            bucket = self._buckets[key]
            if bucket.rows and bucket.due == due:
                return max(0.0, due - self.clock())
            heapq.heappop(self._dues)
        return None

    def take_all(self) -> list[Held]:
        """Every row held (the run stops sending): they are left unsent, their claims released with the run's."""
        taken = [held for bucket in self._buckets.values() for held in bucket.rows]
        for bucket in self._buckets.values():
            bucket.rows.clear()
        self._dues.clear()
        self._count = 0
        return taken

    def _schedule(self, key: str, bucket: _Bucket, due: float) -> None:
        bucket.due = due
        heapq.heappush(self._dues, (due, next(self._pushed), key))
