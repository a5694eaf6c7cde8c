"""Processes and mounts as /proc shows them: the one place the harness reads /proc.

Stdlib only (libvirt's reaper runs it as a plain script after pytest died).
Every reader tolerates a process that exits under it: a vanished pid reads as
"" / [] / None, never as an exception, because teardown code walks /proc
while the processes it stops are going away.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import subprocess
import sys
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .wait import until

_PR_SET_PDEATHSIG = 1

Pid = int | str  # "self" or a number


def terminate(proc: subprocess.Popen[Any] | None, timeout: float = 5.0) -> int | None:
    """Stop ``proc`` (if still running) and reap it; returns its exit code."""
    if proc is None:
        return None
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return proc.returncode


def _read(path: str) -> str:
    try:
        with open(path, "rb") as f:
            return f.read().decode(errors="replace")
    except OSError:
        return ""


def state(pid: Pid) -> str | None:
    """The state letter of /proc/PID/stat (R, S, Z, ...); None if the pid is gone."""
    stat = _read(f"/proc/{pid}/stat")
    return stat.rsplit(")", 1)[1].split()[0] if stat else None


def process_gone(pid: int) -> bool:
    """True once ``pid`` has exited (a zombie waiting for a late reaper counts as gone)."""
    return state(pid) in (None, "Z", "X")


def comm(pid: Pid) -> str:
    """/proc/PID/comm without the newline; "" if the pid is gone."""
    return _read(f"/proc/{pid}/comm").strip()


def cmdline(pid: Pid) -> list[str]:
    """argv of ``pid``; [] if it is gone (or a kernel thread)."""
    return [a for a in _read(f"/proc/{pid}/cmdline").split("\0") if a]


def namespace(pid: Pid, kind: str) -> str | None:
    """The namespace link of ``pid`` (e.g. "net:[4026531840]"); None if it is gone."""
    try:
        return os.readlink(f"/proc/{pid}/ns/{kind}")
    except OSError:
        return None


def cgroups(pid: Pid) -> str:
    """/proc/PID/cgroup as text ("" if gone): one "id:controllers:path" line per hierarchy."""
    return _read(f"/proc/{pid}/cgroup")


def status(pid: Pid) -> dict[str, str]:
    """/proc/PID/status as a dict ({} if gone): "CapBnd", "NoNewPrivs", "Seccomp", ..."""
    return parse_status(_read(f"/proc/{pid}/status"))


def parse_status(text: str) -> dict[str, str]:
    """The text of a /proc/PID/status file (read here or inside a container) as a dict."""
    fields = {}
    for line in text.splitlines():
        key, _, value = line.partition(":")
        fields[key] = value.strip()
    return fields


def pids() -> Iterator[int]:
    """Every pid /proc lists right now."""
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            yield int(entry)


def children(pid: int) -> list[int]:
    """Direct children of ``pid``, over all its threads."""
    out: list[int] = []
    with contextlib.suppress(OSError):
        for task in Path(f"/proc/{pid}/task").iterdir():
            out += [int(c) for c in _read(str(task / "children")).split()]
    return out


def read_pid(path: Path) -> int | None:
    """The pid in a pid file; None if missing or not a number."""
    try:
        text = path.read_text().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


def kill_and_reap(targets: Iterable[int], timeout: float = 10.0) -> None:
    """SIGKILL ``targets`` (by pid, never by name) and wait until they are gone."""
    live = {p for p in targets if not process_gone(p)}
    for pid in live:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    until(lambda: all(process_gone(p) for p in live), timeout=timeout,
          what=f"processes {sorted(live)} to exit")


def die_with_parent() -> None:
    """preexec_fn: SIGTERM the child if the test process dies without tearing down."""
    ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)


@dataclass(frozen=True)
class Mount:
    """One line of /proc/PID/mountinfo."""

    point: str
    fstype: str
    options: frozenset[str]  # per-mount options: "ro"/"rw", "nosuid", ...

    @property
    def read_only(self) -> bool:
        return "ro" in self.options


def mounts(pid: Pid = "self") -> list[Mount]:
    """The mount table of ``pid``'s mount namespace, in mountinfo order."""
    return parse_mountinfo(_read(f"/proc/{pid}/mountinfo"))


def parse_mountinfo(text: str) -> list[Mount]:
    """The text of a /proc/PID/mountinfo file (read here or inside a container)."""
    found = []
    for line in text.splitlines():
        fields = line.split()
        sep = fields.index("-")
        found.append(Mount(point=fields[4], fstype=fields[sep + 1],
                           options=frozenset(fields[5].split(","))))
    return found


def mount_at(path: Path | str, pid: Pid = "self") -> Mount | None:
    """The topmost mount exactly at ``path`` (None if ``path`` is not a mountpoint)."""
    at = [m for m in mounts(pid) if m.point == str(path)]
    return at[-1] if at else None


def is_mountpoint(path: Path | str, pid: Pid = "self") -> bool:
    return mount_at(path, pid) is not None


def mounts_under(path: Path | str, pid: Pid = "self") -> list[str]:
    """Mountpoints at or below ``path``."""
    prefix = str(path).rstrip("/") + "/"
    return [m.point for m in mounts(pid) if m.point == str(path) or m.point.startswith(prefix)]


def start_reaper(script: Path, args: Sequence[str], log_path: Path) -> subprocess.Popen[bytes]:
    """A watchdog process that cleans up after a test harness if pytest dies.

    It runs in its own session so it outlives a SIGKILLed pytest; it reads
    stdin, and "done" there (stop_reaper) means teardown ran: exit, touch nothing.
    """
    with log_path.open("ab") as log:
        return subprocess.Popen([sys.executable, str(script), *args], stdin=subprocess.PIPE,
                                stdout=log, stderr=log, start_new_session=True)


def stop_reaper(reaper: subprocess.Popen[bytes] | None) -> None:
    """Tell the reaper teardown is done (it exits without touching anything)."""
    if reaper is None:
        return
    assert reaper.stdin is not None
    with contextlib.suppress(BrokenPipeError):
        reaper.stdin.write(b"done\n")
        reaper.stdin.close()
    terminate(reaper)

