"""Small helpers for the unit tests: poll-until, child processes, unprivileged runs."""

from __future__ import annotations

import functools
import os
import pwd
import shutil
import signal
import stat
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TypeVar

import pytest

from agent.peer.identity import Directory

T = TypeVar("T")

NOBODY = 65534


def until(probe: Callable[[], T], timeout: float = 5.0, what: str = "condition") -> T:
    """Call ``probe`` until it returns something truthy; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    value = probe()
    while not value:
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}; last {value!r}")
        time.sleep(0.002)
        value = probe()
    return value


def needs_root() -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root (chown / setuid to another uid)")


# A child that appends the name of every SIGHUP/SIGUSR1 it receives to a file.
# SIGUSR1 is the test's "sync" signal. Both are blocked and taken one at a time
# with sigwaitinfo, which dequeues the lowest pending standard signal first:
# once USR1 is recorded, a SIGHUP sent before it has been recorded too.
_RECORDER = r"""
import signal, sys
out = sys.argv[1]
wanted = {signal.SIGHUP, signal.SIGUSR1}
signal.pthread_sigmask(signal.SIG_BLOCK, wanted)
print("ready", flush=True)
while True:
    info = signal.sigwaitinfo(wanted)
    with open(out, "a") as f:
        f.write(("HUP" if info.si_signo == signal.SIGHUP else "USR1") + "\n")
"""


class SignalRecorder:
    def __init__(self, proc: subprocess.Popen[str], log: Path) -> None:
        self.proc = proc
        self.pid = proc.pid
        self.log = log

    def received(self) -> list[str]:
        return self.log.read_text().split()

    def sync(self) -> list[str]:
        """Send SIGUSR1, wait until it is recorded, return everything recorded so far."""
        before = self.received().count("USR1")
        os.kill(self.pid, signal.SIGUSR1)
        until(lambda: self.received().count("USR1") > before, what="SIGUSR1 recorded")
        return self.received()


@contextmanager
def signal_recorder(tmp: Path) -> Iterator[SignalRecorder]:
    log = tmp / "signals.log"
    log.write_text("")
    proc = subprocess.Popen(
        [sys.executable, "-c", _RECORDER, str(log)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "ready"
        yield SignalRecorder(proc, log)
    finally:
        proc.kill()
        proc.wait()


def _world_executable(path: str) -> bool:
    p = Path(path)
    for part in [p, *p.parents]:
        try:
            mode = part.stat().st_mode
        except OSError:
            return False
        if not mode & stat.S_IXOTH:
            return False
    return True


@functools.cache
def python_for(uid: int) -> str | None:
    """A Python interpreter that ``uid`` can run (the venv's may live under /root)."""
    candidates = [os.path.realpath(sys.executable)]
    for name in ("python3", "python3.11"):
        found = shutil.which(name)
        if found:
            candidates.append(os.path.realpath(found))
    candidates.append("/usr/bin/python3")
    for cand in dict.fromkeys(candidates):
        if not _world_executable(cand):
            continue
        probe = subprocess.run(
            [cand, "-I", "-c", "pass"],
            user=uid,
            group=uid,
            extra_groups=[],
            cwd="/",
            capture_output=True,
            timeout=30,
        )
        if probe.returncode == 0:
            return cand
    return None


def run_as(uid: int, code: str, *args: str) -> subprocess.CompletedProcess[str]:
    """Run stdlib-only Python ``code`` as ``uid`` (gid = uid, no supplementary groups)."""
    needs_root()
    py = python_for(uid)
    if py is None:
        pytest.skip(f"no Python interpreter executable by uid {uid}")
    return subprocess.run(
        [py, "-I", "-c", code, *args],
        user=uid,
        group=uid,
        extra_groups=[],
        cwd="/",
        capture_output=True,
        text=True,
        timeout=30,
    )


def entry(login: str, uid: int) -> pwd.struct_passwd:
    return pwd.struct_passwd((login, "x", uid, uid, "", "/", "/bin/sh"))


class Passwd:
    """A passwd that lists only ``listed`` (a directory without enumeration lists less
    than it knows) and counts every lookup."""

    def __init__(self, known: dict[int, str], listed: set[int] | None = None) -> None:
        self.known = known
        self.listed = set(known) if listed is None else listed
        self.calls: list[str] = []

    def getpwuid(self, uid: int) -> pwd.struct_passwd:
        self.calls.append(f"uid:{uid}")
        if uid not in self.known:
            raise KeyError(uid)
        return entry(self.known[uid], uid)

    def getpwnam(self, name: str) -> pwd.struct_passwd:
        self.calls.append(f"nam:{name}")
        for uid, login in self.known.items():
            if login == name:
                return entry(login, uid)
        raise KeyError(name)

    def getpwall(self) -> list[pwd.struct_passwd]:
        self.calls.append("all")
        return [entry(self.known[u], u) for u in sorted(self.listed)]

    def directory(self, clock: list[float] | None = None) -> Directory:
        now = clock or [0.0]
        return Directory(getpwuid=self.getpwuid, getpwall=self.getpwall,
                         getpwnam=self.getpwnam, clock=lambda: now[0])
