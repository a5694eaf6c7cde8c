"""Safety net for tests/harness/libvirt.py when pytest itself dies (SIGKILL, CI timeout).

Started by Libvirtd with a pipe on stdin, in the session's namespaces. Normal
teardown writes "done" and closes the pipe: the reaper just exits. If the
pipe reaches EOF without "done", pytest is gone without tearing down: libvirtd
and virtlogd got SIGTERM from their parent-death signal, but libvirt's
double-forked dnsmasq, the libvirt_lxc controllers and the guests would run
on. The reaper kills those by pid (only processes in its own network
namespace, which is the dead session's, or in the session's cgroup partition)
and removes the partition's cgroups, which live in the machine's cgroupfs.

Run as a script (stdlib and wait.py only): it must work whatever state the
test process was in.

    python libvirt_reaper.py PARTITION_DIRNAME LEASE_DIR
"""

from __future__ import annotations

import contextlib
import functools
import os
import signal
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repo, for tests.harness
from tests.harness.wait import Timeout, until

NAMES = ("libvirtd", "virtlogd", "libvirt_lxc")


def _read(path: str) -> str:
    try:
        with open(path, "rb") as f:
            return f.read().decode(errors="replace")
    except OSError:
        return ""


def _gone(pid: int) -> bool:
    stat = _read(f"/proc/{pid}/stat")
    return not stat or stat.rsplit(")", 1)[1].split()[0] in ("Z", "X")


def _all_gone(pids: set[int]) -> bool:
    return all(_gone(p) for p in pids)


def _targets(partition: str, lease_dir: str) -> set[int]:
    ours = os.readlink("/proc/self/ns/net")
    found = set()
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid() or _gone(int(entry)):
            continue
        pid = int(entry)
        if f"/{partition}/" in _read(f"/proc/{pid}/cgroup"):
            found.add(pid)  # a guest's process
            continue
        try:
            if os.readlink(f"/proc/{pid}/ns/net") != ours:
                continue
        except OSError:
            continue
        comm = _read(f"/proc/{pid}/comm").strip()
        if comm in NAMES or (comm == "dnsmasq" and lease_dir in _read(f"/proc/{pid}/cmdline")):
            found.add(pid)
    return found


def reap(partition: str, lease_dir: str) -> None:
    for _ in range(3):  # a controller may still be spawning a guest: look again
        pids = _targets(partition, lease_dir)
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        # Unkillable (D state) after 10 s: its cgroup's rmdir fails below; nothing more to do.
        with contextlib.suppress(Timeout):
            until(functools.partial(_all_gone, pids), timeout=10)
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
