"""The session's own cgroup partition for libvirt guests, in each hierarchy libvirtd sees.

cgroupfs is the machine's, not private: with our own partition, membership
tells which processes are this session's guests, and teardown removes exactly
the cgroups it made instead of touching /machine, which the machine's own
libvirt may use.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

from ..proc import cgroups, mounts
from .base import UNIFIED


def hierarchies() -> list[Path]:
    """Mount points of the cgroup hierarchies libvirtd sees (not the hidden unified)."""
    return [Path(m.point) for m in mounts()
            if m.fstype in ("cgroup", "cgroup2") and Path(m.point) != UNIFIED]


class Partition:
    """``/NAME`` as libvirt's <partition>: directory ``NAME.partition`` in each hierarchy."""

    def __init__(self, name: str) -> None:
        self.name = name  # "/nsync-PID"
        self.dirname = name.strip("/") + ".partition"
        self._dirs: list[Path] = []  # made by make(), in each hierarchy

    def make(self) -> None:
        for root in hierarchies():
            path = root / self.dirname
            try:
                path.mkdir(exist_ok=True)
            except OSError:
                continue  # a read-only or foreign hierarchy: libvirt cannot use it either
            self._dirs.append(path)
            # v1 cpuset: a new cgroup has no CPUs or memory nodes until given its parent's.
            for knob in ("cpuset.cpus", "cpuset.mems"):
                if (path / knob).exists() and not (path / knob).read_text().strip():
                    (path / knob).write_text((root / knob).read_text())

    def holds(self, pid: int) -> bool:
        return f"/{self.dirname}/" in cgroups(pid)

    def remove(self) -> None:
        """rmdir the partition and what libvirt left in it, deepest first."""
        for path in self._dirs:
            subs = sorted((p for p in path.rglob("*") if p.is_dir()),
                          key=lambda p: len(p.parts), reverse=True)
            for d in [*subs, path]:
                with contextlib.suppress(FileNotFoundError):
                    d.rmdir()
        self._dirs.clear()
