"""Who holds a claim, and whether its process is provably dead.

A claimant id names the host, the process (pid and start time), the kernel boot and the PID namespace the pid
belongs to, plus a token unique to the claim holder. A pid means something only inside its own PID namespace on
one boot of one kernel: containers on one host may share its hostname (host networking) and its boot, but not its
PID namespace. So a claim is provably orphaned only when its claimant ran on this boot, in this PID namespace, and
its pid is gone or now belongs to a newer process; then a crashed run's rows come back at once. Every other claim
(another host, another container or namespace, an id in an older format, a system without /proc) waits out its
lease.
"""

import os
import re
import socket
import uuid
from dataclasses import dataclass
from functools import cache

_UNKNOWN = ""


def _stat_fields(path: str) -> list[str]:
    try:
        with open(path, encoding="ascii", errors="replace") as stat:
            return stat.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return []


def _start_time(fields: list[str]) -> str:
    """Start time in clock ticks since boot (Linux); '0' where /proc is absent."""
    return fields[19] if len(fields) > 19 else "0"


@cache
def _host() -> str:
    return socket.gethostname().replace("/", "_")


@cache
def _boot_id() -> str:
    """The kernel's random id of this boot, shared by every container on the host; '' where unavailable."""
    try:
        with open("/proc/sys/kernel/random/boot_id", encoding="ascii") as boot:
            return boot.read().strip().replace("/", "_")
    except OSError:
        return _UNKNOWN


def _pid_namespace() -> str:
    """Inode of this process's PID namespace (the namespace its pid is counted in); '' where unavailable."""
    try:
        match = re.fullmatch(r"pid:\[(\d+)\]", os.readlink("/proc/self/ns/pid"))
    except OSError:
        return _UNKNOWN
    return match.group(1) if match else _UNKNOWN


def _proc_shows_our_namespace() -> bool:
    """/proc was mounted for our PID namespace, so /proc/<pid> names the process `pid` names for us."""
    try:
        return os.readlink("/proc/self") == str(os.getpid())
    except OSError:
        return False


@dataclass(frozen=True)
class Claimant:
    host: str
    pid: int
    started: str
    boot: str  # '' when unknown (an id in the older four-part format, or no /proc)
    pid_ns: str  # '' when unknown
    token: str

    @classmethod
    def new(cls) -> "Claimant":
        started = _start_time(_stat_fields("/proc/self/stat"))
        return cls(_host(), os.getpid(), started, _boot_id(), _pid_namespace(), uuid.uuid4().hex[:12])

    @classmethod
    def parse(cls, text: str) -> "Claimant | None":
        """`host/pid/started/boot/pidns/token`; the older `host/pid/started/token` parses with boot and
        namespace unknown (never provably dead). Anything else is None."""
        parts = text.split("/")
        if len(parts) == 4:
            parts = [*parts[:3], _UNKNOWN, _UNKNOWN, parts[3]]
        if len(parts) != 6 or not parts[1].isdigit():
            return None
        return cls(parts[0], int(parts[1]), parts[2], parts[3], parts[4], parts[5])

    def __str__(self) -> str:
        return f"{self.host}/{self.pid}/{self.started}/{self.boot}/{self.pid_ns}/{self.token}"

    def shares_our_pid_namespace(self) -> bool:
        """Its pid can be checked here: same boot, same PID namespace, and a /proc that shows that namespace."""
        boot, pid_ns = _boot_id(), _pid_namespace()
        return (
            _UNKNOWN not in (self.boot, self.pid_ns, boot, pid_ns)
            and (self.boot, self.pid_ns) == (boot, pid_ns)
            and _proc_shows_our_namespace()
        )


def is_provably_dead(claimed_by: str) -> bool:
    """True only for a claimant of this boot and PID namespace whose process is gone or was replaced."""
    claimant = Claimant.parse(claimed_by)
    if claimant is None or claimant.started == "0" or not claimant.shares_our_pid_namespace():
        return False
    try:
        os.kill(claimant.pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        pass
    fields = _stat_fields(f"/proc/{claimant.pid}/stat")
    if len(fields) <= 19:
        return True
    return fields[0] in ("Z", "X") or fields[19] != claimant.started
