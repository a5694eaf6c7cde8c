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
_AWAKE = frozenset((b"R", b"D", b"W"))  # running, in uninterruptible I/O, paging: not done yet


@dataclass(frozen=True, slots=True)
class Reread:
    cpu_s: float  # dnsmasq's CPU time from the signal until it slept again
    wall_s: float
    complete: bool  # False: it was still busy at LIMIT_S, or its /proc vanished


def _read(pid: int, proc: Path, name: str) -> bytes:
    # A watch looks tens of times per re-read: a bare open+read, not pathlib's
    # read_text (half the cost, most of what is left is the kernel's).
    fd = os.open(f"{proc}/{pid}/{name}", os.O_RDONLY | os.O_CLOEXEC)
    try:
        return os.read(fd, 4096)
    finally:
        os.close(fd)


def _stat_fields(pid: int, proc: Path) -> list[bytes]:
    # After the parenthesised comm (which may hold spaces): state is field 3.
    return _read(pid, proc, "stat").rpartition(b")")[2].split()


def cpu_time(pid: int, proc: Path = PROC) -> float | None:
    """Seconds of CPU ``pid`` has used so far; None if it cannot be read."""
    try:
        return int(_read(pid, proc, "schedstat").split()[0]) / 1e9
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
WATCH_FACTOR = 4.0  # a re-read this many times slower than expected is not one
CHARGE_FACTOR = 2.0
UNKNOWN_CHARGE_S = 1.0  # the most charged for a re-read when none was ever seen to end


class RereadHistory:
    """What the last re-read seen to end says about the next: how long to watch it
    (and hold the next signal for it), and what to charge the reload budget.

    A dnsmasq that never sleeps (answering a local user's query flood) would
    otherwise be watched LIMIT_S after every signal and its query-answering CPU
    charged as re-reading: names held back for minutes. So an unfinished watch is
    charged at most twice what the re-read was expected to cost. Expected: the
    last complete one scaled by the file's size (a table that grew tenfold
    re-reads tenfold longer). And each watch in a row that does not see the end
    waits twice as long as the one before, so a re-read that really got slower
    (a loaded machine) is seen to end again and learned from.
    """

    def __init__(self) -> None:
        self.last: Reread | None = None  # the last complete re-read
        self.last_size = 0  # the size of the file it re-read
        self.incomplete = 0  # watches in a row that did not see the end

    def _expected(self, size: int) -> tuple[float, float] | None:
        """(CPU, wall) seconds a re-read of ``size`` bytes should take, if known."""
        if self.last is None:
            return None
        scale = max(size, 1) / max(self.last_size, 1)
        return self.last.cpu_s * scale, self.last.wall_s * scale

    def watch_limit(self, size: int) -> float:
        stretch = 2.0 ** min(self.incomplete, 16)
        expected = self._expected(size)
        if expected is None:
            return LIMIT_S if self.incomplete == 0 else min(LIMIT_S, SHORT_LIMIT_S * stretch)
        return min(LIMIT_S, max(SHORT_LIMIT_S, WATCH_FACTOR * expected[1] * stretch))

    def charge(self, reread: Reread, size: int) -> float:
        """Seconds of re-reading to charge for ``reread`` of ``size`` bytes (and learn)."""
        if reread.complete:
            self.last, self.last_size, self.incomplete = reread, size, 0
            return reread.cpu_s
        self.incomplete += 1
        expected = self._expected(size)
        cap = UNKNOWN_CHARGE_S if expected is None else CHARGE_FACTOR * expected[0]
        return min(reread.cpu_s, cap)
