"""Rate limiting of the API itself: a sliding window per caller (API key, or client address for failed
authentications), kept in the warehouse so that every API process behind a load balancer counts against the same
budget.

One table (`impact_api_rate_hits`) holds one row per admitted request. A caller is admitted while it has fewer rows
than the limit in the last window; the check and the insert are one transaction serialised per caller (a PostgreSQL
advisory lock on the caller; SQLite's write lock), so the limit is exact across processes. On PostgreSQL the
database's clock stamps the rows, so replicas on hosts with drifting clocks still agree on the window.

Not pyrate-limiter's SQL buckets (used for provider quotas, connectors/ratelimit.py): they keep one table per bucket
and count every row in it, so a bucket per caller would be a table per API key and per client address, created by
whoever sends a request.
"""

import math
import threading
import time
import zlib

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from impactin_pipelines.store.engine import is_sqlite
from impactin_pipelines.store.schema import impact_api_rate_hits as hits

WINDOW_S = 60.0
PURGE_EVERY_S = 60.0  # rows past the window are deleted this often (per process); a request only counts its window
_LOCK_NAMESPACE = zlib.crc32(b"impact_api_rate_hits") & 0x7FFFFFFF  # first key of the two-int advisory lock


def _lock_key(caller: str) -> int:
    """A signed 32-bit key for pg_advisory_xact_lock(int, int), the same in every process."""
    value = zlib.crc32(caller.encode())
    return value - (1 << 32) if value >= 1 << 31 else value


class KeyedRateLimiter:
    """`per_minute` requests per caller in any sliding minute, across every process using this warehouse."""

    def __init__(self, engine: Engine, per_minute: int, *, window_s: float = WINDOW_S) -> None:
        self.engine = engine
        self.per_minute = per_minute
        self.window_ms = int(window_s * 1000)
        self._last_purge = 0.0
        self._purge_lock = threading.Lock()

    def acquire(self, caller: str) -> float | None:
        """None if the request may go ahead (and it is counted), else the seconds to wait (for Retry-After).
        Blocking I/O: call it from a worker thread."""
        with self.engine.begin() as conn:
            now_ms = self._now_ms(conn, caller)
            count, oldest = conn.execute(
                sa.select(sa.func.count(), sa.func.min(hits.c.at_ms)).where(
                    hits.c.caller == caller, hits.c.at_ms > now_ms - self.window_ms
                )
            ).one()
            if count >= self.per_minute:
                return float(max(1, math.ceil((int(oldest) + self.window_ms - now_ms) / 1000)))
            conn.execute(sa.insert(hits).values(caller=caller, at_ms=now_ms))
        self._purge_now_and_then()
        return None

    def _now_ms(self, conn: Connection, caller: str) -> int:
        if is_sqlite(self.engine):  # BEGIN IMMEDIATE (store/engine.py) already holds the write lock
            return int(time.time() * 1000)
        # one round trip: the caller's lock, then the database's clock (read after the lock is granted)
        _, epoch_s = conn.execute(
            sa.select(
                sa.func.pg_advisory_xact_lock(_LOCK_NAMESPACE, _lock_key(caller)),
                sa.extract("epoch", sa.func.clock_timestamp()),
            )
        ).one()
        return int(float(epoch_s) * 1000)

    def _purge_now_and_then(self) -> None:
        """Delete rows past the window, every caller at once: one statement a minute instead of one per request."""
        now = time.monotonic()
        if now - self._last_purge < PURGE_EVERY_S or not self._purge_lock.acquire(blocking=False):
            return
        try:
            self._last_purge = now
            cutoff_ms = int(time.time() * 1000) - 2 * self.window_ms  # room for clock drift between hosts
            with self.engine.begin() as conn:
                conn.execute(sa.delete(hits).where(hits.c.at_ms <= cutoff_ms))
        finally:
            self._purge_lock.release()
