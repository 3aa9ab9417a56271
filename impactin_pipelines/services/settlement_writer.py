"""A delivery run's settlements, written in batches by a thread of their own.

A send thread that has its answer hands the row's recording over and goes on to its next row: the write no longer
sits between two of its requests, and one transaction (one commit, one round trip) covers every row that finished
while the previous batch was being written (or within `linger_s` of the first).

The queue is bounded (`max_waiting`): a writer that falls behind makes the send threads wait. (The delivery run
bounds the rows sent and not yet written, in flight or queued here, to twice its concurrency, as they are what a crash
leaves to be sent again.)
"""

import queue
import threading
import time
from concurrent.futures import Future

from impactin_pipelines.store.outbox import Outbox, Recording

MAX_BATCH = 64  # recordings per transaction
LINGER_S = 0.0  # after the first recording of a batch, how long to wait for more (a batch is what queued meanwhile)
RETRIED_SQLSTATES = frozenset({"40P01", "40001"})  # deadlock, serialization failure: nothing was written
RETRIES = 3

Written = tuple[int, bool]  # the row's attempt count (-1 when not applied), whether the settlement was applied
_STOP = object()


class SettlementWriter:
    """Writes recordings in batches (`Outbox.record_many`) on one thread, from `start()` (or entering it) to
    `close()` (or leaving it), which writes what is queued first. `submit` answers with a future of the row's
    `Written`, or of the error that kept it from being written."""

    def __init__(
        self,
        outbox: Outbox,
        *,
        max_batch: int = MAX_BATCH,
        max_waiting: int = MAX_BATCH,
        linger_s: float = LINGER_S,
        name: str = "impactin-settle",
    ) -> None:
        self.outbox = outbox
        self.max_batch = max_batch
        self.linger_s = linger_s
        self._queue: queue.Queue[tuple[Recording, Future[Written]] | object] = queue.Queue(maxsize=max_waiting)
        self._closed = False
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self.batches = 0  # transactions written

    def start(self) -> "SettlementWriter":
        self._thread.start()
        return self

    def submit(self, recording: Recording) -> Future[Written]:
        """Queue a recording (waits while `max_waiting` are queued)."""
        if self._closed or not self._thread.is_alive():
            raise RuntimeError("this settlement writer is not running")
        written: Future[Written] = Future()
        self._queue.put((recording, written))
        return written

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._thread.is_alive():
            self._queue.put(_STOP)
            self._thread.join()

    def __enter__(self) -> "SettlementWriter":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _run(self) -> None:
        while True:
            batch, stop = self._next_batch()
            if batch:
                self._write(batch)
            if stop:
                return

    def _next_batch(self) -> tuple[list[tuple[Recording, Future[Written]]], bool]:
        """The next recordings to write, and whether the writer was closed after them."""
        first = self._queue.get()
        if first is _STOP:
            return [], True
        batch = [first]
        deadline = time.monotonic() + self.linger_s
        while len(batch) < self.max_batch:
            try:
                item = self._queue.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                break
            if item is _STOP:
                return batch, True  # type: ignore[return-value]
            batch.append(item)
        return batch, False  # type: ignore[return-value]

    def _write(self, batch: list[tuple[Recording, Future[Written]]]) -> None:
        recordings = [recording for recording, _ in batch]
        for attempt in range(RETRIES + 1):
            try:
                results = self.outbox.record_many(recordings)
                break
            except Exception as exc:  # a deadlock rolled the whole batch back: write it again
                if _sqlstate(exc) in RETRIED_SQLSTATES and attempt < RETRIES:
                    continue
                self._fail(batch, exc)
                return
        self.batches += 1
        for (_, written), result in zip(batch, results, strict=True):
            if isinstance(result, Exception):
                written.set_exception(result)
            else:
                written.set_result(result)

    @staticmethod
    def _fail(batch: list[tuple[Recording, Future[Written]]], exc: Exception) -> None:
        for _, written in batch:
            written.set_exception(exc)


def _sqlstate(exc: Exception) -> str | None:
    """The SQLSTATE of a database error, raised by the driver itself or wrapped by SQLAlchemy."""
    return getattr(exc, "sqlstate", None) or getattr(getattr(exc, "orig", None), "sqlstate", None)
