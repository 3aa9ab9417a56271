"""Who holds a claim, and whether it is provably dead.

A claimant id names host, pid and the process start time. On the same host a dead pid (or a pid reused by a
newer process) proves the claim is orphaned, so a crashed run's rows come back at once instead of after the
lease; claims from other hosts fall back to the lease.
"""

import os
import socket
import uuid
from dataclasses import dataclass
from functools import cache


def _stat_fields(pid: int) -> list[str]:
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as stat:
            return stat.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return []


def _process_start(pid: int) -> str:
    """Start time in clock ticks since boot (Linux); '0' where /proc is absent."""
    fields = _stat_fields(pid)
    return fields[19] if len(fields) > 19 else "0"


@cache
def _host() -> str:
    return socket.gethostname().replace("/", "_")


@dataclass(frozen=True)
class Claimant:
    host: str
    pid: int
    started: str
    token: str

    @classmethod
    def new(cls) -> "Claimant":
        pid = os.getpid()
        return cls(_host(), pid, _process_start(pid), uuid.uuid4().hex[:12])

    @classmethod
    def parse(cls, text: str) -> "Claimant | None":
        parts = text.split("/")
        if len(parts) != 4 or not parts[1].isdigit():
            return None
        return cls(parts[0], int(parts[1]), parts[2], parts[3])

    def __str__(self) -> str:
        return f"{self.host}/{self.pid}/{self.started}/{self.token}"


def is_provably_dead(claimed_by: str) -> bool:
    claimant = Claimant.parse(claimed_by)
    if claimant is None or claimant.host != _host() or claimant.started == "0":
        return False
    try:
        os.kill(claimant.pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        pass
    fields = _stat_fields(claimant.pid)
    if len(fields) <= 19:
        return True
    return fields[0] in ("Z", "X") or fields[19] != claimant.started
