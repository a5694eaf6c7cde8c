"""A real systemd-resolved (and its own system bus) in a test's network namespace.

systemd-resolved is never installed on the machine: it runs from the cached
rootfs (rootfs.py's SYSTEMD_IMAGE, shared with tests/system) in a chroot. A
*holder* process owns a private mount namespace inside the test's netns in
which the rootfs is bound read-only with fresh proc/sysfs (sysfs of this
netns), tmpfs ``/run`` and ``/tmp``, the test's own ``resolved.conf`` and a
directory of the test bound on ``/run/dbus``, so the bus socket is reachable
from outside the chroot. dbus-daemon and systemd-resolved are then started in
that namespace as the test's children, each stopped by its pid, so a test can
restart resolved alone. No pid namespace: resolved checks a caller's
CAP_NET_ADMIN through /proc/PID of the caller, which must be the same pid
namespace.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

from .agent import Agent
from .dns import Answer, dig
from .netns import NetNS
from .podman import Podman
from .proc import terminate
from .wait import until

RESOLVED_BIN = "/lib/systemd/systemd-resolved"
STUB = "127.0.0.53"

_HOLDER = r"""
set -e
R="$1"; W="$2"
mount --bind "$R" "$R"
mount -o remount,bind,ro "$R"
mount -t proc proc "$R/proc"
mount -t sysfs -o ro sysfs "$R/sys"
mount --rbind /dev "$R/dev"
mount -t tmpfs -o mode=0755 tmpfs "$R/run"
mount -t tmpfs tmpfs "$R/tmp"
mkdir -p "$R/run/dbus" "$R/run/systemd"
mount --bind "$W/bus" "$R/run/dbus"
if [ -d "$W/etc" ]; then mount --bind "$W/etc" "$R/etc"; fi
mount --bind "$W/resolved.conf" "$R/etc/systemd/resolved.conf"
echo ready
exec sleep 86400
"""


def resolved_conf(upstream: str | None) -> str:
    lines = ["[Resolve]", "LLMNR=no", "MulticastDNS=no"]
    if upstream:
        lines.append(f"DNS={upstream}")
    return "\n".join(lines) + "\n"


class Resolved:
    def __init__(self, workdir: Path, rootfs: Path, netns: NetNS,
                 upstream: str | None = None, own_etc: bool = False) -> None:
        """``own_etc``: resolved's /etc is a writable copy of the rootfs's, so a test can
        give it an /etc/hosts (``hosts_file``) and change it (the rootfs is shared and
        bound read-only)."""
        self.dir = workdir
        self.own_etc = own_etc
        self.hosts_file = workdir / "etc" / "hosts"
        self.rootfs = rootfs
        self.netns = netns
        self.upstream = upstream
        self.bus_dir = workdir / "bus"
        self.log = workdir / "resolved.log"
        self.holder: subprocess.Popen[str] | None = None
        self.dbus: subprocess.Popen[bytes] | None = None
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def bus_address(self) -> str:
        return f"unix:path={self.bus_dir / 'system_bus_socket'}"

    def _in_root(self, *argv: str) -> list[str]:
        assert self.holder is not None
        return ["nsenter", "-t", str(self.holder.pid), "-m", "-n", "--",
                "chroot", str(self.rootfs), *argv]

    def start(self) -> Resolved:
        self.dir.mkdir(parents=True, exist_ok=True)
        self.dir.chmod(0o755)
        self.bus_dir.mkdir(mode=0o755, exist_ok=True)
        (self.dir / "resolved.conf").write_text(resolved_conf(self.upstream))
        if self.own_etc and not (self.dir / "etc").exists():
            subprocess.run(["cp", "-a", str(self.rootfs / "etc"), str(self.dir / "etc")],
                           check=True)
            self.hosts_file.write_text("127.0.0.1 localhost\n")
        self.holder = subprocess.Popen(
            self.netns.exec_argv("unshare", "-m", "--propagation", "private",
                                 "sh", "-c", _HOLDER, "holder", str(self.rootfs), str(self.dir)),
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        assert self.holder.stdout is not None
        if self.holder.stdout.readline().strip() != "ready":
            self.holder.wait(10)
            raise AssertionError(f"resolved holder failed: {self.holder.stderr.read()}")
        self._log = self.log.open("ab")
        self.dbus = subprocess.Popen(
            self._in_root("dbus-daemon", "--system", "--nofork", "--nopidfile", "--nosyslog"),
            stdout=self._log, stderr=self._log)
        until(lambda: (self.bus_dir / "system_bus_socket").exists(), timeout=10,
              what="resolved's dbus-daemon socket")
        self.start_resolved()
        return self

    def start_resolved(self) -> float:
        """Start systemd-resolved; returns seconds until it owns its bus name."""
        t0 = time.monotonic()
        self.proc = subprocess.Popen(self._in_root(RESOLVED_BIN), stdout=self._log,
                                     stderr=self._log)
        until(self._owns_name, timeout=15, what="systemd-resolved on the bus")
        return time.monotonic() - t0

    def _owns_name(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise AssertionError(f"systemd-resolved exited {self.proc.returncode}:\n"
                                 + self.log.read_text())
        r = subprocess.run(
            ["busctl", f"--address={self.bus_address}", "call", "org.freedesktop.DBus",
             "/org/freedesktop/DBus", "org.freedesktop.DBus", "NameHasOwner", "s",
             "org.freedesktop.resolve1"], capture_output=True, text=True, timeout=10)
        return r.stdout.strip() == "b true"

    def stop_resolved(self) -> None:
        terminate(self.proc)
        self.proc = None

    def resolvectl(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return subprocess.run(self._in_root("resolvectl", *args), capture_output=True,
                              text=True, timeout=30, check=check)

    def query(self, name: str, rtype: str = "A") -> Answer:
        """dig at resolved's stub (127.0.0.53) inside the test's netns."""
        return dig(name, rtype, server=STUB, prefix=tuple(self.netns.exec_argv()))

    def stop(self) -> None:
        self.stop_resolved()
        terminate(self.dbus)
        self.dbus = None
        if self.holder is not None:
            terminate(self.holder)
            self.holder = None
            self._log.close()


def in_netns(netns: NetNS) -> tuple[str, ...]:
    # nsenter --net is cheaper than `ip netns exec` (no mount namespace): timing stays honest.
    return ("nsenter", f"--net={netns.path}")


class NetnsAgent(Agent):
    def __init__(self, workdir: Path, netns: NetNS, env: dict[str, str]) -> None:
        super().__init__(workdir, env)
        self.netns = netns

    def command(self, *extra: str) -> list[str]:
        return [*in_netns(self.netns), sys.executable, "-m", "agent.daemon.main", "--config",
                str(self.config), *extra]



class NetnsPodman(Podman):
    """The private rootful Podman of tests/harness/podman.py, run inside the resolved
    test's netns: its bridges, netavark's firewall rules and aardvark-dns live there."""

    def __init__(self, workdir: Path, netns: NetNS) -> None:
        super().__init__(workdir)
        self.netns = netns

    def _base(self) -> list[str]:
        return [*in_netns(self.netns), *super()._base()]

    def use_dns_servers(self, dropin: str) -> None:
        # CONTAINERS_CONF points at one file (drop-in dirs are not read then): merge the
        # dns_servers line of the drop-in `agentctl setup` writes into it.
        line = next(ln for ln in dropin.splitlines() if ln.startswith("dns_servers"))
        self.conf.write_text(self.conf.read_text().replace("[containers]\n",
                                                           f"[containers]\n{line}\n", 1))


