"""dnsmasq sink: the addn-hosts file plus a SIGHUP, so the answer changes at once.

SIGHUP makes dnsmasq clear its cache and re-read addn-hosts, so there is no
stale answer after a change. Nothing is written and nothing signalled when
the rendered bytes equal the file's: a reload is cheap, but a needless one
still empties the cache of every other name dnsmasq holds.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import structlog

from agent.plan.render import ADDN_HOSTS_HEADER, render_addn_hosts
from agent.plan.table import Table
from agent.sinks.atomic import cleanup_stale_temps, read_bytes, replace_file
from agent.sinks.base import ReloadInfo, Sink
from agent.sinks.dnsmasq_target import (
    Locator,
    SignalResult,
    dnsmasq_executables,
    reload_dnsmasq,
)
from agent.sinks.reread import LIMIT_S, Reread, RereadHistory, wait_reread

log = structlog.get_logger(component="sinks.addn_hosts")

# dnsmasq re-reads addn-hosts after dropping privileges (user nobody).
FILE_MODE = 0o644


class AddnHostsSink(Sink):
    kind = "dnsmasq"

    def __init__(self, path: Path, locator: Locator, executable: Path | None = None) -> None:
        super().__init__(path)
        self.locator = locator
        self.executable = executable  # a dnsmasq binary to accept besides the one on PATH
        self._signal_owed = False
        self._rereading: threading.Thread | None = None
        self._history = RereadHistory()  # only the re-read watcher's thread changes it
        self._watch_limit = LIMIT_S
        self._size = 0  # of the file dnsmasq is told to re-read

    def prepare(self) -> None:
        for tmp in cleanup_stale_temps(self.path):
            log.info("removed stale temp file", path=str(tmp))

    def _check_readable_by_others(self) -> None:
        """dnsmasq reads the file as an unprivileged user: every directory must be searchable.

        Checked by world permission bits, which is what "nobody"/"dnsmasq"
        gets; a file dnsmasq cannot open fails silently at its end except for
        one line in its own log, so say it here.
        """
        warning = None
        for directory in self.path.parents:
            try:
                mode = directory.stat().st_mode
            except OSError:
                break
            if not mode & 0o001:
                warning = (
                    f"directory {directory} (mode {mode & 0o777:04o}) is not searchable by "
                    "others: dnsmasq, running unprivileged, cannot read "
                    f"{self.path.name}"
                )
                break
        if warning != self.status.warning and warning:
            log.warning(
                "addn-hosts file unreachable for dnsmasq", path=str(self.path), reason=warning
            )
        self.status.warning = warning

    def apply(self, table: Table, changed_at: float) -> bool:
        data = render_addn_hosts(table)
        self.status.names = len(table.entries)
        self.status.lines = data.count(b"\n") - ADDN_HOSTS_HEADER.count(b"\n")
        try:
            if read_bytes(self.path) == data:
                if not self._signal_owed:
                    self.status.unchanged += 1
                    self._succeeded()
                    return True
            else:
                self._write(data)
            self._size = len(data)
        except OSError as e:
            self.status.error(f"cannot write {self.path}: {e.strerror or e}")
            log.error("write failed", path=str(self.path), error=str(e))
            return False
        return self._reload(changed_at)

    def _succeeded(self) -> None:
        if self.status.succeeded():
            log.info("dnsmasq sink recovered", path=str(self.path), error=self.status.last_error)

    def _write(self, data: bytes) -> None:
        self.path.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
        t0 = time.monotonic()
        method = replace_file(self.path, data, mode=FILE_MODE)
        # dnsmasq serves the old file until it is told: owed until a signal lands.
        self._signal_owed = True
        written = time.monotonic()
        self._check_readable_by_others()
        self.status.writes += 1
        self.status.last_write = time.time()
        self.status.last_write_method = method
        self.status.last_write_ms = (written - t0) * 1000

    def _reload(self, changed_at: float) -> bool:
        """SIGHUP dnsmasq; False (retried by the pipeline) if it failed for a passing reason."""
        # Never while it still re-reads the last file: the signal would only queue a
        # second whole re-read behind the first, and the new name come no sooner.
        if self._rereading is not None:
            self._rereading.join(self._watch_limit)
        result = reload_dnsmasq(self.locator, executables=dnsmasq_executables(self.executable))
        latency = (time.monotonic() - changed_at) * 1000
        info = self.status.last_reload = ReloadInfo(
            at=time.time(),
            latency_ms=latency,
            pid=result.pid,
            via=result.via,
            sent=result.sent,
            reason=result.reason,
            verified=result.verified,
        )
        if result.sent:
            self._time_reread(result, info)
            log.info(
                "dnsmasq reloaded",
                path=str(self.path),
                names=self.status.names,
                pid=result.pid,
                latency_ms=round(latency, 2),
            )
        else:
            log.warning(
                "dnsmasq not signalled", path=str(self.path), reason=result.reason, via=result.via
            )
        if result.transient:
            self.status.error(f"could not signal dnsmasq: {result.reason}; will retry")
            return False
        self._signal_owed = False
        self._succeeded()
        return True

    def _time_reread(self, result: SignalResult, info: ReloadInfo) -> None:
        """Watch, in a thread of its own, what the re-read this signal started costs.

        The sync does not wait for it: the next batch is planned and written
        while dnsmasq re-reads, and only its signal waits (``_reload``).
        """
        if result.pid is None or result.cpu_before is None:
            return  # dnsmasq's /proc cannot be read: nothing to pace by
        pid, cpu_before, at = result.pid, result.cpu_before, result.signalled_at
        size = self._size
        limit = self._watch_limit = self._history.watch_limit(size)

        def watch() -> None:
            reread = wait_reread(pid, cpu_before, at, limit_s=limit)
            info.reread_ms = reread.cpu_s * 1000
            info.reread_wall_ms = reread.wall_s * 1000
            charged = self._history.charge(reread, size)
            log.debug("dnsmasq re-read", pid=pid, cpu_ms=round(info.reread_ms, 2),
                      wall_ms=round(info.reread_wall_ms, 2), complete=reread.complete,
                      charged_ms=round(charged * 1000, 2))
            if self.on_reread is not None:
                self.on_reread(Reread(charged, reread.wall_s, reread.complete))

        self._rereading = threading.Thread(target=watch, name="dnsmasq-reread", daemon=True)
        self._rereading.start()
