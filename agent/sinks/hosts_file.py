"""Hosts-file sink: namesync's block in /etc/hosts (glibc, systemd-resolved users).

Only the lines between the markers are namesync's. Malformed markers mean
the file is left exactly as it is and the refusal is reported: guessing
where the block ends could delete a user's lines.
"""

from __future__ import annotations

import time

import structlog

from agent.plan.render import host_lines
from agent.plan.table import Table
from agent.sinks.atomic import ConcurrentEdit, cleanup_stale_temps, read_snapshot, replace_file
from agent.sinks.base import Sink
from agent.sinks.hosts_block import MarkerError, compose

log = structlog.get_logger(component="sinks.hosts_file")

# Someone else (an editor, a package script) writing the file in the same
# instant: re-read and retry a few times, then give up until the next sync.
ATTEMPTS = 3


class HostsFileSink(Sink):
    kind = "hosts_file"

    def prepare(self) -> None:
        for tmp in cleanup_stale_temps(self.path):
            log.info("removed stale temp file", path=str(tmp))

    def _succeeded(self) -> None:
        if self.status.succeeded():
            log.info("hosts file sink recovered", path=str(self.path), error=self.status.last_error)

    def apply(self, table: Table, changed_at: float) -> bool:
        lines = host_lines(table)
        self.status.names = len(table.entries)
        self.status.lines = len(lines)
        for _ in range(ATTEMPTS):
            try:
                snap = read_snapshot(self.path)
                current = snap.data
                try:
                    new = compose(current or b"", lines)
                except MarkerError as e:
                    if self.status.refused is None:
                        log.error("refusing to edit hosts file", path=str(self.path), reason=str(e))
                    self.status.refused = f"malformed namesync markers in {self.path}: {e}"
                    return False
                self.status.refused = None
                if new == (current or b""):
                    self.status.unchanged += 1
                    self._succeeded()
                    return True
                t0 = time.monotonic()
                method = replace_file(self.path, new, expect=snap)
            except ConcurrentEdit:
                continue
            except OSError as e:
                self.status.error(f"cannot write {self.path}: {e.strerror or e}")
                log.error("write failed", path=str(self.path), error=str(e))
                return False
            self.status.writes += 1
            self.status.last_write = time.time()
            self.status.last_write_method = method
            self.status.last_write_ms = (time.monotonic() - t0) * 1000
            log.info(
                "hosts file updated", path=str(self.path), names=self.status.names, method=method
            )
            self._succeeded()
            return True
        self.status.error(f"{self.path} kept changing while namesync wrote it; will retry")
        return False
