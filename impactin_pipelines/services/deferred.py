"""Rows a delivery run holds back for a quota: no head-of-line blocking behind one credential's bucket.

A connector with a quota (Goodera: one bucket per credential) answers a row whose bucket has no slot now with a
`Deferral` instead of waiting in the send thread. The run keeps such rows here, still claimed (its heartbeat renews
their leases), and its send threads take other rows meanwhile: fifty companies with fifty buckets all send at
their own pace instead of eight at a time.

Per bucket key, rows wait in arrival order and only the first is offered again, when the bucket should have room;
the rest queue behind it without asking (the run knows each company's bucket key from its connector, so a newly
claimed row whose bucket is busy is queued at once, not tried). The first row's wait is what counts against the
connector's max wait, as a send thread waiting for the slot would count it: rows behind it are queued, not starved.
Once a row has gone out, the next one of that key is offered a quota interval after it. Used by the run's drain
loop only (one thread): no locks.
"""

import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from impactin_pipelines.connectors.base import Deferral, OutboundDelivery
from impactin_pipelines.connectors.retry import Spent


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
    spacing_s: float
    rows: deque[Held] = field(default_factory=deque)
    due: float = 0.0  # when the first queued row may be offered
    offered: str | None = None  # the row id of this bucket's row now in a send thread, if we sent it there
    offered_at: float = 0.0


class DeferredRows:
    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self._buckets: dict[str, _Bucket] = {}
        self._key_of: dict[str, str] = {}  # company -> bucket key
        self._count = 0

    def __len__(self) -> int:
        """Rows held here (not counting the ones offered and now in a send thread)."""
        return self._count

    def admit_fresh(self, row: OutboundDelivery, key: str | None) -> bool:
        """A newly claimed row and its quota key (None: no quota to wait for): True to send it now; False when
        another row of its bucket waits or is out already (it is queued behind them here)."""
        if key is None:
            return True
        self._key_of[row.company_id] = key
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = self._buckets[key] = _Bucket(spacing_s=0.0)  # the spacing is learnt from the first deferral
        if bucket.rows or bucket.offered is not None:
            bucket.rows.append(Held(row))
            self._count += 1
            return False
        self._offer(bucket, row.id)
        return True

    def hold(self, deferred: Deferred) -> None:
        """A row came back unsent: its bucket has no slot for `deferral.ready_in_s`."""
        now = self.clock()
        key = deferred.deferral.key
        self._key_of[deferred.row.company_id] = key
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = self._buckets[key] = _Bucket(deferred.deferral.spacing_s)
        bucket.spacing_s = deferred.deferral.spacing_s
        held = Held(deferred.row, deferred.spent, deferred.attempts)
        if bucket.offered == deferred.row.id:  # the bucket's first row, offered and still too early: first again
            held.waiting_since = deferred.waiting_since if deferred.waiting_since is not None else now
            bucket.rows.appendleft(held)
            bucket.offered = None
            bucket.due = now + deferred.deferral.ready_in_s
        elif not bucket.rows and bucket.offered is None:  # the first row of this bucket to wait
            held.waiting_since = now
            bucket.rows.append(held)
            bucket.due = now + deferred.deferral.ready_in_s
        else:  # another row of the bucket waits already (or is out): queue behind it
            bucket.rows.append(held)
        self._count += 1

    def settled(self, row: OutboundDelivery, sent: bool) -> None:
        """A row came back settled (or given up on). If it was its bucket's offered row, the next one may go a
        quota interval after it (at once when this one sent nothing)."""
        bucket = self._bucket_of(row)
        if bucket is None or bucket.offered != row.id:
            return
        bucket.offered = None
        bucket.due = bucket.offered_at + bucket.spacing_s if sent else self.clock()

    def due(self) -> Iterator[Held]:
        """Rows to offer now: the first row of each bucket whose time has come (and none of whose rows is out)."""
        now = self.clock()
        for bucket in self._buckets.values():
            if bucket.rows and bucket.offered is None and bucket.due <= now:
                held = bucket.rows.popleft()
                self._count -= 1
                if held.waiting_since is None:
                    held.waiting_since = now
                self._offer(bucket, held.row.id)
                yield held

    def next_due_in(self) -> float | None:
        """Seconds until the next row is due (0 when one is), None when nothing is waiting for time."""
        dues = [b.due for b in self._buckets.values() if b.rows and b.offered is None]
        if not dues:
            return None
        return max(0.0, min(dues) - self.clock())

    def take_all(self) -> list[Held]:
        """Every row held (the run stops sending): they are left unsent, their claims released with the run's."""
        taken = [held for bucket in self._buckets.values() for held in bucket.rows]
        for bucket in self._buckets.values():
            bucket.rows.clear()
        self._count = 0
        return taken

    # -- internals -----------------------------------------------------------------------------------------
    def _bucket_of(self, row: OutboundDelivery) -> _Bucket | None:
        key = self._key_of.get(row.company_id)
        return None if key is None else self._buckets.get(key)

    def _offer(self, bucket: _Bucket, row_id: str) -> None:
        bucket.offered = row_id
        bucket.offered_at = self.clock()
