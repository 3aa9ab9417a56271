"""Provider rate limits shared by every process and run on the machine or deployment (pyrate-limiter 4).

A quota belongs to the provider credential, not to a connector object (a counter per client object, with an object
per request, would limit nothing). The bucket lives where every sender sees it:
a SQLite file in the state folder (`ratelimit.db`, with pyrate-limiter's file lock, exact across processes) for the
embedded default, or the PostgreSQL warehouse in production. One bucket per (provider, credential hash).

Requests are spread evenly (at most one per `window / limit`), with a small safety margin on the window: a provider
counts arrivals on its own clock, and a burst of a whole window at its edges would turn network jitter into 429s.

When the provider itself says stop (`429` with `Retry-After`, or `X-RateLimit-Remaining: 0` with a reset), a shared
pause is recorded next to the bucket and every sender for that key waits it out. Waiting happens before a request
is made, so it never costs a delivery attempt.

Admission never has to sleep: `try_acquire()` takes a slot or says how long until one may be free (a provider pause
included), so a caller with other work (the delivery run, with other companies' rows) defers the request and does
that work meanwhile. `admit()` adds the caller's patience (past it: `RateLimitWait`), and `acquire()` is the blocking
form for callers with nothing else to do, built on the same two.
"""

import math
import re
import threading
import time
import zlib
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from pyrate_limiter import AbstractBucket, Limiter, PostgresBucket, Rate, RateItem, SQLiteBucket
from pyrate_limiter.limiter import combined_lock
from sqlalchemy.engine import Engine

from impactin_pipelines.connectors.retry import parse_retry_after
from impactin_pipelines.domain.errors import ConfigError
from impactin_pipelines.settings import state_dir
from impactin_pipelines.store.engine import is_sqlite, make_engine

RATE_LIMIT_DB = "ratelimit.db"
_RATE = re.compile(r"^\s*(\d+)\s*/\s*(\d+(?:\.\d+)?)?\s*([a-z]+)\s*$", re.IGNORECASE)
_UNITS_S = {
    "ms": 0.001,
    "s": 1.0,
    "sec": 1.0,
    "second": 1.0,
    "seconds": 1.0,
    "m": 60.0,
    "min": 60.0,
    "minute": 60.0,
    "minutes": 60.0,
    "h": 3600.0,
    "hour": 3600.0,
    "hours": 3600.0,
}
_EPOCH_THRESHOLD_S = 1_000_000_000  # an X-RateLimit-Reset above this is a Unix time, below it a delay
_MAX_PAUSE_S = 3600.0  # a provider header asking for more is capped: the retry policy parks the row anyway
PAUSE_CACHE_S = 0.5  # how stale this process's view of another process's provider pause may be
BUSY_RETRY_S = 0.02  # another sender held the bucket's lock (or the bucket reported no wait): look again this soon
CLOCK_SYNC_S = 10.0  # how often a PostgreSQL bucket reads the database's clock again
LOCK_WAIT_S = 1.0  # the longest a slot check waits for the bucket's lock (held for one check-and-put at a time)


@dataclass(frozen=True)
class RateLimit:
    limit: int
    window_s: float
    margin_s: float = 0.0  # added to the window we enforce, never to the one we report

    @property
    def enforced_window_s(self) -> float:
        return self.window_s + self.margin_s

    @property
    def spacing_s(self) -> float:
        return self.enforced_window_s / self.limit

    @property
    def per_second(self) -> float:
        return self.limit / self.window_s

    def __str__(self) -> str:
        return f"{self.limit}/{self.window_s:g}s"


def default_margin_s(window_s: float) -> float:
    """2 % of the window, at least 150 ms: room for arrival jitter at the provider."""
    return max(0.15, 0.02 * window_s)


def parse_rate_limit(raw: str, *, name: str) -> RateLimit:
    """`100/minute`, `100/min`, `20/5s`, `1000/hour`, `5/second`, `50/1500ms`."""
    match = _RATE.match(raw or "")
    unit = match and _UNITS_S.get(match.group(3).lower())
    if not match or unit is None:
        raise ConfigError(
            f"{name}={raw!r} is not a rate: write it as <requests>/<period>, e.g. '100/minute' or '20/5s' "
            f"(units: {', '.join(sorted(set(_UNITS_S)))})"
        )
    limit = int(match.group(1))
    window_s = float(match.group(2) or 1) * unit
    if limit < 1:
        raise ConfigError(f"{name}={raw!r}: the number of requests must be at least 1")
    if window_s < 0.05:
        raise ConfigError(f"{name}={raw!r}: the period must be at least 50 ms")
    return RateLimit(limit, window_s, default_margin_s(window_s))


def limit_key(provider: str, credential_key: str) -> str:
    """Bucket name: the provider and a short hash of the credential (never the credential itself)."""
    safe_provider = re.sub(r"[^a-z0-9]", "_", provider.lower())
    return f"{safe_provider}_{credential_key[:16]}"


class RateLimitWait(Exception):
    """The shared quota had no room within the wait we allow; nothing was sent."""

    def __init__(self, message: str, retry_after_s: float) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


def reset_after_s(headers: Mapping[str, str], now: float | None = None) -> float | None:
    """When the provider's window frees up: Retry-After first, then X-RateLimit-Reset (a delay, or a Unix time)."""
    retry_after = parse_retry_after(headers.get("Retry-After"))
    if retry_after is not None:
        return min(retry_after, _MAX_PAUSE_S)
    raw = headers.get("X-RateLimit-Reset")
    try:
        value = float(raw) if raw is not None else None
    except ValueError:
        return None
    if value is None or not math.isfinite(value) or value < 0:
        return None
    if value > _EPOCH_THRESHOLD_S:
        value -= now if now is not None else time.time()
    return min(max(0.0, value), _MAX_PAUSE_S)


def pause_requested_s(status: int, headers: Mapping[str, str]) -> float | None:
    """How long every sender should hold off after this response, or None if the provider did not ask."""
    remaining = headers.get("X-RateLimit-Remaining")
    exhausted = remaining is not None and remaining.strip() in ("0", "0.0")
    if status != 429 and not exhausted:
        return None
    return reset_after_s(headers)


# -- the shared pause ----------------------------------------------------------------------------------------
_pauses = sa.Table(
    "impactin_rate_limit_pauses",
    sa.MetaData(),
    sa.Column("limit_key", sa.Text, primary_key=True),
    sa.Column("until_epoch", sa.Float, nullable=False),
)


class PauseStore:
    """`until` per key, only ever moved forward. Kept beside the bucket (same file or same database), created on
    first use like pyrate-limiter's own bucket tables.

    Reads are cached for `cache_s`, for every key at once: one query returns the pauses still running (few, if
    any), so a process sending for fifty credentials reads the table twice a second, not fifty times. A pause this
    process records is seen at once, one another process records within `cache_s`. Requests sent in between still
    take their slot from the shared bucket; at worst they meet the provider's own 429, which the retry policy
    handles."""

    def __init__(self, engine: Engine, cache_s: float = PAUSE_CACHE_S) -> None:
        self.engine = engine
        self.cache_s = cache_s
        self._ready = False
        self._lock = threading.Lock()
        self._known: dict[str, float] = {}  # key -> until_epoch, for the pauses running when last read
        self._read_at = -math.inf  # monotonic time of the last read

    def _ensure(self) -> None:
        if self._ready:
            return
        with self._lock:
            if self._ready:
                return
            with self.engine.begin() as conn:
                if not is_sqlite(self.engine):  # concurrent CREATE ... IF NOT EXISTS can still collide
                    conn.execute(sa.select(sa.func.pg_advisory_xact_lock(zlib.crc32(_pauses.name.encode()))))
                _pauses.create(conn, checkfirst=True)
            self._ready = True

    def remaining_s(self, key: str, now: float | None = None) -> float:
        if time.monotonic() - self._read_at >= self.cache_s:
            self._refresh()
        with self._lock:
            until = self._known.get(key, 0.0)
        return max(0.0, until - (now if now is not None else time.time()))

    def _refresh(self) -> None:
        self._ensure()
        read_at, wall = time.monotonic(), time.time()
        with self.engine.connect() as conn:
            rows = conn.execute(
                sa.select(_pauses.c.limit_key, _pauses.c.until_epoch).where(_pauses.c.until_epoch > wall)
            )
            found = {key: float(until) for key, until in rows}
        with self._lock:
            for key, until in self._known.items():  # pauses only move forward (one recorded while we read)
                if until > found.get(key, 0.0) and until > wall:
                    found[key] = until
            self._known, self._read_at = found, read_at

    def _remember(self, key: str, until_epoch: float) -> None:
        with self._lock:
            self._known[key] = max(until_epoch, self._known.get(key, 0.0))

    def extend(self, key: str, until_epoch: float) -> None:
        self._ensure()
        from sqlalchemy.dialects import postgresql, sqlite

        insert = sqlite.insert if is_sqlite(self.engine) else postgresql.insert
        stmt = insert(_pauses).values(limit_key=key, until_epoch=until_epoch)
        greater = sa.func.max if is_sqlite(self.engine) else sa.func.greatest  # SQLite's max() of two is greatest()
        later = greater(stmt.excluded.until_epoch, _pauses.c.until_epoch)
        with self.engine.begin() as conn:
            conn.execute(stmt.on_conflict_do_update(index_elements=["limit_key"], set_={"until_epoch": later}))
        self._remember(key, until_epoch)


# -- buckets -------------------------------------------------------------------------------------------------
class _EnginePool:
    """The slice of `psycopg_pool.ConnectionPool` that PostgresBucket uses, served from the warehouse engine's
    own pool: no second pool, and the same connection options (search_path) as everything else."""

    closed = False

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    @contextmanager
    def connection(self) -> Iterator[Any]:
        import psycopg

        raw = self.engine.raw_connection()
        try:
            conn = raw.driver_connection
            assert isinstance(conn, psycopg.Connection)
            try:
                yield conn
            except BaseException:
                conn.rollback()
                raise
            if conn.info.transaction_status == psycopg.pq.TransactionStatus.INERROR:
                conn.rollback()  # the bucket swallowed LockNotAvailable: nothing to keep
            else:
                conn.commit()
        finally:
            raw.close()

    def close(self) -> None:
        return None  # the engine belongs to the warehouse


class _WarehouseBucket(PostgresBucket):
    """pyrate-limiter's PostgreSQL bucket on the database's clock, read once every `CLOCK_SYNC_S` and carried
    forward on this process's monotonic clock: every process stamps items on the same time base (the database's),
    without a clock query (a connection checkout and a round trip) before every slot."""

    def __init__(self, pool: Any, table: str, rates: list[Rate]) -> None:
        super().__init__(pool, table, rates)
        self._offset_ms: float | None = None
        self._synced_at = -math.inf
        self._clock_lock = threading.Lock()

    def now(self) -> int:
        mono = time.monotonic()
        with self._clock_lock:
            if self._offset_ms is None or mono - self._synced_at >= CLOCK_SYNC_S:
                before = time.monotonic()
                database_ms = super().now()
                after = time.monotonic()
                self._offset_ms = database_ms - (before + after) * 500  # against the middle of the round trip
                self._synced_at = mono = after
            return int(mono * 1000 + self._offset_ms)


def _rates(rate: RateLimit) -> list[Rate]:
    """At most one request per spacing, and at most `limit` per (margined) window."""
    spacing_ms = math.ceil(rate.enforced_window_s * 1000 / rate.limit)
    if rate.limit == 1:
        return [Rate(1, spacing_ms)]
    return [Rate(1, spacing_ms), Rate(rate.limit, spacing_ms * rate.limit)]  # whole spacings: never denser


class SharedRateLimiter:
    """One credential's quota, as seen by every sender on the machine or deployment."""

    def __init__(
        self,
        key: str,
        rate: RateLimit,
        limiter: Limiter,
        pauses: PauseStore,
        *,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.key = key
        self.rate = rate
        self.limiter = limiter
        self.pauses = pauses
        self.sleep = sleep

    def try_acquire(self) -> float:
        """Take a slot now if there is one: 0.0 when taken (send at once), otherwise the seconds until one may be
        free (a provider pause included). Never sleeps; nothing is taken when it returns more than 0."""
        return self._try()[0]

    def admit(self, max_wait_s: float, waited_s: float = 0.0) -> float:
        """`try_acquire`, for a caller that has already held its request back for `waited_s` and holds it at most
        `max_wait_s` in all: 0.0 (slot taken) or the seconds to hold it further. Raises RateLimitWait (nothing
        sent, nothing taken) when the quota or a provider pause would keep it past `max_wait_s`."""
        wait_s, paused = self._try()
        if wait_s > 0 and waited_s + wait_s > max_wait_s:
            if paused:
                message = f"the provider asked to pause {wait_s:.1f} s (over the {max_wait_s:g} s we wait)"
                raise RateLimitWait(message, wait_s)
            raise RateLimitWait(f"no room in the shared {self.rate} quota within {max_wait_s:g} s", self.rate.spacing_s)
        return wait_s

    def acquire(self, max_wait_s: float) -> float:
        """Block until this process may send one request; returns the seconds waited. Raises RateLimitWait
        (nothing sent) when the quota or a provider pause would keep us longer than `max_wait_s`."""
        started = time.monotonic()
        for _ in range(100_000):  # every round waits; the deadline ends the loop long before this
            waited = time.monotonic() - started
            wait_s = self.admit(max_wait_s, waited)
            if wait_s <= 0:
                return waited
            self.sleep(wait_s)
        raise RateLimitWait("rate limiter gave up waiting", self.rate.spacing_s)

    def _try(self) -> tuple[float, bool]:
        """(seconds until a slot may be free, whether that is a provider pause); (0.0, False): a slot was taken."""
        pause = self.pauses.remaining_s(self.key)
        if pause > 0:
            return pause, True
        wait_s = self._take_slot()
        if wait_s > 0:
            return wait_s, False
        pause = self.pauses.remaining_s(self.key)
        if pause > 0:  # a pause arrived while we took the slot: the slot is spent, the pause wins
            return pause, True
        return 0.0, False

    def _take_slot(self) -> float:
        """One check-and-put into the shared bucket, under the limiter's lock (with the SQLite bucket, a file lock
        shared by every process): 0.0 when the slot is ours, otherwise the bucket's own estimate of the wait.
        The item is stamped when it goes in, so the recorded time is the time the request leaves."""
        factory = self.limiter.bucket_factory
        try:
            with combined_lock(self.limiter.lock, blocking=True, timeout=LOCK_WAIT_S):
                item = factory.wrap_item(self.key, 1)
                assert isinstance(item, RateItem)  # our buckets are synchronous
                bucket = factory.get(item)
                assert isinstance(bucket, AbstractBucket)
                if bucket.put(item):
                    return 0.0
                wait_ms = bucket.waiting(item)
                assert isinstance(wait_ms, int)
        except TimeoutError:  # the lock stayed busy: another sender is taking a slot right now
            return BUSY_RETRY_S
        # PostgreSQL's bucket answers a contended table lock with "no" and no wait: look again shortly
        return max(BUSY_RETRY_S, wait_ms / 1000)

    def observe(self, status: int, headers: Mapping[str, str]) -> float | None:
        """Record a pause for every sender when the response asks for one; returns its length."""
        pause = pause_requested_s(status, headers)
        if pause is not None and pause > 0:
            self.pauses.extend(self.key, time.time() + pause)
        return pause


_registry: dict[tuple[str, str, RateLimit], SharedRateLimiter] = {}
_registry_lock = threading.Lock()
_opening: dict[tuple[str, str, RateLimit], threading.Lock] = {}  # one per limiter while it is being opened
_sqlite_opening = threading.Lock()
_pause_stores: dict[str, PauseStore] = {}  # one per bucket location: one read serves every credential's pause


def _location(engine: Engine) -> str:
    if is_sqlite(engine):
        return f"sqlite:{state_dir() / RATE_LIMIT_DB}"
    return engine.url.render_as_string(hide_password=True)


def shared_limiter(engine: Engine, provider: str, credential_key: str, rate: RateLimit) -> SharedRateLimiter:
    """The process-wide limiter for (provider, credential). Its bucket lives in the state folder when the
    warehouse is SQLite (embedded default), in the warehouse when it is PostgreSQL. Opening one creates its
    bucket table (a round trip or more each): different credentials open side by side, the same one once."""
    key = limit_key(provider, credential_key)
    registry_key = (_location(engine), key, rate)
    with _registry_lock:
        found = _registry.get(registry_key)
        if found is not None:
            return found
        opening = _opening.setdefault(registry_key, threading.Lock())
    with opening:
        with _registry_lock:
            found = _registry.get(registry_key)
            if found is not None:
                return found
        found = _open_limiter(engine, key, rate, registry_key[0])
        with _registry_lock:
            _registry[registry_key] = found
            _opening.pop(registry_key, None)
        return found


def _open_limiter(engine: Engine, key: str, rate: RateLimit, location: str) -> SharedRateLimiter:
    if is_sqlite(engine):
        path: Path = state_dir() / RATE_LIMIT_DB
        path.parent.mkdir(parents=True, exist_ok=True)
        with _sqlite_opening:  # one local file: its tables are created one at a time, as they always were
            bucket: AbstractBucket = SQLiteBucket.init_from_file(
                _rates(rate), table=f"ratelimit_{key}", db_path=str(path), use_file_lock=True
            )
        limiter = Limiter(bucket, buffer_ms=0)
        with _registry_lock:
            pauses = _pause_stores.get(location)
            if pauses is None:
                pauses = _pause_stores[location] = PauseStore(make_engine(f"sqlite:///{path}"))
    else:
        bucket = _WarehouseBucket(_EnginePool(engine), key, _rates(rate))
        limiter = Limiter(bucket, buffer_ms=1)  # lock contention can report no wait: never spin at 0
        with _registry_lock:
            pauses = _pause_stores.get(location)
            if pauses is None or pauses.engine is not engine:
                pauses = _pause_stores[location] = PauseStore(engine)
    return SharedRateLimiter(key, rate, limiter, pauses)


def close_shared_limiters() -> None:
    """For tests and benchmarks that change the state folder: drop every cached bucket."""
    with _registry_lock:
        for limiter in _registry.values():
            limiter.limiter.close()
        _registry.clear()
        for store in _pause_stores.values():
            if is_sqlite(store.engine):  # ours; a PostgreSQL store uses the warehouse's engine
                store.engine.dispose()
        _pause_stores.clear()
