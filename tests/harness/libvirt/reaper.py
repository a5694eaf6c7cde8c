"""Safety net for the libvirt harness when pytest itself dies (SIGKILL, CI timeout).

Started by Libvirtd with a pipe on stdin, in the session's namespaces. Normal
teardown writes "done" and closes the pipe: the reaper just exits. If the
pipe reaches EOF without "done", pytest is gone without tearing down: libvirtd
and virtlogd got SIGTERM from their parent-death signal, but libvirt's
double-forked dnsmasq, the libvirt_lxc controllers and the guests would run
on. The reaper kills those by pid (only processes in its own network
namespace, which is the dead session's, or in the session's cgroup partition)
and removes the partition's cgroups, which live in the machine's cgroupfs.

Run as a script (stdlib, wait.py and proc.py only): it must work whatever state the
test process was in.

    python reaper.py PARTITION_DIRNAME LEASE_DIR
"""

from __future__ import annotations

import contextlib
import functools
import os
import signal
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[3]))  # the repo, for tests.harness
from tests.harness.proc import cgroups, cmdline, comm, namespace, pids, process_gone
from tests.harness.wait import Timeout, until

NAMES = ("libvirtd", "virtlogd", "libvirt_lxc")


def _targets(partition: str, lease_dir: str) -> set[int]:
    ours = namespace("self", "net")
    found = set()
    for pid in pids():
        if pid == os.getpid() or process_gone(pid):
            continue
        if f"/{partition}/" in cgroups(pid):
            found.add(pid)  # a guest's process
            continue
        net = namespace(pid, "net")
        if net is None or net != ours:
            continue
        name = comm(pid)
        if name in NAMES or (name == "dnsmasq" and any(lease_dir in a for a in cmdline(pid))):
            found.add(pid)
    return found


def _all_gone(targets: set[int]) -> bool:
    return all(process_gone(p) for p in targets)


def reap(partition: str, lease_dir: str) -> None:
    for _ in range(3):  # a controller may still be spawning a guest: look again
        targets = _targets(partition, lease_dir)
        for pid in targets:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        # Unkillable (D state) after 10 s: its cgroup's rmdir fails below; nothing more to do.
        with contextlib.suppress(Timeout):
            until(functools.partial(_all_gone, targets), timeout=10)
    for hierarchy in Path("/sys/fs/cgroup").iterdir():
        top = hierarchy / partition
        if not top.is_dir():
            continue
        dirs = sorted((p for p in top.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts))
        for d in [*dirs, top]:
            with contextlib.suppress(OSError):  # busy: a process survived
                d.rmdir()


def main() -> None:
    partition, lease_dir = sys.argv[1], sys.argv[2]
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a Ctrl-C is for pytest, which tears down
    if sys.stdin.read().strip() == "done":
        return
    reap(partition, lease_dir)


if __name__ == "__main__":
    main()
