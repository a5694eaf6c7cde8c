"""systemd-resolved's static records (systemd >= 261): the names as a static.d ``.rr`` file.

resolved answers names from ``/run/systemd/resolve/static.d/*.rr`` (JSON, one
RR object each, systemd.rr(5)) before it asks any DNS server. It checks the
directory at most every 2 s, and at once after SIGHUP, its reload; so after a
change the file is replaced atomically and resolved is sent SIGHUP: the next
query already gets the new answer (measured: docs/static-records.md). A name
that has only IPv4 records answers AAAA with NODATA; a name not in the file is
not answered here at all (resolved asks its DNS servers, which is why the
systemd-resolved routing path stays the default, see README).

While this sink does not serve (another path is chosen, namesync stopping) its
file is removed, so resolved never answers from a stale copy.

Only a process that proves to be systemd-resolved is signalled: the pid
resolved's bus name has, pinned with a pidfd, whose comm is systemd-resolved's
and which runs as its user (or root); its executable is compared too when it
can be read (root without CAP_SYS_PTRACE cannot read another uid's).
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import pwd
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

import structlog

from agent.plan.table import Table
from agent.sinks.atomic import (
    cleanup_stale_temps,
    read_bytes,
    remove_in_directory,
    replace_file,
)
from agent.sinks.base import ReloadInfo, Sink

log = structlog.get_logger(component="sinks.static_rr")

FILE_MODE = 0o644  # resolved reads it as its own user
TYPE_A = 1
TYPE_AAAA = 28
# /proc/PID/comm holds 15 characters: "systemd-resolved" shows as this.
RESOLVED_COMM = "systemd-resolve"
RESOLVED_USERS = ("systemd-resolve",)
RESOLVED_BINARIES = ("/usr/lib/systemd/systemd-resolved", "/lib/systemd/systemd-resolved")
_TRANSIENT = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.EAGAIN})


class Target(Protocol):
    """What the sink needs from the DNS path controller (agent/resolvers/path.py)."""

    def static_records_serving(self) -> bool:
        """True while this sink is the path that serves the names."""
        ...

    def resolved_pid(self) -> int | None:
        """systemd-resolved's pid, as its bus name's owner last said."""
        ...


def render_rr(table: Table) -> bytes:
    """One A/AAAA RR object per address, names in order; one object a line for people."""
    objects = []
    for name, entry in table.entries.items():
        for addr in entry.addresses:
            kind = TYPE_A if addr.version == 4 else TYPE_AAAA
            rr = {"key": {"name": name, "type": kind}, "address": list(addr.packed)}
            objects.append(json.dumps(rr, separators=(",", ":")))
    if not objects:
        return b"[]\n"
    return ("[\n" + ",\n".join(objects) + "\n]\n").encode()


def why_not_resolved(pid: int, proc: Path = Path("/proc")) -> str | None:
    """Why ``pid`` must not be signalled, or None if it is a live systemd-resolved."""
    base = proc / str(pid)
    try:
        comm = (base / "comm").read_text().strip()
        stat = (base / "stat").read_text()
        status = (base / "status").read_text()
    except FileNotFoundError:
        return f"pid {pid} is not running"
    except OSError as e:
        return f"cannot inspect pid {pid}: {e.strerror}"
    if comm != RESOLVED_COMM:
        return f"pid {pid} is {comm!r}, not systemd-resolved"
    if stat.rpartition(")")[2].split()[0:1] == ["Z"]:
        return f"pid {pid} is a systemd-resolved zombie"
    uids = next((line.split()[1:] for line in status.splitlines() if line.startswith("Uid:")), [])
    allowed = {0}
    for user in RESOLVED_USERS:
        with contextlib.suppress(KeyError):
            allowed.add(pwd.getpwnam(user).pw_uid)
    if not uids or not all(int(u) in allowed for u in uids):
        return f"pid {pid} calls itself systemd-resolved but runs as uid {uids[:1]}"
    try:
        exe = os.path.realpath(os.readlink(base / "exe").removesuffix(" (deleted)"))
    except OSError:
        return None  # unreadable without CAP_SYS_PTRACE: the uid check stands
    known = {os.path.realpath(b) for b in RESOLVED_BINARIES}
    if exe not in known:
        return f"pid {pid} calls itself systemd-resolved but runs {exe[:200]!r}"
    return None


def signal_resolved(pid: int | None, proc: Path = Path("/proc")) -> tuple[bool, str | None, bool]:
    """SIGHUP ``pid`` if it is systemd-resolved: (sent, why not, worth retrying)."""
    if pid is None:
        return False, "systemd-resolved has no owner on the bus", False
    try:
        pidfd = os.pidfd_open(pid)
    except ProcessLookupError:
        return False, f"pid {pid} is not running", False
    except OSError as e:
        return False, f"cannot open pid {pid}: {e.strerror}", e.errno in _TRANSIENT
    try:
        why = why_not_resolved(pid, proc)
        if why:
            return False, why, False
        try:
            signal.pidfd_send_signal(pidfd, signal.SIGHUP)
        except ProcessLookupError:
            return False, f"pid {pid} exited before the signal", False
        except PermissionError:
            return False, f"not permitted to signal pid {pid}", False
        return True, None, False
    finally:
        os.close(pidfd)


class StaticRecordsSink(Sink):
    kind = "static_records"

    def __init__(self, path: Path, target: Target,
                 signal_fn: Callable[[int | None], tuple[bool, str | None, bool]] = signal_resolved,
                 ) -> None:
        super().__init__(path)
        self._target = target
        self._signal = signal_fn
        self._signal_owed = False

    def prepare(self) -> None:
        with contextlib.suppress(OSError):
            for tmp in cleanup_stale_temps(self.path):
                log.info("removed stale temp file", path=str(tmp))

    def apply(self, table: Table, changed_at: float) -> bool:
        serving = self._target.static_records_serving()
        data = render_rr(table) if serving else None
        self.status.names = len(table.entries) if serving else 0
        self.status.lines = sum(len(e.addresses) for e in table.entries.values()) if serving else 0
        self.status.extra["serving"] = serving
        try:
            current = read_bytes(self.path, follow=False)
            if current == data:
                if not self._signal_owed:
                    self.status.unchanged += 1
                    self._succeeded()
                    return True
            else:
                self._change(data)
        except OSError as e:
            self.status.error(f"cannot write {self.path}: {e.strerror or e}")
            log.error("write failed", path=str(self.path), error=str(e))
            return False
        return self._reload(changed_at)

    def _change(self, data: bytes | None) -> None:
        t0 = time.monotonic()
        if data is None:
            remove_in_directory(self.path)
            method = "removed"
        else:
            # /run/systemd/resolve is resolved's; static.d in it is made by whoever needs it.
            self.path.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
            if self.path.parent.is_symlink():  # resolved's user could point it anywhere
                raise OSError(errno.ELOOP, "a symlink, not resolved's directory",
                              str(self.path.parent))
            method = replace_file(self.path, data, mode=FILE_MODE, follow=False)
        self._signal_owed = True
        self.status.writes += 1
        self.status.last_write = time.time()
        self.status.last_write_method = method
        self.status.last_write_ms = (time.monotonic() - t0) * 1000

    def _reload(self, changed_at: float) -> bool:
        pid = self._target.resolved_pid()
        sent, reason, transient = self._signal(pid)
        latency = (time.monotonic() - changed_at) * 1000
        self.status.last_reload = ReloadInfo(
            at=time.time(), latency_ms=latency, pid=pid, via="org.freedesktop.resolve1 owner",
            sent=sent, reason=reason, verified="comm, uid" if sent else None)
        if sent:
            log.info("systemd-resolved reloaded", path=str(self.path), names=self.status.names,
                     pid=pid, latency_ms=round(latency, 2))
        else:
            # resolved re-reads static.d by itself within 2 s: late, not lost.
            log.warning("systemd-resolved not signalled", reason=reason)
        if transient:
            self.status.error(f"could not signal systemd-resolved: {reason}; will retry")
            return False
        self._signal_owed = False
        self._succeeded()
        return True

    def _succeeded(self) -> None:
        if self.status.succeeded():
            log.info("static records sink recovered", path=str(self.path),
                     error=self.status.last_error)
