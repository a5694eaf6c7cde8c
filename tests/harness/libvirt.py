"""A real libvirtd (monolithic, LXC driver) whose busybox LXC guests take real DHCP leases.

Everything lives inside the test session's private mount + network namespace
(isolation.py); nothing of the machine's own libvirt is read or touched:

    /var/lib/libvirt, /var/log/libvirt, /var/cache/libvirt   a private tmpfs each
    /etc/libvirt       bind mount of WORKDIR/etc-libvirt: a copy of the machine's
                       *.conf files and nwfilter/ only (no domains, networks,
                       hooks, secrets or autostart links: see _private_config)
    /run/libvirt, /run/libvirtd.pid, /run/virtlogd.pid       on the session's /run
    bridges nsvirbrN with 10.213.N.0/24, libvirt's dnsmasq   in the session's netns
    WORKDIR/guests/NAME/root     a guest's rootfs: static busybox, /init.sh, and
                                 /harness/ (init.log, events, udhcpc.script)

libvirtd and virtlogd run in the foreground as the test's own children (not
``-d``), so their pid is exact (checked against /run/libvirtd.pid), stop/kill
are by that pid and they are reaped at once (PID 1 here reaps orphans late).
libvirtd gets its own mount namespace, a slave of the session's, in which
/sys/fs/cgroup/unified is unmounted: with that cgroup2 mount holding a
controller, LXC guests fail to start ("Unable to create directory
/sys/fs/cgroup/unified").

libvirt double-forks the network's dnsmasq and each guest's libvirt_lxc
controller; those survive a libvirtd restart (LXC guests keep running, their
domain ID is the controller's pid) and are found again by pid for teardown.
Guests' cgroups go under a per-session partition, /nsync-PID (directory
nsync-PID.partition in each hierarchy, made by the harness: libvirt creates
only its default /machine, never a custom partition). cgroupfs is the
machine's, not private: with our own partition, membership tells which
processes are this session's guests, and teardown removes exactly the cgroups
it made instead of touching /machine, which the machine's own libvirt may use.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import importlib
import ipaddress
import itertools
import json
import os
import shlex
import shutil
import signal
import struct
import subprocess
import sys
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from xml.sax.saxutils import escape, quoteattr

from .isolation import isolated
from .netns import process_gone
from .proc import terminate
from .wait import until

LXC_URI = "lxc:///system"
QEMU_URI = "qemu:///system"
ETC_DIR = Path("/etc/libvirt")
STATE_DIRS = (Path("/var/lib/libvirt"), Path("/var/log/libvirt"), Path("/var/cache/libvirt"))
LEASE_DIR = Path("/var/lib/libvirt/dnsmasq")  # <bridge>.status: libvirt's lease file
RUN_DIR = Path("/run/libvirt")
LIBVIRTD_PID_FILE = Path("/run/libvirtd.pid")
VIRTLOGD_PID_FILE = Path("/run/virtlogd.pid")
VIRTLOGD_SOCK = RUN_DIR / "virtlogd-sock"
IP_FORWARD = Path("/proc/sys/net/ipv4/ip_forward")
CGROUP_ROOT = Path("/sys/fs/cgroup")
UNIFIED = CGROUP_ROOT / "unified"
DNSMASQ_XMLNS = "http://libvirt.org/schemas/network/dnsmasq/1.0"

# Run in libvirtd's own mount namespace ($1: mounts to hide from it), then exec it.
LAUNCH = """\
set -e
for m in $1; do umount "$m"; done
shift
exec "$@"
"""

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

_PR_SET_PDEATHSIG = 1
_libc = ctypes.CDLL(None, use_errno=True)


def _libvirt() -> Any:
    """The libvirt module, imported on use: conftest imports this file even where the
    ``libvirt`` marker skips everything because libvirt-python is missing."""
    return importlib.import_module("libvirt")


def _die_with_parent() -> None:
    """preexec_fn: SIGTERM the daemon if pytest dies without tearing down."""
    _libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)


def _is_mountpoint(path: Path) -> bool:
    target = str(path)
    with open("/proc/self/mountinfo") as f:
        return any(line.split()[4] == target for line in f)


def _read_pid(path: Path) -> int | None:
    try:
        text = path.read_text().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


def _comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


def _cmdline(pid: int) -> list[str]:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return []
    return [a.decode(errors="replace") for a in raw.split(b"\0") if a]


def _ns(pid: int | str, kind: str) -> str | None:
    try:
        return os.readlink(f"/proc/{pid}/ns/{kind}")
    except OSError:
        return None


def _pids() -> Iterator[int]:
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            yield int(entry)


def _children(pid: int) -> list[int]:
    out: list[int] = []
    with contextlib.suppress(OSError):
        for task in Path(f"/proc/{pid}/task").iterdir():
            with contextlib.suppress(OSError):
                out += [int(c) for c in (task / "children").read_text().split()]
    return out


def _kill_and_reap(pids: set[int], timeout: float = 10.0) -> None:
    """SIGKILL ``pids`` (by pid, never by name) and wait until they are gone."""
    live = {p for p in pids if not process_gone(p)}
    for pid in live:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    until(lambda: all(process_gone(p) for p in live), timeout=timeout,
          what=f"processes {sorted(live)} to exit")


def _static_busybox() -> Path:
    """A statically linked busybox (the guest rootfs has no libraries)."""
    for candidate in ("/bin/busybox", shutil.which("busybox")):
        if candidate and Path(candidate).is_file() and not _elf_interp(Path(candidate)):
            return Path(candidate)
    raise RuntimeError("a static busybox is needed for LXC guests (Debian: busybox-static)")


def _elf_interp(path: Path) -> bool:
    """True if the 64-bit little-endian ELF ``path`` asks for a dynamic loader."""
    with path.open("rb") as f:
        head = f.read(64)
        if head[:4] != b"\x7fELF" or head[4] != 2:
            return True  # not an ELF64 we understand: treat as unusable
        phoff, = struct.unpack_from("<Q", head, 0x20)
        phentsize, phnum = struct.unpack_from("<HH", head, 0x36)
        f.seek(phoff)
        table = f.read(phentsize * phnum)
    return any(struct.unpack_from("<I", table, i * phentsize)[0] == 3  # PT_INTERP
               for i in range(phnum))


def lease_file(bridge: str) -> Path:
    """libvirt's lease file for a network's bridge (written by libvirt_leaseshelper)."""
    return LEASE_DIR / f"{bridge}.status"


def read_leases(path: Path) -> list[dict[str, Any]]:
    """The JSON array in a ``.status`` file; [] if missing, empty or not valid JSON."""
    try:
        data = json.loads(path.read_text() or "[]")
    except (OSError, ValueError):
        return []
    return [e for e in data if isinstance(e, dict)] if isinstance(data, list) else []


# --- networks ------------------------------------------------------------------------


class Network:
    """A libvirt NAT network with DHCP, served by libvirt's own dnsmasq on ``bridge``."""

    def __init__(self, daemon: Libvirtd, name: str, bridge: str, subnet: str,
                 lease_minutes: int | None = None, domain: str | None = None,
                 forward: str | None = "nat",
                 dhcp_range: tuple[str, str] | None = None) -> None:
        self.daemon = daemon
        self.name = name
        self.bridge = bridge
        self.subnet = ipaddress.IPv4Network(subnet)
        hosts = list(self.subnet.hosts())
        self.gateway = str(hosts[0])
        # DHCP hands out .100-.199 of a /24 (or the upper half of other sizes).
        lo = min(99, len(hosts) // 2)
        self.range = dhcp_range or (str(hosts[lo]), str(hosts[min(lo + 99, len(hosts) - 1)]))
        self.lease_minutes = lease_minutes
        self.domain = domain
        self.forward = forward

    @property
    def status_path(self) -> Path:
        return lease_file(self.bridge)

    @property
    def xml(self) -> str:
        lease = (f"<lease expiry='{self.lease_minutes}' unit='minutes'/>"
                 if self.lease_minutes is not None else "")
        forward = f"<forward mode={quoteattr(self.forward)}/>" if self.forward else ""
        domain = (f"<domain name={quoteattr(self.domain)} localOnly='yes'/>"
                  if self.domain else "")
        return f"""\
<network xmlns:dnsmasq='{DNSMASQ_XMLNS}'>
  <name>{escape(self.name)}</name>
  {forward}
  <bridge name={quoteattr(self.bridge)} stp='off' delay='0'/>
  {domain}
  <ip address='{self.gateway}' netmask='{self.subnet.netmask}'>
    <dhcp><range start='{self.range[0]}' end='{self.range[1]}'>{lease}</range></dhcp>
  </ip>
  <dnsmasq:options>
    <!-- dnsmasq pings an address before offering it: 3 s per lease without this -->
    <dnsmasq:option value='no-ping'/>
  </dnsmasq:options>
</network>
"""

    def obj(self) -> Any:
        """The virNetwork (on the harness's lxc:///system connection)."""
        return self.daemon.conn().networkLookupByName(self.name)

    def define(self) -> Network:
        self.daemon.conn().networkDefineXML(self.xml)
        return self

    def start(self) -> Network:
        """Start it (defining a transient network if it is not defined)."""
        try:
            net = self.obj()
        except _libvirt().libvirtError:
            self.daemon.conn().networkCreateXML(self.xml)
        else:
            if not net.isActive():
                net.create()
        return self

    def destroy(self) -> None:
        with contextlib.suppress(_libvirt().libvirtError):
            self.obj().destroy()

    def undefine(self) -> None:
        with contextlib.suppress(_libvirt().libvirtError):
            self.obj().undefine()

    def is_active(self) -> bool:
        try:
            return bool(self.obj().isActive())
        except _libvirt().libvirtError:
            return False

    def dnsmasq_pid(self) -> int | None:
        """libvirt's dnsmasq for this network, per its pid file."""
        return _read_pid(RUN_DIR / "network" / f"{self.name}.pid")

    def leases(self) -> list[dict[str, Any]]:
        """Entries of the .status file ([] if missing or corrupt). Keys: ip-address,
        mac-address, hostname (only if the client sent one), client-id, expiry-time."""
        return read_leases(self.status_path)

    def lease_for(self, mac: str) -> dict[str, Any] | None:
        """The .status entry for ``mac`` with the latest expiry, if any."""
        mac = mac.lower()
        found = [e for e in self.leases() if str(e.get("mac-address", "")).lower() == mac]
        return max(found, key=lambda e: int(e.get("expiry-time", 0))) if found else None

    def dhcp_leases(self) -> list[dict[str, Any]]:
        """virNetwork.DHCPLeases(): libvirt's own reading of the same file."""
        leases: list[dict[str, Any]] = self.obj().DHCPLeases()
        return leases

    def free_address(self, exclude: Sequence[str] = ()) -> str:
        """An address in the DHCP range that no lease holds (nor ``exclude``)."""
        taken = {str(e.get("ip-address")) for e in self.leases()} | set(exclude)
        start, end = (ipaddress.IPv4Address(a) for a in self.range)
        for n in range(int(start), int(end) + 1):
            candidate = str(ipaddress.IPv4Address(n))
            if candidate not in taken:
                return candidate
        raise RuntimeError(f"no free address in {self.range} of {self.name}")


# --- guests --------------------------------------------------------------------------


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
        except _libvirt().libvirtError:
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
        ours = _ns("self", "pid")
        for child in _children(self._pids.controller):
            ns = _ns(child, "pid")
            if ns is not None and ns != ours:
                return child
        return None

    def destroy(self) -> None:
        """virDomainDestroy (shutdown() does not stop a busybox init)."""
        with contextlib.suppress(_libvirt().libvirtError):
            self.obj().destroy()

    def undefine(self) -> None:
        with contextlib.suppress(_libvirt().libvirtError):
            self.obj().undefine()

    def obj(self) -> Any:
        """The virDomain, on a fresh-if-needed lxc:///system connection."""
        return self.daemon.conn().lookupByName(self.name)

    def is_active(self) -> bool:
        try:
            return bool(self.obj().isActive())
        except _libvirt().libvirtError:
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
        guest_ns = _ns(self._pids.init, "pid")
        iface = f"eth{nic}"
        for pid in _pids():
            if _ns(pid, "pid") != guest_ns or process_gone(pid):
                continue
            argv = _cmdline(pid)
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


# --- the daemon ----------------------------------------------------------------------


class Libvirtd:
    """Private libvirtd + virtlogd; networks and guests made through it; full teardown."""

    def __init__(self, workdir: Path) -> None:
        self.dir = workdir
        self.dir.mkdir(parents=True, exist_ok=True)
        self.log = self.dir / "libvirtd.log"
        self.virtlogd_log = self.dir / "virtlogd.log"
        self.etc_copy = self.dir / "etc-libvirt"
        self.partition = f"/nsync-{os.getpid()}"
        self.proc: subprocess.Popen[bytes] | None = None
        self.virtlogd: subprocess.Popen[bytes] | None = None
        self.networks: dict[str, Network] = {}
        self.guests: dict[str, Guest] = {}
        self._cgroup_dirs: list[Path] = []  # our partition in each hierarchy
        self._conns: dict[str, Any] = {}
        self._mounted: list[Path] = []
        self._made_dirs: list[Path] = []  # mountpoints we had to create
        self._ip_forward: str | None = None
        self._template: Path | None = None
        self._counter = itertools.count()
        self._reaper: subprocess.Popen[bytes] | None = None

    # --- lifecycle ---

    def start(self) -> Libvirtd:
        """Private state dirs and config (first time), virtlogd, libvirtd; ready to use."""
        if not isolated():
            raise RuntimeError("libvirtd runs only inside the test session's namespaces")
        try:
            if not self._mounted:
                self._setup_state()
            if self.virtlogd is None or self.virtlogd.poll() is not None:
                self._start_virtlogd()
            if not self.running():
                self.start_daemon()
        except BaseException:
            with contextlib.suppress(Exception):  # the start failure is the one to see
                self.teardown()
            raise
        return self

    def _setup_state(self) -> None:
        live = _read_pid(LIBVIRTD_PID_FILE)
        if live is not None and _comm(live) == "libvirtd" and not process_gone(live):
            raise RuntimeError(f"a libvirtd ({live}) already runs in this session")
        self._ip_forward = IP_FORWARD.read_text().strip()
        self._private_config()
        self._make_partition()
        self._start_reaper()
        for d in (*STATE_DIRS, ETC_DIR):
            if not d.exists():
                d.mkdir(parents=True)  # only a mountpoint; removed again at teardown
                self._made_dirs.append(d)
        for d in STATE_DIRS:
            subprocess.run(["mount", "-t", "tmpfs", "-o", "mode=0755", "nsync-libvirt", str(d)],
                           check=True)
            self._mounted.append(d)
        subprocess.run(["mount", "--bind", str(self.etc_copy), str(ETC_DIR)], check=True)
        self._mounted.append(ETC_DIR)

    def _start_reaper(self) -> None:
        """libvirt_reaper.py: cleans up after us if pytest dies without teardown()."""
        with (self.dir / "reaper.log").open("ab") as log:
            self._reaper = subprocess.Popen(
                [sys.executable, str(Path(__file__).with_name("libvirt_reaper.py")),
                 self.partition.strip("/") + ".partition", str(LEASE_DIR)],
                stdin=subprocess.PIPE, stdout=log, stderr=log, start_new_session=True)

    def _stop_reaper(self) -> None:
        """Tell the reaper teardown is done (it exits without touching anything)."""
        if self._reaper is None:
            return
        assert self._reaper.stdin is not None
        with contextlib.suppress(BrokenPipeError):
            self._reaper.stdin.write(b"done\n")
            self._reaper.stdin.close()
        terminate(self._reaper)
        self._reaper = None

    def _private_config(self) -> None:
        """WORKDIR/etc-libvirt: the machine's *.conf and nwfilter/ only.

        Left out on purpose: hooks (a host's hook scripts would run on our
        networks and guests), the machine's domain/network/pool definitions
        (tests would see its VMs and its "default" network), secrets, and every
        autostart link. libvirtd writes the tests' persistent definitions here.
        """
        if self.etc_copy.exists():
            shutil.rmtree(self.etc_copy)
        self.etc_copy.mkdir(mode=0o755)
        if not ETC_DIR.is_dir():
            return  # a minimal private dir: libvirtd runs on its built-in defaults
        for item in ETC_DIR.iterdir():
            if item.is_file() and item.suffix == ".conf":
                shutil.copy2(item, self.etc_copy / item.name)
        if (ETC_DIR / "nwfilter").is_dir():
            shutil.copytree(ETC_DIR / "nwfilter", self.etc_copy / "nwfilter",
                            ignore=shutil.ignore_patterns("autostart"))

    def _start_virtlogd(self) -> None:
        with self.virtlogd_log.open("ab") as log:
            self.virtlogd = subprocess.Popen(["virtlogd"], stdin=subprocess.DEVNULL,
                                             stdout=log, stderr=log, start_new_session=True,
                                             preexec_fn=_die_with_parent)
        until(lambda: self._alive(self.virtlogd, self.virtlogd_log, "virtlogd")
              and VIRTLOGD_SOCK.exists(), timeout=10, what="virtlogd's socket")

    def start_daemon(self) -> int:
        """Start libvirtd alone (state, config and guests as they are); returns its pid."""
        assert not self.running(), "libvirtd already running"
        self._drop_conns()
        hide = " ".join(str(m) for m in (UNIFIED,) if _is_mountpoint(m))
        argv = ["unshare", "-m", "--propagation", "slave", "sh", "-c", LAUNCH,
                "libvirtd-launch", hide, "libvirtd"]
        with self.log.open("ab") as log:
            # unshare and sh exec: self.proc.pid is libvirtd's own pid.
            self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                         start_new_session=True, preexec_fn=_die_with_parent)
        until(lambda: self._alive(self.proc, self.log, "libvirtd") and self._answers(),
              timeout=20, interval=0.02, what="libvirtd to answer on lxc:///system")
        pid = _read_pid(LIBVIRTD_PID_FILE)
        assert pid == self.proc.pid, f"{LIBVIRTD_PID_FILE} says {pid}, started {self.proc.pid}"
        return pid

    @staticmethod
    def _alive(proc: subprocess.Popen[bytes] | None, log: Path, what: str) -> bool:
        assert proc is not None
        if proc.poll() is not None:
            raise AssertionError(f"{what} exited {proc.returncode}:\n{log.read_text()[-4000:]}")
        return True

    @staticmethod
    def _answers() -> bool:
        r = subprocess.run(["virsh", "-c", LXC_URI, "version"], capture_output=True, timeout=30)
        return r.returncode == 0

    @property
    def pid(self) -> int:
        assert self.proc is not None, "libvirtd not started"
        return self.proc.pid

    @property
    def original_ip_forward(self) -> str | None:
        """net.ipv4.ip_forward (session netns) before libvirt set it; restored at teardown."""
        return self._ip_forward

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self) -> int | None:
        """SIGTERM libvirtd by pid and reap it (guests and dnsmasq keep running)."""
        self._drop_conns()
        rc = terminate(self.proc, timeout=15)
        return rc

    def kill(self) -> int | None:
        """SIGKILL libvirtd by pid and reap it: a crash, as far as guests can tell."""
        self._drop_conns()
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.kill()
        return self.proc.wait(timeout=15)

    def restart(self, kill: bool = False) -> int:
        """Stop (or kill) libvirtd and start it again on the same state; returns the new pid."""
        if kill:
            self.kill()
        else:
            self.stop()
        return self.start_daemon()

    def ensure_running(self) -> Libvirtd:
        """start() if never started or torn down; start_daemon() if a test left it stopped."""
        if not self._mounted or self.virtlogd is None or self.virtlogd.poll() is not None:
            return self.start()
        if not self.running():
            self.start_daemon()
        return self

    # --- connections and tools ---

    def conn(self, uri: str = LXC_URI) -> Any:
        """A cached read-write virConnect; reopened after libvirtd restarted."""
        c = self._conns.get(uri)
        if c is not None:
            try:
                if c.isAlive():
                    return c
            except _libvirt().libvirtError:
                pass
            with contextlib.suppress(Exception):
                c.close()
        c = _libvirt().open(uri)
        self._conns[uri] = c
        return c

    def _drop_conns(self) -> None:
        for c in self._conns.values():
            with contextlib.suppress(Exception):
                c.close()
        self._conns.clear()

    def virsh(self, *args: str, uri: str = LXC_URI,
              check: bool = True) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["virsh", "-c", uri, *args], check=check, capture_output=True,
                              text=True, timeout=30)

    # --- networks and guests ---

    def network(self, name: str | None = None, *, bridge: str | None = None,
                subnet: str | None = None, lease_minutes: int | None = None,
                domain: str | None = None, forward: str | None = "nat",
                dhcp_range: tuple[str, str] | None = None,
                persistent: bool = True, start: bool = True) -> Network:
        """Define (if persistent) and start a NAT network; defaults are unique per session:
        nsnetN on bridge nsvirbrN with 10.213.N.0/24, DHCP .100-.199, 1 h leases.

        ``lease_minutes``: libvirt >= 6.3 puts <lease expiry=.../> in the range; it
        rejects anything under 2 minutes, and 0 means infinite ("expiry-time": 0).
        ``forward=None``: an isolated network (no NAT rules, ip_forward untouched).
        ``dhcp_range``: (first, last) address instead of .100-.199.
        """
        n = next(self._counter) % 250
        net = Network(self, name or f"nsnet{n}", bridge or f"nsvirbr{n}",
                      subnet or f"10.213.{n}.0/24", lease_minutes=lease_minutes,
                      domain=domain, forward=forward, dhcp_range=dhcp_range)
        self.networks[net.name] = net
        if persistent:
            net.define()
        if start:
            net.start()
        return net

    def network_named(self, net: Network | str) -> Network:
        if isinstance(net, Network):
            return net
        try:
            return self.networks[net]
        except KeyError:
            raise KeyError(f"network {net!r} was not made with Libvirtd.network()") from None

    def guest(self, name: str, nics: Sequence[Nic | Network | str], *,
              dhcp_hostname: str | None = None, send_hostname: bool = True,
              persistent: bool = True, start: bool = True) -> Guest:
        """A busybox LXC guest with one NIC per entry of ``nics`` (eth0, eth1, ...).

        udhcpc on each NIC sends ``dhcp_hostname`` (default: the domain name; none
        if ``send_hostname`` is false). Persistent: define() then create().
        """
        spec = [n if isinstance(n, Nic) else Nic(n) for n in nics]
        g = Guest(self, name, spec, dhcp_hostname=dhcp_hostname, send_hostname=send_hostname)
        self.guests[name] = g
        if persistent:
            g.define()
        if start:
            g.start()
        return g

    def rootfs_template(self) -> Path:
        """A busybox rootfs shared (hard-linked) by every guest of this daemon."""
        if self._template is not None:
            return self._template
        t = self.dir / "rootfs-template"
        if t.exists():
            shutil.rmtree(t)
        for d in ("bin", "dev", "proc", "sys", "tmp", "run", "etc", "root", "var"):
            (t / d).mkdir(parents=True)
        busybox = t / "bin" / "busybox"
        shutil.copy2(_static_busybox(), busybox)
        applets = subprocess.run([str(busybox), "--list"], check=True, capture_output=True,
                                 text=True).stdout.split()
        for applet in applets:
            if applet != "busybox":
                (t / "bin" / applet).symlink_to("busybox")
        (t / "etc" / "passwd").write_text("root:x:0:0:root:/root:/bin/sh\n")
        self._template = t
        return t

    # --- cleanup ---

    def cleanup(self) -> None:
        """After a test: every domain and network gone, their processes and leases too.

        libvirtd is (re)started first if the test left it stopped. The daemon,
        its mounts and config stay for the next test.
        """
        self.ensure_running()
        lv = _libvirt()
        conn = self.conn()
        for dom in conn.listAllDomains():
            with contextlib.suppress(lv.libvirtError):
                if dom.isActive():
                    dom.destroy()
            with contextlib.suppress(lv.libvirtError):
                if dom.isPersistent():
                    dom.undefine()
        bridges = []
        for net in conn.listAllNetworks():
            with contextlib.suppress(lv.libvirtError):
                bridges.append(net.bridgeName())
            with contextlib.suppress(lv.libvirtError):
                if net.isActive():
                    net.destroy()
            with contextlib.suppress(lv.libvirtError):
                if net.isPersistent():
                    net.undefine()
        self._kill_strays()
        left = self.leftovers()
        assert not left, f"still running after cleanup: {left}"
        # Leases outlive guests and networks; the next test starts from none.
        for bridge in bridges + [n.bridge for n in self.networks.values()]:
            for suffix in (".status", ".macs"):
                with contextlib.suppress(FileNotFoundError):
                    (LEASE_DIR / f"{bridge}{suffix}").unlink()
        self.networks.clear()
        self.guests.clear()

    def _ours(self, pid: int, daemons: bool, guest_pidns: set[str]) -> str | None:
        """``comm`` if ``pid`` is a live process this harness is answerable for, else None.

        Only processes in this session's network namespace or in one of its
        guests count: the machine's own libvirt and other test sessions are
        never listed, let alone killed.
        """
        if process_gone(pid):
            return None
        comm = _comm(pid)
        # A guest's processes: in our cgroup partition, or (started by Guest.exec,
        # which does not change cgroups) in the pid namespace of a live guest init.
        if self._in_partition(pid) or _ns(pid, "pid") in guest_pidns:
            return comm or "?"
        if _ns(pid, "net") != _ns("self", "net"):
            return None
        if comm == "libvirt_lxc" or (daemons and comm in ("libvirtd", "virtlogd")):
            return comm
        if comm == "dnsmasq" and any(str(LEASE_DIR) in a for a in _cmdline(pid)):
            return comm  # libvirt's, not a test's own dnsmasq
        return None

    def _guest_pid_namespaces(self) -> set[str]:
        """Pid namespaces of guest inits still alive (a dead init's number may be reused)."""
        found = set()
        for g in self.guests.values():
            init = g.init_pid
            if init is not None and not process_gone(init):
                ns = _ns(init, "pid")
                if ns is not None:
                    found.add(ns)
        return found

    def leftovers(self, daemons: bool = False) -> list[str]:
        """Live libvirt_lxc controllers, guest processes and libvirt's dnsmasq (and
        libvirtd/virtlogd if ``daemons``) of this session, as "pid comm"."""
        found = []
        guest_pidns = self._guest_pid_namespaces()
        for pid in _pids():
            comm = self._ours(pid, daemons, guest_pidns)
            if comm is not None:
                found.append(f"{pid} {comm}")
        return found

    def _kill_strays(self) -> None:
        """Controllers, guests and dnsmasqs still alive after the API cleanup: by pid."""
        guest_pidns = self._guest_pid_namespaces()
        pids = {pid for pid in _pids() if self._ours(pid, False, guest_pidns) is not None}
        for pidfile in [*RUN_DIR.glob("lxc/*.pid"), *RUN_DIR.glob("network/*.pid")]:
            pid = _read_pid(pidfile)
            if pid is not None and self._ours(pid, False, guest_pidns) is not None:
                pids.add(pid)
        # What destroy() just stopped may still be on its way out.
        with contextlib.suppress(AssertionError):
            until(lambda: all(process_gone(p) for p in pids), timeout=3)
        _kill_and_reap(pids)

    def teardown(self) -> None:
        """Everything, by pid, even after a failed test; safe to call twice."""
        errors: list[BaseException] = []

        def step(fn: Callable[[], object]) -> None:
            try:
                fn()
            except Exception as e:  # keep tearing down; report the first failure
                errors.append(e)

        if self._mounted:
            if not self.running() and self.virtlogd is not None:
                step(self.start_daemon)  # so guests go through libvirt (cgroups and all)
            if self.running():
                step(self.cleanup)
        self._drop_conns()
        step(lambda: terminate(self.proc, timeout=15))
        step(lambda: terminate(self.virtlogd, timeout=15))
        self.proc = self.virtlogd = None
        step(self._kill_strays)
        step(self._remove_firewall)
        if self._ip_forward is not None:
            step(lambda: IP_FORWARD.write_text(self._ip_forward or "0"))
            self._ip_forward = None
        def umount(path: Path) -> None:
            subprocess.run(["umount", str(path)], check=True, capture_output=True)

        for d in reversed(self._mounted):
            step(functools.partial(umount, d))
        self._mounted.clear()
        for d in self._made_dirs:
            step(d.rmdir)
        self._made_dirs.clear()
        if isolated():  # the session's private /run
            shutil.rmtree(RUN_DIR, ignore_errors=True)
            for f in (LIBVIRTD_PID_FILE, VIRTLOGD_PID_FILE):
                f.unlink(missing_ok=True)
        step(self._remove_cgroups)
        step(self._stop_reaper)
        self.networks.clear()
        self.guests.clear()
        if errors:
            raise errors[0]

    @staticmethod
    def _cgroup_hierarchies() -> list[Path]:
        """Mount points of the cgroup hierarchies libvirtd sees (not the hidden unified)."""
        found = []
        with open("/proc/self/mountinfo") as f:
            for line in f:
                fields = line.split()
                fstype = fields[fields.index("-") + 1]
                point = Path(fields[4])
                if fstype in ("cgroup", "cgroup2") and point != UNIFIED:
                    found.append(point)
        return found

    def _make_partition(self) -> None:
        name = self.partition.strip("/") + ".partition"
        for root in self._cgroup_hierarchies():
            path = root / name
            try:
                path.mkdir(exist_ok=True)
            except OSError:
                continue  # a read-only or foreign hierarchy: libvirt cannot use it either
            self._cgroup_dirs.append(path)
            # v1 cpuset: a new cgroup has no CPUs or memory nodes until given its parent's.
            for knob in ("cpuset.cpus", "cpuset.mems"):
                if (path / knob).exists() and not (path / knob).read_text().strip():
                    (path / knob).write_text((root / knob).read_text())

    def _in_partition(self, pid: int) -> bool:
        marker = f"/{self.partition.strip('/')}.partition/"
        try:
            return marker in Path(f"/proc/{pid}/cgroup").read_text()
        except OSError:
            return False

    def _remove_cgroups(self) -> None:
        """rmdir our partition and what libvirt left in it, deepest first."""
        for path in self._cgroup_dirs:
            subs = sorted((p for p in path.rglob("*") if p.is_dir()),
                          key=lambda p: len(p.parts), reverse=True)
            for d in [*subs, path]:
                with contextlib.suppress(FileNotFoundError):
                    d.rmdir()
        self._cgroup_dirs.clear()

    @staticmethod
    def _remove_firewall() -> None:
        """Drop libvirt's LIBVIRT_* chains and the jumps to them, one iptables-restore per
        family (session netns only; other chains, e.g. netavark's, untouched)."""
        for family in ("iptables", "ip6tables"):
            if shutil.which(family) is None or shutil.which(f"{family}-restore") is None:
                continue
            script: list[str] = []
            for table in ("filter", "nat", "mangle"):
                r = subprocess.run([family, "-w", "-t", table, "-S"], capture_output=True,
                                   text=True, timeout=30)
                rules = [shlex.split(ln) for ln in r.stdout.splitlines()]
                chains = [ln[1] for ln in rules if ln[:1] == ["-N"] and
                          ln[1].startswith("LIBVIRT_")]
                if r.returncode != 0 or not chains:
                    continue
                script.append(f"*{table}")
                script += [shlex.join(["-D", *ln[1:]]) for ln in rules
                           if ln[:1] == ["-A"] and "-j" in ln and
                           ln[ln.index("-j") + 1] in chains]
                script += [f"-F {c}" for c in chains] + [f"-X {c}" for c in chains]
                script.append("COMMIT")
            if script:
                subprocess.run([f"{family}-restore", "-w", "--noflush"], check=True,
                               input="\n".join(script) + "\n", capture_output=True,
                               text=True, timeout=30)
