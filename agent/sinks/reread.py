"""What one SIGHUP cost dnsmasq: its re-read of the hosts files, read from /proc.

dnsmasq is single-threaded, and a signal wakes it: from the SIGHUP until it
sleeps in poll() again it is re-reading (and answering nothing). So the first
time /proc says it sleeps after the signal, the re-read is over, and its CPU
time across that span is what the re-read cost. /proc/PID/schedstat gives
that time in nanoseconds; where the kernel has no schedstat, utime+stime from
/proc/PID/stat in clock ticks (10 ms: coarse at small tables, still right on
average).

CPU time, not wall time, is what paces reloads (coalesce.py): on a busy
machine dnsmasq also waits for a CPU, and that wait is the machine's, not a
cost of the table's size. Both are kept for status.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

PROC = Path("/proc")
LIMIT_S = 10.0  # 100,000 names on a loaded 2-CPU machine took 2.8 s
_TICK_S = 1 / os.sysconf("SC_CLK_TCK")
_FIRST_POLL_S = 0.0002
_MAX_POLL_S = 0.01
_AWAKE = frozenset("RDW")  # running, in uninterruptible I/O, paging: not done yet


@dataclass(frozen=True, slots=True)
class Reread:
    cpu_s: float  # dnsmasq's CPU time from the signal until it slept again
    wall_s: float
    complete: bool  # False: it was still busy at LIMIT_S, or its /proc vanished


def _stat_fields(pid: int, proc: Path) -> list[str]:
    # After the parenthesised comm (which may hold spaces): state is field 3.
    return (proc / str(pid) / "stat").read_text().rpartition(")")[2].split()


def cpu_time(pid: int, proc: Path = PROC) -> float | None:
    """Seconds of CPU ``pid`` has used so far; None if it cannot be read."""
    try:
        return int((proc / str(pid) / "schedstat").read_text().split()[0]) / 1e9
    except (OSError, ValueError, IndexError):
        pass
    try:
        fields = _stat_fields(pid, proc)
        return (int(fields[11]) + int(fields[12])) * _TICK_S  # utime, stime
    except (OSError, ValueError, IndexError):
        return None


def awake(pid: int, proc: Path = PROC) -> bool | None:
    """True while ``pid`` runs or waits for a CPU or a disk; None if it is gone."""
    try:
        fields = _stat_fields(pid, proc)
    except OSError:
        return None
    return bool(fields) and fields[0] in _AWAKE


def wait_reread(pid: int, cpu_before: float, signalled_at: float, *, proc: Path = PROC,
                clock: Callable[[], float] = time.monotonic,
                sleep: Callable[[float], None] = time.sleep,
                limit_s: float = LIMIT_S) -> Reread:
    """Block until dnsmasq ``pid``, signalled at ``signalled_at`` (``clock``) with
    ``cpu_before`` seconds of CPU used, sleeps again; what the re-read cost.

    Polled, in the sink's thread, only for the span of one re-read: the poll
    interval grows with the time waited, so a 10 ms re-read is seen within
    ~1 ms and a 300 ms one costs some 70 looks at /proc."""
    interval = _FIRST_POLL_S
    complete = False
    while clock() - signalled_at < limit_s:
        state = awake(pid, proc)
        if state is None:
            break
        if not state:
            complete = True
            break
        sleep(interval)
        interval = min(_MAX_POLL_S, max(_FIRST_POLL_S, (clock() - signalled_at) / 10))
    wall = clock() - signalled_at
    after = cpu_time(pid, proc)
    return Reread(max(0.0, after - cpu_before) if after is not None else 0.0, wall,
                  complete and after is not None)


SHORT_LIMIT_S = 0.25  # the least a watch waits once re-reads are known to be quick
WATCH_FACTOR = 4.0  # a re-read this many times slower than the last one is not one
CHARGE_FACTOR = 2.0


class RereadHistory:
    """What the last re-reads say about the next: how long to watch it, what to charge.

    A dnsmasq that never sleeps (answering a local user's query flood) would
    otherwise be watched for LIMIT_S after every signal, the sink thread (and so
    the sync) held as long, and its query-answering CPU charged to the reload
    budget as re-reading: names held back for minutes. Bounded by the last
    re-read seen to end, neither happens; that flood costs the names nothing more
    than a CPU-bound dnsmasq costs them anyway.
    """

    def __init__(self) -> None:
        self.last_cpu_s: float | None = None  # the last complete re-read's
        self.last_wall_s: float | None = None
        self.incomplete = 0  # re-reads not seen to end, in a row

    def watch_limit(self) -> float:
        """How long to watch the next re-read (and hold the next signal for it)."""
        if self.last_wall_s is None:
            return LIMIT_S if self.incomplete == 0 else SHORT_LIMIT_S
        return min(LIMIT_S, max(SHORT_LIMIT_S, WATCH_FACTOR * self.last_wall_s))

    def charge(self, reread: Reread) -> float:
        """Seconds of re-reading to charge the budget for ``reread`` (and learn from it)."""
        if reread.complete:
            self.last_cpu_s, self.last_wall_s, self.incomplete = reread.cpu_s, reread.wall_s, 0
            return reread.cpu_s
        self.incomplete += 1
        # Busy past the watch: only what a re-read costs is the re-read's.
        return min(reread.cpu_s, CHARGE_FACTOR * (self.last_cpu_s or 0.0))
