"""Find the dnsmasq to reload, and prove it is one before signalling it.

Only a process whose /proc entry says it is dnsmasq is ever signalled: its
name, and its executable (device+inode of /proc/PID/exe against the dnsmasq
binary installed), so a process that merely renamed itself is refused; and
never one of libvirt's per-network instances (SIGHUP makes those re-run
their lease script for every lease). The pid is pinned with a pidfd before
it is checked, so a pid reused between check and signal cannot be hit.
The D-Bus locator (NetworkManager's dnsmasq by bus name) plugs in beside
``PidFileLocator`` as another ``Locator``.
"""

from __future__ import annotations

import contextlib
import errno
import os
import pwd
import shutil
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from agent.resolvers.view import Resolver
from agent.sinks.reread import cpu_time

LIBVIRT_DNSMASQ_DIR = b"/var/lib/libvirt/dnsmasq/"


@dataclass(frozen=True)
class Candidate:
    pid: int | None
    via: str  # how it was found, e.g. "pid file /run/NetworkManager/dnsmasq.pid"
    problem: str | None = None  # why there is no usable pid


class Locator(Protocol):
    def candidates(self) -> list[Candidate]:
        """Where dnsmasq may be, best first; the first one that proves to be dnsmasq wins."""
        ...


@dataclass(frozen=True)
class PidFileLocator:
    path: Path

    def locate(self) -> Candidate:
        via = f"pid file {self.path}"
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            return Candidate(
                None, via, f"pid file {self.path} does not exist (is dnsmasq running?)"
            )
        except OSError as e:
            return Candidate(None, via, f"cannot read pid file {self.path}: {e.strerror}")
        text = raw.decode("ascii", "replace").strip()
        # 2**22 is the kernel's pid_max ceiling; anything above is not a pid.
        if not text.isdigit() or not 1 < int(text) <= 1 << 22:
            return Candidate(None, via, f"pid file {self.path} holds {text[:40]!r}, not a pid")
        return Candidate(int(text), via)

    def candidates(self) -> list[Candidate]:
        return [self.locate()]


# Where dnsmasq is looked up besides PATH (a daemon's PATH may lack sbin).
SBIN_PATH = "/usr/sbin:/sbin:/usr/local/sbin"
# Accounts dnsmasq drops to (-u; Debian "nobody", Fedora "dnsmasq"): no
# ordinary local user can run a process under them.
DNSMASQ_USERS = ("dnsmasq", "nobody")
_DELETED = " (deleted)"


def dnsmasq_executables(configured: Path | None = None) -> frozenset[str]:
    """Real paths of the dnsmasq binaries a signalled process may be running."""
    found = {shutil.which("dnsmasq", path=f"{os.environ.get('PATH', '')}:{SBIN_PATH}")}
    if configured is not None:
        found.add(str(configured))
    return frozenset(os.path.realpath(p) for p in found if p)


def _ids(paths: frozenset[str]) -> set[tuple[int, int]]:
    ids = set()
    for path in paths:
        with contextlib.suppress(OSError):
            st = os.stat(path)
            ids.add((st.st_dev, st.st_ino))
    return ids


def _exe_problem(pid: int, base: Path, executables: frozenset[str]) -> str | None:
    """Why the process's executable is not dnsmasq, None if it is.

    PermissionError when it cannot be read (another uid's process, and the
    daemon has no CAP_SYS_PTRACE): the caller falls back to _owner_problem.

    Comparing device+inode of /proc/PID/exe with the installed binary defeats
    a process that merely renamed itself (prctl PR_SET_NAME) or faked argv.
    A binary replaced by a package upgrade shows as "PATH (deleted)": that
    still counts when PATH is a known dnsmasq (only root can write there).
    """
    exe = base / "exe"
    try:
        target = os.readlink(exe)
        if target.endswith(_DELETED):
            if os.path.realpath(target[: -len(_DELETED)]) in executables:
                return None
            return f"pid {pid} calls itself dnsmasq but runs {target[:200]!r}, not a dnsmasq binary"
        st = os.stat(exe)
    except FileNotFoundError:
        return f"pid {pid} has no executable (a kernel thread, or exiting)"
    except PermissionError:
        raise
    except OSError as e:
        return f"cannot inspect pid {pid}: {e.strerror}"
    if (st.st_dev, st.st_ino) in _ids(executables):
        return None
    return f"pid {pid} calls itself dnsmasq but runs {target[:200]!r}, not a dnsmasq binary"


def _uids(base: Path) -> list[str]:
    """Real, effective, saved and fs uid of the process (OSError if it cannot be read)."""
    status = (base / "status").read_text()
    return next((line.split()[1:] for line in status.splitlines() if line.startswith("Uid:")), [])


def _owner_problem(pid: int, base: Path) -> str | None:
    """Without /proc/PID/exe: the process must run as root or as one of dnsmasq's users."""
    try:
        uids = _uids(base)
    except OSError as e:
        return f"cannot inspect pid {pid}: {e.strerror}"
    allowed = {0}
    for name in DNSMASQ_USERS:
        with contextlib.suppress(KeyError):
            allowed.add(pwd.getpwnam(name).pw_uid)
    if uids and all(int(u) in allowed for u in uids):
        return None
    return (
        f"pid {pid} calls itself dnsmasq but runs as uid {uids[0] if uids else '?'}, "
        "not as root or dnsmasq's user (its executable cannot be read to tell more)"
    )


def why_not_dnsmasq(
    pid: int, proc: Path = Path("/proc"), executables: frozenset[str] | None = None
) -> str | None:
    """Return why ``pid`` must not be signalled, or None if it is a live dnsmasq."""
    base = proc / str(pid)
    try:
        comm = (base / "comm").read_text().strip()
        stat = (base / "stat").read_text()
        cmdline = (base / "cmdline").read_bytes()
    except FileNotFoundError:
        return f"pid {pid} is not running"
    except OSError as e:
        return f"cannot inspect pid {pid}: {e.strerror}"
    if comm != "dnsmasq":
        return f"pid {pid} is {comm!r}, not dnsmasq"
    # Field 3 of /proc/PID/stat, after the parenthesised comm, is the state.
    state = stat.rpartition(")")[2].split()[0:1]
    if state == ["Z"]:
        return f"pid {pid} is a dnsmasq zombie (exited, not yet reaped)"
    if LIBVIRT_DNSMASQ_DIR in cmdline:
        return f"pid {pid} is a libvirt per-network dnsmasq; namesync never signals those"
    known = dnsmasq_executables() if executables is None else executables
    try:
        return _exe_problem(pid, base, known)
    except PermissionError:
        return _owner_problem(pid, base)


def how_verified(pid: int, proc: Path = Path("/proc")) -> str:
    """What proved ``pid`` to be dnsmasq, for status (after why_not_dnsmasq said None)."""
    base = proc / str(pid)
    try:
        return f"executable {os.readlink(base / 'exe')}"
    except PermissionError:
        pass
    except OSError:
        return "executable unknown"
    try:
        uid = (_uids(base) or ["?"])[0]
    except OSError:
        uid = "?"
    return f"runs as uid {uid} (its executable cannot be read without CAP_SYS_PTRACE)"


@dataclass(frozen=True)
class SignalResult:
    pid: int | None
    via: str
    sent: bool
    reason: str | None  # why nothing was sent
    # Nothing was sent for a passing reason (no descriptors, no memory): try again.
    transient: bool = False
    verified: str | None = None  # what proved it was dnsmasq (when sent)
    # Taken just before the signal, to time the re-read it starts (reread.py).
    cpu_before: float | None = None
    signalled_at: float = 0.0  # time.monotonic()


_TRANSIENT = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.EAGAIN})


def _signal(cand: Candidate, proc: Path, executables: frozenset[str] | None) -> SignalResult:
    if cand.pid is None:
        return SignalResult(None, cand.via, False, cand.problem)
    pid = cand.pid
    try:
        pidfd = os.pidfd_open(pid)
    except ProcessLookupError:
        return SignalResult(pid, cand.via, False, f"pid {pid} is not running")
    except OSError as e:
        return SignalResult(
            pid, cand.via, False, f"cannot open pid {pid}: {e.strerror}", e.errno in _TRANSIENT
        )
    try:
        why = why_not_dnsmasq(pid, proc, executables)
        if why:
            return SignalResult(pid, cand.via, False, why)
        cpu_before = cpu_time(pid, proc)
        signalled_at = time.monotonic()
        try:
            signal.pidfd_send_signal(pidfd, signal.SIGHUP)
        except ProcessLookupError:
            return SignalResult(pid, cand.via, False, f"pid {pid} exited before the signal")
        except PermissionError:
            return SignalResult(pid, cand.via, False, f"not permitted to signal pid {pid}")
        return SignalResult(pid, cand.via, True, None, verified=how_verified(pid, proc),
                            cpu_before=cpu_before, signalled_at=signalled_at)
    finally:
        os.close(pidfd)


def reload_dnsmasq(
    locator: Locator, proc: Path = Path("/proc"), executables: frozenset[str] | None = None
) -> SignalResult:
    """SIGHUP the first candidate that proves to be dnsmasq; otherwise say why not."""
    failures: list[SignalResult] = []
    tried: set[int] = set()
    for cand in locator.candidates():
        if cand.pid is not None and cand.pid in tried:
            continue
        result = _signal(cand, proc, executables)
        if result.sent:
            return result
        if cand.pid is not None:
            tried.add(cand.pid)
        failures.append(result)
    if not failures:
        return SignalResult(None, "no locator", False, "nowhere to look for dnsmasq")
    first = failures[0]
    reason = "; ".join(f.reason or "" for f in failures)
    return SignalResult(
        first.pid, first.via, False, reason, any(f.transient for f in failures)
    )


class NetworkManagerLocator:
    """NetworkManager's dnsmasq as its watcher last saw it, then the pid file.

    The watcher's view (agent/resolvers/view.py) is authoritative while the
    bus is up: it follows NM's restarts of dnsmasq. The pid file is the
    fallback for no bus or no NM. The view is an immutable value replaced
    whole, so reading it from the sink's worker thread needs no lock.
    """

    def __init__(self, resolver: Resolver, fallback: Locator) -> None:
        self._resolver = resolver
        self._fallback = fallback

    def candidates(self) -> list[Candidate]:
        target = self._resolver.view.dnsmasq
        found = [Candidate(target.pid, target.via)] if target is not None else []
        return found + self._fallback.candidates()
