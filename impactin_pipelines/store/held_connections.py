"""Connections the threads of a delivery run keep for the run, one per thread, in autocommit.

Each thread's statements are single statements, atomic by themselves: the drain loop's claims, the settlement
writer's batches, a send thread's confirms (a retry, or a claim older than half a lease) and a quota's slot
(Goodera). Through the pool each would also cost a checkout, a pre-ping round trip, BEGIN and COMMIT: four round
trips and much of its CPU. A thread's own connection, in autocommit, makes each one round trip, and psycopg
prepares the statements on it after a few uses.

A connection idle for longer than `IDLE_PING_S` goes back to the pool and the next use checks one out again, with
the pool's pre-ping, so a connection the server dropped while idle is never used; one that broke in use is
discarded (and its error raised to the caller).
"""

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import DBAPIError

IDLE_PING_S = 1.0
_this_thread = threading.local()  # `.held`: the HeldConnections this thread last kept a connection of


@dataclass
class _Held:
    conn: Connection
    used_at: float


class HeldConnections:
    """Per-thread autocommit connections of one engine; `close()` returns them all to the pool."""

    def __init__(self, engine: Engine, *, idle_ping_s: float = IDLE_PING_S) -> None:
        self.engine = engine
        self.idle_ping_s = idle_ping_s
        self._local = threading.local()
        self._lock = threading.Lock()
        self._all: list[_Held] = []
        self._closed = False

    def bind_this_thread(self) -> None:
        """Make these the held connections `of_this_thread` finds on the calling thread (a send thread, as it
        starts): lower layers then use a connection of its own even before its first statement of the run."""
        _this_thread.held = self

    @staticmethod
    def of_this_thread(engine: Engine) -> "HeldConnections | None":
        """The held connections (still open) this thread is bound to, or keeps a connection of, for `engine`: a
        delivery run's send thread, for statements of lower layers on its path (a quota's slot), which would
        otherwise check out a pooled connection, with a pre-ping, per row. None for any other thread."""
        held: HeldConnections | None = getattr(_this_thread, "held", None)
        if held is None or held.engine is not engine or held._closed:
            return None
        return held

    @contextmanager
    def connection(self) -> Iterator[Connection]:
        """This thread's connection, in autocommit: every statement commits by itself."""
        held: _Held | None = getattr(self._local, "held", None)
        if held is not None and time.monotonic() - held.used_at > self.idle_ping_s:
            self._drop(held)
            held = None
        if held is None:
            held = self._check_out()
        try:
            yield held.conn
        except DBAPIError as exc:
            if exc.connection_invalidated:
                self._drop(held)
            raise
        finally:
            held.used_at = time.monotonic()

    def _check_out(self) -> _Held:
        with self._lock:
            if self._closed:
                raise RuntimeError("these held connections were closed")
        conn = self.engine.connect().execution_options(isolation_level="AUTOCOMMIT")
        held = _Held(conn, time.monotonic())
        with self._lock:
            self._all.append(held)
        self._local.held = held
        _this_thread.held = self
        return held

    def _drop(self, held: _Held) -> None:
        with self._lock:
            if held in self._all:
                self._all.remove(held)
        if getattr(self._local, "held", None) is held:
            self._local.held = None
        held.conn.close()

    def close(self) -> None:
        """Return every thread's connection to the pool (call when the threads are done)."""
        with self._lock:
            self._closed = True
            held, self._all = self._all, []
        for h in held:
            h.conn.close()

    def __enter__(self) -> "HeldConnections":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
