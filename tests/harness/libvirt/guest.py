"""Busybox LXC guests: their rootfs, init script, udhcpc on each NIC, leases and renewal."""

from __future__ import annotations

import contextlib
import os
import shlex
import shutil
import signal
import subprocess
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from xml.sax.saxutils import escape, quoteattr

from ..proc import children, cmdline, namespace, pids, process_gone
from ..wait import until
from .base import libvirt
from .network import Network

if TYPE_CHECKING:
    from .daemon import Libvirtd

# udhcpc's hook in a guest: configure the address, then log the event so the
# harness (reading GUEST_ROOT/harness/events from the host) knows what the
# guest holds. Debian's busybox defaults to /etc/udhcpc/default.script, which
# the rootfs lacks, so every udhcpc is given -s explicitly.
UDHCPC_SCRIPT = """\
#!/bin/sh
case "$1" in
  bound|renew) ip addr flush dev "$interface"; ip addr add "$ip/${mask:-24}" dev "$interface" ;;
  deconfig) ip addr flush dev "$interface"; ip link set "$interface" up ;;
esac
echo "$1 $interface ${ip:-}" >> /harness/events
"""


@dataclass
class Nic:
    """One <interface type='network'> of a guest; appears in the guest as eth<index>."""

    network: Network | str
    mac: str | None = None
    alias: str | None = None  # "ua-..."; see the note on aliases in Guest.xml


@dataclass
class _Pids:
    controller: int | None = None
    init: int | None = None


class Guest:
    """An LXC domain whose init (a busybox script) runs udhcpc on each NIC, then idles."""

    def __init__(self, daemon: Libvirtd, name: str, nics: Sequence[Nic],
                 dhcp_hostname: str | None = None, send_hostname: bool = True,
                 memory_mib: int = 64) -> None:
        self.daemon = daemon
        self.name = name
        self.nics = list(nics)
        self.networks = [daemon.network_named(n.network) for n in self.nics]
        self.dhcp_hostname: str | None = None
        if send_hostname:
            self.dhcp_hostname = dhcp_hostname if dhcp_hostname is not None else name
        self.memory_mib = memory_mib
        self.dir = daemon.dir / "guests" / name
        self.root = self.dir / "root"
        self.events_file = self.root / "harness" / "events"
        self.init_log = self.root / "harness" / "init.log"
        self._pids = _Pids()

    # --- definition ---

    @property
    def xml(self) -> str:
        """Domain XML. Note: libvirt's LXC driver drops user aliases (<alias name='ua-...'/>)
        on parse, inactive and live XML alike (only QEMU keeps them); they are written
        here anyway so a test can assert what a real LXC domain looks like."""
        ifaces = []
        for nic, net in zip(self.nics, self.networks, strict=True):
            mac = f"<mac address={quoteattr(nic.mac)}/>" if nic.mac else ""
            alias = f"<alias name={quoteattr(nic.alias)}/>" if nic.alias else ""
            ifaces.append(f"<interface type='network'><source network={quoteattr(net.name)}/>"
                          f"{mac}{alias}</interface>")
        nl = "\n    "
        return f"""\
<domain type='lxc'>
  <name>{escape(self.name)}</name>
  <memory unit='MiB'>{self.memory_mib}</memory>
  <resource><partition>{escape(self.daemon.partition)}</partition></resource>
  <os><type>exe</type><init>/init.sh</init></os>
  <devices>
    <filesystem type='mount'><source dir={quoteattr(str(self.root))}/><target dir='/'/></filesystem>
    {nl.join(ifaces)}
    <console type='pty'/>
  </devices>
</domain>
"""

    def _write_rootfs(self) -> None:
        if self.root.exists():
            shutil.rmtree(self.root)
        # Hard links to the template: a guest's rootfs costs a few ms, not a busybox copy.
        shutil.copytree(self.daemon.rootfs_template(), self.root, symlinks=True,
                        copy_function=os.link)
        harness = self.root / "harness"
        harness.mkdir()
        script = harness / "udhcpc.script"
        script.write_text(UDHCPC_SCRIPT)
        script.chmod(0o755)
        lines = ["#!/bin/sh", f"# init of LXC guest {self.name}, by tests/harness/libvirt.py",
                 "export PATH=/bin", "exec >>/harness/init.log 2>&1", "ip link set lo up"]
        for i in range(len(self.nics)):
            lines += [f"ip link set eth{i} up", self._udhcpc_command(i)]
        lines += [
            # pid 1 of a pid namespace ignores signals it has no handler for: without
            # the trap, destroy() waits 1.6 s for libvirt's SIGKILL after its SIGTERM
            "trap 'exit 0' TERM",
            "echo init-ready >> /harness/events",
            # a shell stays pid 1 so a udhcpc started later by renew() gets reaped;
            # `wait` (unlike a foreground sleep) lets the trap run at once
            "while :; do sleep 3600 & wait $!; done"]
        init = self.root / "init.sh"
        init.write_text("\n".join(lines) + "\n")
        init.chmod(0o755)

    def _udhcpc_command(self, nic: int, request: str | None = None) -> str:
        """Shell command starting udhcpc for eth<nic> in the background.

        Foreground mode (-f) put in the background by the shell, not -b: a
        daemonizing udhcpc forks after its first lease, so its pid would change
        under renew(), and it would keep nsenter's stdout open.
        """
        iface = f"eth{nic}"
        argv = ["udhcpc", "-f", "-i", iface, "-s", "/harness/udhcpc.script",
                "-t", "20", "-T", "1"]
        if self.dhcp_hostname is not None:
            argv += ["-x", f"hostname:{self.dhcp_hostname}"]
        if request is not None:
            argv += ["-r", request]
        return f"{shlex.join(argv)} </dev/null >>/harness/init.log 2>&1 &"

    def define(self) -> Guest:
        """Write the rootfs and define the (persistent) domain."""
        self._write_rootfs()
        self.daemon.conn().defineXML(self.xml)
        return self

    def start(self) -> Guest:
        """Start the domain (defined, or created transient if not defined)."""
        if not (self.root / "init.sh").exists():
            self._write_rootfs()
        try:
            dom = self.obj()
        except libvirt().libvirtError:
            dom = self.daemon.conn().createXML(self.xml, 0)
        else:
            dom.create()
        self._pids = _Pids(controller=int(dom.ID()))
        init = until(self._find_init, timeout=10, what=f"init of guest {self.name}")
        self._pids.init = init
        return self

    def _find_init(self) -> int | None:
        """The controller's child that lives in another pid namespace: the guest's init."""
        assert self._pids.controller is not None
        ours = namespace("self", "pid")
        for child in children(self._pids.controller):
            ns = namespace(child, "pid")
            if ns is not None and ns != ours:
                return child
        return None

    def destroy(self) -> None:
        """virDomainDestroy (shutdown() does not stop a busybox init)."""
        with contextlib.suppress(libvirt().libvirtError):
            self.obj().destroy()

    def undefine(self) -> None:
        with contextlib.suppress(libvirt().libvirtError):
            self.obj().undefine()

    def obj(self) -> Any:
        """The virDomain, on a fresh-if-needed lxc:///system connection."""
        return self.daemon.conn().lookupByName(self.name)

    def is_active(self) -> bool:
        try:
            return bool(self.obj().isActive())
        except libvirt().libvirtError:
            return False

    @property
    def controller_pid(self) -> int | None:
        """libvirt_lxc's pid (== the domain ID), from start()."""
        return self._pids.controller

    @property
    def init_pid(self) -> int | None:
        """The guest's pid 1 as seen from the host, from start()."""
        return self._pids.init

    def macs(self) -> list[str]:
        """MAC of each NIC in XML order (libvirt assigns 52:54:00:... when not given)."""
        root = ET.fromstring(self.obj().XMLDesc(0))
        return [(m.get("address") or "").lower()
                for m in root.findall("./devices/interface/mac")]

    # --- leases ---

    def lease(self, nic: int = 0) -> dict[str, Any] | None:
        """This NIC's entry in its network's .status file, if any."""
        return self.networks[nic].lease_for(self.macs()[nic])

    def wait_for_lease(self, nic: int = 0, timeout: float = 10.0, ip: str | None = None,
                       other_than: str | None = None) -> str:
        """The leased address of NIC ``nic`` once the .status file has one (``ip`` exactly,
        or any but ``other_than``). Leases outlive guests: after a restart of the same
        guest pass ``other_than``/``ip`` or check expiry-time if that matters."""
        mac = self.macs()[nic]
        net = self.networks[nic]

        def probe() -> str:
            entry = net.lease_for(mac)
            got = str(entry["ip-address"]) if entry and "ip-address" in entry else ""
            if (ip is not None and got != ip) or got == other_than:
                return ""
            return got

        return until(probe, timeout=timeout,
                     what=f"a lease for {self.name} nic {nic} ({mac}) in {net.status_path}")

    def wait_for_leases(self, timeout: float = 10.0) -> list[str]:
        return [self.wait_for_lease(i, timeout) for i in range(len(self.nics))]

    def events(self) -> list[str]:
        """udhcpc events the guest logged: "bound eth0 10.213.0.150", "deconfig eth0 ", ..."""
        try:
            return self.events_file.read_text().splitlines()
        except FileNotFoundError:
            return []

    def _events_of(self, nic: int) -> list[tuple[str, str]]:
        """(event, ip) pairs udhcpc logged for eth<nic>, oldest first."""
        out = []
        for line in self.events():
            event, iface, ip = ([*line.split(), "", ""])[:3]
            if iface == f"eth{nic}":
                out.append((event, ip))
        return out

    def bound_address(self, nic: int = 0) -> str | None:
        """The address udhcpc last configured on eth<nic> (None after a release)."""
        events = self._events_of(nic)
        if not events or events[-1][0] not in ("bound", "renew"):
            return None
        return events[-1][1] or None

    # --- inside the guest ---

    def exec(self, *argv: str, check: bool = True,
             timeout: float = 30) -> subprocess.CompletedProcess[str]:
        """Run ``argv`` inside the guest (all its namespaces, its root) with nsenter."""
        assert self._pids.init is not None, "guest not started"
        return subprocess.run(["nsenter", "-t", str(self._pids.init), "-a", *argv],
                              check=check, capture_output=True, text=True, timeout=timeout)

    def udhcpc_pid(self, nic: int = 0) -> int | None:
        """Host pid of the udhcpc serving eth<nic> (found in the guest's pid namespace)."""
        assert self._pids.init is not None, "guest not started"
        guest_ns = namespace(self._pids.init, "pid")
        iface = f"eth{nic}"
        for pid in pids():
            if namespace(pid, "pid") != guest_ns or process_gone(pid):
                continue
            argv = cmdline(pid)
            if argv[:1] == ["udhcpc"] and "-i" in argv and argv[argv.index("-i") + 1:][:1] == [
                    iface]:
                return pid
        return None

    def renew(self, nic: int = 0, new_ip: str | None = None, timeout: float = 10.0) -> str:
        """Make the guest move to a NEW address, the way a real client does; returns it.

        dnsmasq keeps offering a client its current lease whatever it asks for,
        so the guest's udhcpc first releases (SIGUSR2 -> DHCPRELEASE: dnsmasq
        deletes the lease, the .status entry goes), is stopped, and a new udhcpc
        asks for ``new_ip`` (default: a free address of the range) with ``-r``.
        The .status file thus goes old -> (no entry for this MAC) -> new.
        """
        iface = f"eth{nic}"
        net = self.networks[nic]
        old = self.wait_for_lease(nic, timeout)
        # The .status entry appears when dnsmasq ACKs, a moment before udhcpc binds;
        # a release before that is not sent at all (udhcpc only releases when bound).
        until(lambda: self.bound_address(nic) == old, timeout=timeout,
              what=f"{self.name} to configure {old} on {iface}")
        want = new_ip or net.free_address(exclude=[old])
        pid = until(lambda: self.udhcpc_pid(nic) or 0, timeout=timeout,
                    what=f"udhcpc on {iface}")
        def releases() -> int:
            return sum(1 for event, _ in self._events_of(nic) if event == "deconfig")

        before = releases()
        os.kill(pid, signal.SIGUSR2)
        until(lambda: releases() > before, timeout=timeout,
              what=f"udhcpc on {iface} to release {old}")
        os.kill(pid, signal.SIGTERM)
        until(lambda: process_gone(pid), timeout=timeout, what=f"udhcpc {pid} to exit")
        self.exec("sh", "-c", self._udhcpc_command(nic, request=want), timeout=timeout)
        got = self.wait_for_lease(nic, timeout, ip=want)
        until(lambda: self.bound_address(nic) == want, timeout=timeout,
              what=f"{self.name} to configure {want} on {iface}")
        return got

