"""Per-provider progress of long CLI work (delivered / total, rate, ETA), sampled from the warehouse by a thread.

On a terminal one status line (every provider, cut to the terminal's width) is redrawn in place every second, and
a line per provider is left at the end; the cursor stays on the status line, so a log line written meanwhile
starts after it and is never overdrawn. Otherwise a plain line per provider is
written when it changed, at most every `plain_every` seconds, and once at the end if any was written (work shorter
than that stays quiet: the summary says it all); with IMPACTIN_LOG_FORMAT=json those lines are JSON records like
every other stderr line (logger `impactin.progress`). The work being watched is
not touched: the sampler reads the warehouse (`store.progress`), so progress costs one query per interval.
"""

import logging
import os
import sys
import threading
import time
from collections.abc import Callable, Mapping
from types import TracebackType
from typing import TextIO

from impactin_pipelines.observability import JsonLineFormatter, log_format
from impactin_pipelines.store.progress import ProviderProgress

Sample = Callable[[], Mapping[str, ProviderProgress]]


def _duration(seconds: float) -> str:
    whole = round(seconds)
    if whole >= 3600:
        return f"{whole // 3600}h{whole % 3600 // 60:02d}m"
    if whole >= 60:
        return f"{whole // 60}m{whole % 60:02d}s"
    return f"{whole}s"


def _rate_and_eta(progress: ProviderProgress, elapsed: float) -> tuple[float, str]:
    rate = progress.done / elapsed if elapsed > 0 else 0.0
    if progress.remaining == 0:
        return rate, "done"
    return rate, f"ETA {_duration(progress.remaining / rate)}" if rate > 0 else "ETA -"


def progress_line(provider: str, progress: ProviderProgress, elapsed: float) -> str:
    """`benevity  120/300 (40%)  118 delivered  35.2/s  ETA 5s`."""
    total = progress.total
    share = f" ({progress.done * 100 // total}%)" if total else ""
    rate, eta = _rate_and_eta(progress, elapsed)
    return f"{provider:<10} {progress.done}/{total}{share}  {progress.delivered} delivered  {rate:.1f}/s  {eta}"


def status_line(sample: Mapping[str, ProviderProgress], elapsed: float) -> str:
    """`benevity 120/300 35.2/s ETA 5s | goodera 8/8 done`: every provider on one line."""
    parts = []
    for provider, progress in sample.items():
        rate, eta = _rate_and_eta(progress, elapsed)
        parts.append(f"{provider} {progress.done}/{progress.total} {rate:.1f}/s {eta}")
    return " | ".join(parts)


class Progress:
    """Context manager: samples every `interval` seconds while the block runs, and once more at its end."""

    def __init__(
        self,
        sample: Sample,
        *,
        stream: TextIO | None = None,
        interval: float = 1.0,
        plain_every: float = 10.0,
        terminal: bool | None = None,
    ) -> None:
        self._sample = sample
        self._stream = stream or sys.stderr
        self._terminal = self._stream.isatty() if terminal is None else terminal
        self._interval = interval
        self._plain_every = plain_every
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="impactin-progress", daemon=True)
        self._started = time.monotonic()
        self._last_plain: dict[str, ProviderProgress] = {}
        self._last_plain_at = 0.0
        self._json = log_format() == "json"

    def __enter__(self) -> "Progress":
        self._started = time.monotonic()
        self._thread.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self._stop.set()
        self._thread.join()
        self._show(final=True)

    def _loop(self) -> None:
        while not self._stop.wait(self._interval):
            self._show(final=False)

    def _show(self, *, final: bool) -> None:
        try:
            sample = dict(sorted(self._sample().items()))
        except Exception as exc:  # progress is a courtesy: a failed read must not stop the work
            sample = {}
            if final:
                self._stream.write(self._plain(f"unavailable: {type(exc).__name__}") + "\n")
        elapsed = time.monotonic() - self._started
        shown = {p: s for p, s in sample.items() if s.total}
        lines = [progress_line(p, s, elapsed) for p, s in shown.items()]
        if self._terminal:
            self._redraw(status_line(shown, elapsed), lines, final=final)
        elif lines and ((final and self._last_plain) or elapsed - self._last_plain_at >= self._plain_every):
            changed = {p: s for p, s in sample.items() if s.total and self._last_plain.get(p) != s}
            for provider, progress in changed.items():
                self._stream.write(self._plain(progress_line(provider, progress, elapsed)) + "\n")
            self._last_plain.update(changed)
            self._last_plain_at = elapsed
        self._stream.flush()

    def _plain(self, line: str) -> str:
        """A progress line off a terminal: text, or a JSON record when stderr carries JSON logs."""
        if self._json:
            record = logging.LogRecord("impactin.progress", logging.INFO, __file__, 0, line, None, None)
            return JsonLineFormatter().format(record)
        return f"progress: {line}"

    def _redraw(self, status: str, lines: list[str], *, final: bool) -> None:
        if final:
            self._stream.write("\r\x1b[2K" + "".join(f"{line}\n" for line in lines))
        elif status:
            self._stream.write("\r\x1b[2K" + status[: self._width() - 1])  # a wrapped line cannot be redrawn

    def _width(self) -> int:
        try:
            return os.get_terminal_size(self._stream.fileno()).columns
        except (OSError, ValueError, AttributeError):
            return 80
