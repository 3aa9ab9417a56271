"""Provider rate limits shared by every process and run on the machine or deployment.

A quota belongs to the provider credential, not to a connector object (a counter per client object, with an object
per request, would limit nothing). The bucket lives where every sender sees it: a SQLite file in the state folder
(`ratelimit.db`) for the embedded default, or the PostgreSQL warehouse in production. One bucket per (provider,
credential hash): a row holding when its next request may leave (`SlotStore`), taken by one conditional upsert,
so a slot costs the same whatever the quota.

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
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from impactin_pipelines.connectors.retry import parse_retry_after
from impactin_pipelines.domain.errors import ConfigError
from impactin_pipelines.settings import state_dir
from impactin_pipelines.store.engine import is_sqlite, make_engine
from impactin_pipelines.store.held_connections import HeldConnections

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
BUSY_RETRY_S = 0.005  # a slot was free, but another sender took it first: look again this soon


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


def _create_once(engine: Engine, table: sa.Table, ready: threading.Event, lock: threading.Lock) -> None:
    """Create a quota table on first use in this process (a no-op once `ready` is set)."""
    if ready.is_set():
        return
    with lock:
        if ready.is_set():
            return
        with engine.begin() as conn:
            if not is_sqlite(engine):  # concurrent CREATE ... IF NOT EXISTS can still collide
                conn.execute(sa.select(sa.func.pg_advisory_xact_lock(zlib.crc32(table.name.encode()))))
            table.create(conn, checkfirst=True)
        ready.set()


# -- the shared pause ----------------------------------------------------------------------------------------
_pauses = sa.Table(
    "impactin_rate_limit_pauses",
    sa.MetaData(),
    sa.Column("limit_key", sa.Text, primary_key=True),
    sa.Column("until_epoch", sa.Float, nullable=False),
)


class PauseStore:
    """`until` per key, only ever moved forward. Kept beside the bucket (same file or same database), created on
    first use.

    Reads are cached for `cache_s`, for every key at once: one query returns the pauses still running (few, if
    any), so a process sending for fifty credentials reads the table twice a second, not fifty times. A pause this
    process records is seen at once, one another process records within `cache_s`. Requests sent in between still
    take their slot from the shared bucket; at worst they meet the provider's own 429, which the retry policy
    handles."""

    def __init__(self, engine: Engine, cache_s: float = PAUSE_CACHE_S) -> None:
        self.engine = engine
        self.cache_s = cache_s
        self._ready = threading.Event()
        self._lock = threading.Lock()
        self._known: dict[str, float] = {}  # key -> until_epoch, for the pauses running when last read
        self._read_at = -math.inf  # monotonic time of the last read

    def remaining_s(self, key: str, now: float | None = None) -> float:
        if time.monotonic() - self._read_at >= self.cache_s:
            self._refresh()
        with self._lock:
            until = self._known.get(key, 0.0)
        return max(0.0, until - (now if now is not None else time.time()))

    def _refresh(self) -> None:
        _create_once(self.engine, _pauses, self._ready, self._lock)
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
        _create_once(self.engine, _pauses, self._ready, self._lock)
        from sqlalchemy.dialects import postgresql, sqlite

        insert = sqlite.insert if is_sqlite(self.engine) else postgresql.insert
        stmt = insert(_pauses).values(limit_key=key, until_epoch=until_epoch)
        greater = sa.func.max if is_sqlite(self.engine) else sa.func.greatest  # SQLite's max() of two is greatest()
        later = greater(stmt.excluded.until_epoch, _pauses.c.until_epoch)
        with self.engine.begin() as conn:
            conn.execute(stmt.on_conflict_do_update(index_elements=["limit_key"], set_={"until_epoch": later}))
        self._remember(key, until_epoch)


# -- the shared bucket ----------------------------------------------------------------------------------------
_slots = sa.Table(
    "impactin_rate_limit_slots",
    sa.MetaData(),
    sa.Column("limit_key", sa.Text, primary_key=True),
    sa.Column("next_at", sa.Float, nullable=False),  # Unix time: the earliest the next request may leave
)
# Take the slot if its time has come (and move it one spacing past now); nothing is returned when it has not.
# One statement: the row lock (PostgreSQL) or the write lock (SQLite) makes check-and-take exact across processes.
_TAKE = """
INSERT INTO impactin_rate_limit_slots AS s (limit_key, next_at) VALUES (:key, {now} + :spacing)
ON CONFLICT (limit_key) DO UPDATE SET next_at = excluded.next_at WHERE s.next_at <= excluded.next_at - :spacing
RETURNING next_at
"""
_WAIT = "SELECT next_at - {now} FROM impactin_rate_limit_slots WHERE limit_key = :key"
_DATABASE_NOW = "extract(epoch FROM clock_timestamp())::float8"  # every host sees the database's clock


class SlotStore:
    """Each credential's quota as one row: when its next request may leave. A request takes the slot when that time
    has come, which moves it one spacing on; otherwise the row says how long to wait. One conditional upsert per
    request, whatever the quota (a log of recent requests would be counted on every request, and grows with the
    quota). Kept beside the pauses (same file or same database), created on first use.

    Requests at least one spacing apart are never more than `limit` in any window of `limit` spacings, so the
    spacing alone keeps the quota. On PostgreSQL the database's clock times every slot, so senders on hosts with
    drifting clocks agree; the embedded SQLite file is one machine's, on its clock."""

    def __init__(self, engine: Engine, clock: Callable[[], float] = time.time) -> None:
        self.engine = engine
        self.clock = clock
        self._sqlite = is_sqlite(engine)
        now = ":now" if self._sqlite else _DATABASE_NOW
        self._take, self._wait = sa.text(_TAKE.format(now=now)), sa.text(_WAIT.format(now=now))
        self._ready = threading.Event()
        self._lock = threading.Lock()

    def take(self, key: str, spacing_s: float) -> float:
        """0.0 when the slot is taken (send now), otherwise the seconds until it may be free (nothing taken)."""
        _create_once(self.engine, _slots, self._ready, self._lock)
        params: dict[str, object] = {"key": key, "spacing": spacing_s, "now": self.clock()}
        if self._sqlite:
            with self.engine.begin() as conn:  # BEGIN IMMEDIATE: the take and the wait under one write lock
                return self._take_on(conn, params)
        held = HeldConnections.of_this_thread(self.engine)
        if held is not None:  # a delivery run's send thread: its own connection, one round trip
            with held.connection() as conn:
                return self._take_on(conn, params)
        with self.engine.connect() as conn:
            return self._take_on(conn.execution_options(isolation_level="AUTOCOMMIT"), params)

    def _take_on(self, conn: Connection, params: dict[str, object]) -> float:
        if conn.execute(self._take, params).first() is not None:
            return 0.0
        wait_s = float(conn.execute(self._wait, params).scalar() or 0.0)
        return wait_s if wait_s > 0 else BUSY_RETRY_S


class SharedRateLimiter:
    """One credential's quota, as seen by every sender on the machine or deployment."""

    def __init__(
        self,
        key: str,
        rate: RateLimit,
        slots: SlotStore,
        pauses: PauseStore,
        *,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.key = key
        self.rate = rate
        self.slots = slots
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
        """The shared bucket's slot, if its time has come: 0.0 when it is ours, otherwise the wait until it may be."""
        return self.slots.take(self.key, self.rate.spacing_s)

    def observe(self, status: int, headers: Mapping[str, str]) -> float | None:
        """Record a pause for every sender when the response asks for one; returns its length."""
        pause = pause_requested_s(status, headers)
        if pause is not None and pause > 0:
            self.pauses.extend(self.key, time.time() + pause)
        return pause


_registry: dict[tuple[str, str, RateLimit], SharedRateLimiter] = {}
_registry_lock = threading.Lock()
_stores: dict[str, tuple[SlotStore, PauseStore]] = {}  # one per bucket location: one read serves every pause


def _location(engine: Engine) -> str:
    if is_sqlite(engine):
        return f"sqlite:{state_dir() / RATE_LIMIT_DB}"
    return engine.url.render_as_string(hide_password=True)


def shared_limiter(engine: Engine, provider: str, credential_key: str, rate: RateLimit) -> SharedRateLimiter:
    """The process-wide limiter for (provider, credential). Its bucket lives in the state folder when the
    warehouse is SQLite (embedded default), in the warehouse when it is PostgreSQL."""
    key = limit_key(provider, credential_key)
    location = _location(engine)
    with _registry_lock:
        found = _registry.get((location, key, rate))
        if found is None:
            slots, pauses = _stores_at(location, engine)
            found = _registry[(location, key, rate)] = SharedRateLimiter(key, rate, slots, pauses)
        return found


def _stores_at(location: str, engine: Engine) -> tuple[SlotStore, PauseStore]:
    """The slot and pause stores of a bucket location (under the registry lock): the warehouse's engine, or an
    engine of the state folder's SQLite file."""
    stores = _stores.get(location)
    if stores is not None and (is_sqlite(engine) or stores[0].engine is engine):
        return stores
    if is_sqlite(engine):
        path: Path = state_dir() / RATE_LIMIT_DB
        path.parent.mkdir(parents=True, exist_ok=True)
        engine = make_engine(f"sqlite:///{path}")
    stores = _stores[location] = (SlotStore(engine), PauseStore(engine))
    return stores


def close_shared_limiters() -> None:
    """For tests and benchmarks that change the state folder: drop every cached bucket."""
    with _registry_lock:
        _registry.clear()
        for slots, _pauses_store in _stores.values():
            if is_sqlite(slots.engine):  # ours; a PostgreSQL store uses the warehouse's engine
                slots.engine.dispose()
        _stores.clear()
