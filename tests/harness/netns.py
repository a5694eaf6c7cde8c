"""Named network namespaces and veth pairs, made with ``ip`` inside the session's namespaces.

Only ever used inside the private mount + network namespace of the test
session (isolation.py): ``ip netns add`` bind-mounts the namespace under
``/run/netns``, which there is the session's private tmpfs, so names cannot
clash with the machine's and nothing outlives the session even if a test
crashes before ``delete()``.

``ip netns exec NS`` bind-mounts ``/etc/netns/NS/*`` over ``/etc``. The
harness never writes there (NetworkManager's config is bind-mounted from the
test's directory instead, see nm.py), and before the first namespace is made
a private tmpfs is mounted over ``/etc/netns`` if the machine has one, so no
per-namespace config of the machine leaks into a test. ``/etc/netns`` is not
created when missing: that would write to the machine's ``/etc``.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import signal
import subprocess
from pathlib import Path

from .isolation import isolated
from .proc import is_mountpoint, process_gone
from .wait import until

RUN_NETNS = Path("/run/netns")
ETC_NETNS = Path("/etc/netns")
_counter = itertools.count()


def unique_name(prefix: str) -> str:
    """A netns name unique in this session (names live on the session's private /run)."""
    return f"{prefix}-{os.getpid()}-{next(_counter)}"


def _require_isolated() -> None:
    if not isolated():
        raise RuntimeError("network namespaces are made only inside the test session's private "
                           "namespaces (tests.harness.isolation.enter_private_namespaces)")


def mask_etc_netns() -> None:
    """Hide the machine's /etc/netns behind a private tmpfs (session mount namespace only)."""
    _require_isolated()
    if ETC_NETNS.is_dir() and not is_mountpoint(ETC_NETNS):
        subprocess.run(["mount", "-t", "tmpfs", "-o", "mode=0755", "namesync-test-netns",
                        str(ETC_NETNS)], check=True)


class NetNS:
    def __init__(self, name: str) -> None:
        self.name = name

    @property
    def path(self) -> Path:
        return RUN_NETNS / self.name

    def exists(self) -> bool:
        return self.path.exists()

    def add(self) -> NetNS:
        """Create the namespace with ``lo`` up."""
        _require_isolated()
        mask_etc_netns()
        subprocess.run(["ip", "netns", "add", self.name], check=True, capture_output=True)
        self.ip("link", "set", "lo", "up")
        return self

    def ip(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """``ip -n NAME ARGS``."""
        return subprocess.run(["ip", "-n", self.name, *args], check=check,
                              capture_output=True, text=True, timeout=30)

    def exec_argv(self, *argv: str) -> list[str]:
        """The argv that runs ``argv`` inside the namespace (own mount ns, its own /sys)."""
        return ["ip", "netns", "exec", self.name, *argv]

    def run(self, *argv: str, check: bool = True,
            timeout: float = 30) -> subprocess.CompletedProcess[str]:
        return subprocess.run(self.exec_argv(*argv), check=check, capture_output=True,
                              text=True, timeout=timeout)

    def pids(self) -> list[int]:
        """Processes whose network namespace is this one."""
        if not self.exists():
            return []
        r = subprocess.run(["ip", "netns", "pids", self.name], capture_output=True, text=True,
                           timeout=30)
        return [int(p) for p in r.stdout.split()]

    def kill_all(self, timeout: float = 5.0) -> list[int]:
        """SIGKILL every process still in the namespace, by pid; returns those pids.

        Teardown's safety net after the daemons were stopped by their own pids:
        everything in a test's namespace was started by that test.
        """
        left = [p for p in self.pids() if p != os.getpid()]
        for pid in left:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        until(lambda: all(process_gone(p) for p in left), timeout=timeout,
              what=f"processes {left} in netns {self.name} to exit")
        return left

    def delete(self) -> None:
        """Remove the namespace (its veths go with it); safe to call twice or after a failure."""
        if not self.exists():
            return
        self.kill_all()
        subprocess.run(["ip", "netns", "delete", self.name], check=True, capture_output=True)

    def __enter__(self) -> NetNS:
        return self.add()

    def __exit__(self, *exc: object) -> None:
        self.delete()


def add_veth(ns: NetNS, name: str, peer_ns: NetNS, peer_name: str) -> None:
    """A veth pair: ``name`` in ``ns``, ``peer_name`` in ``peer_ns``, both down."""
    ns.ip("link", "add", name, "type", "veth", "peer", "name", peer_name, "netns", peer_ns.name)
