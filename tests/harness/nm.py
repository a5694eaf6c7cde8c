"""A real NetworkManager (dns=dnsmasq) in its own network namespace, with its own dnsmasq.

Layout, all made and removed by the test:

    netns NAME        veth0 (managed by NM: 10.77.0.2/24, dns 10.77.0.1), lo,
                      NetworkManager and the dnsmasq it spawns (127.0.0.1:53)
    netns NAME-up     veth1 10.77.0.1/24: the "upstream" side of the link
    WORKDIR/etc/NetworkManager      bind-mounted over /etc/NetworkManager for NM only
    WORKDIR/var/lib/NetworkManager  bind-mounted over /var/lib/NetworkManager for NM only
    /run/NetworkManager             NM's runtime dir, on the session's private /run

NM never runs outside its namespace and never sees the machine's config or
state: the bind mounts live in NM's own mount namespace (``ip netns exec``
makes one per command), and its config is passed with explicit options.
Its bus is a unix socket, so clients in the test process's network namespace
(nmcli, namesync-agent, dbus-fast) use it as they would the system bus. The
pid namespace is shared: a SIGHUP from the test process reaches NM's dnsmasq.

``/run/NetworkManager`` is the real default path (the agent's default
``pid_file`` finds NM's dnsmasq there), so one NetworkManager runs at a time.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
from pathlib import Path

from .dbus import SystemBus
from .dns import Answer, dig
from .isolation import isolated
from .netns import NetNS, add_veth, unique_name
from .proc import comm, process_gone, terminate
from .wait import until

NM = "org.freedesktop.NetworkManager"
NM_PATH = "/org/freedesktop/NetworkManager"
NM_DNSMASQ = "org.freedesktop.NetworkManager.dnsmasq"
DNS_MANAGER_PATH = "/org/freedesktop/NetworkManager/DnsManager"
DNS_MANAGER_IFACE = "org.freedesktop.NetworkManager.DnsManager"
RUN_DIR = Path("/run/NetworkManager")
DNSMASQ_PID_FILE = RUN_DIR / "dnsmasq.pid"
ETC_DIR = Path("/etc/NetworkManager")
STATE_DIR = Path("/var/lib/NetworkManager")

RELOAD_DNS_FULL = 0x4  # restarts NM's dnsmasq, which then reads new dnsmasq.d drop-ins

NM_CONF = """\
[main]
plugins=keyfile
dns={dns}
rc-manager=unmanaged
no-auto-default=*
hostname-mode=none
auth-polkit=false

[keyfile]
unmanaged-devices=except:interface-name:{device}

[connectivity]
enabled=false
"""

# In NM's mount namespace (made by `ip netns exec`, which also mounts the
# netns's own /sys): /sys read-only makes NM treat the netns as a container and
# not wait for udev (else every device stays unmanaged), and the bind mounts
# give it the test's config and state directories.
LAUNCH = """\
set -e
mount -o remount,ro /sys
mount --bind "$1" /etc/NetworkManager
mount --bind "$2" /var/lib/NetworkManager
shift 2
exec "$@"
"""


def _is_dnsmasq(pid: int) -> bool:
    return comm(pid) == "dnsmasq"


class NetworkManager:
    device = "veth0"
    upstream_device = "veth1"
    address = "10.77.0.2/24"
    upstream_address = "10.77.0.1"
    connection = "t0"
    launch = LAUNCH  # the shell that sets up NM's mount namespace, then execs NM

    def __init__(self, workdir: Path, bus: SystemBus | None = None,
                 name: str | None = None, dns: str = "dnsmasq") -> None:
        self.dns = dns  # NetworkManager.conf [main] dns=; only "dnsmasq" spawns a dnsmasq
        self.dir = workdir
        self.dir.mkdir(parents=True, exist_ok=True)
        self._own_bus = bus is None
        self.bus = bus if bus is not None else SystemBus(self.dir / "bus")
        self.netns = NetNS(name or unique_name("nsync-nm"))
        self.upstream = NetNS(self.netns.name + "-up")
        self.etc_dir = self.dir / "etc" / "NetworkManager"
        self.state_dir = self.dir / "var" / "lib" / "NetworkManager"
        self.system_conf_dir = self.dir / "usr-lib-conf.d"  # empty: no distro defaults
        self.dnsmasq_d = self.etc_dir / "dnsmasq.d"  # NM's --conf-dir, seen from the test
        self.dnsmasq_log = self.dir / "nm-dnsmasq.log"
        self.log = self.dir / "NetworkManager.log"
        self.pid_file = DNSMASQ_PID_FILE
        self.proc: subprocess.Popen[bytes] | None = None
        self._dnsmasq_pids: set[int] = set()  # every dnsmasq NM spawned for us: stop kills them

    # --- addresses and state -------------------------------------------------

    @property
    def bus_address(self) -> str:
        return self.bus.address

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def dnsmasq_pid(self) -> int | None:
        """NM's dnsmasq per /run/NetworkManager/dnsmasq.pid (may be stale: check the bus too)."""
        try:
            text = self.pid_file.read_text().strip()
        except FileNotFoundError:
            return None
        return int(text) if text.isdigit() else None

    def dnsmasq_bus_pid(self) -> int | None:
        """Pid of the owner of org.freedesktop.NetworkManager.dnsmasq, None if unowned."""
        return self.bus.owner_pid(NM_DNSMASQ)

    def dns_mode(self) -> str:
        reply = self.bus.call(NM, DNS_MANAGER_PATH, "org.freedesktop.DBus.Properties.Get",
                              f"string:{DNS_MANAGER_IFACE}", "string:Mode")
        return reply.split()[-1]  # "variant       dnsmasq"

    def reload(self, flags: int = RELOAD_DNS_FULL) -> None:
        """org.freedesktop.NetworkManager.Reload(flags); 4 (DNS_FULL) restarts its dnsmasq."""
        self.bus.call(NM, NM_PATH, f"{NM}.Reload", f"uint32:{flags}")

    def wait_dnsmasq(self, not_pid: int | None = None, timeout: float = 10.0) -> int:
        """Wait for a settled dnsmasq (other than ``not_pid``); returns its pid.

        Settled: it owns its bus name, the pid file names it, and it has taken
        NM's first upstream servers over D-Bus (SetServers). NM follows each
        SetServers with a cache clear that re-reads every addn-hosts file, so a
        test that counts ``read FILE`` lines takes its baseline after this.
        """

        def probe() -> int:
            pid = self.dnsmasq_bus_pid()
            if pid is None or pid == not_pid or self.dnsmasq_pid() != pid:
                return 0
            self._dnsmasq_pids.add(pid)
            return pid if self._took_servers(pid) else 0

        return until(probe, timeout=timeout, what="NetworkManager's dnsmasq to settle")

    def dnsmasq_log_lines(self, pid: int | None = None) -> list[str]:
        """Messages of NM's dnsmasq log (all its processes, or only ``pid``'s)."""
        if not self.dnsmasq_log.exists():
            return []
        tag = re.compile(r"dnsmasq\[(\d+)\]: (.*)")
        return [m.group(2) for m in map(tag.search, self.dnsmasq_log.read_text().splitlines())
                if m and (pid is None or int(m.group(1)) == pid)]

    def _took_servers(self, pid: int) -> bool:
        lines = self.dnsmasq_log_lines(pid)
        marks = [i for i, m in enumerate(lines) if m == "setting upstream servers from DBus"]
        # "failed to load names": the addn-hosts file does not exist yet.
        return bool(marks) and any(m == "cleared cache" or m.startswith(("read ", "failed to load"))
                                   for m in lines[marks[0]:])

    def query(self, name: str, rtype: str = "A") -> Answer:
        """Ask NM's dnsmasq (127.0.0.1:53 inside NM's netns) with dig."""
        return dig(name, rtype, prefix=("nsenter", f"--net={self.netns.path}"))

    def reads(self, addn_hosts: Path, pid: int | None = None) -> list[int]:
        """Counts from ``read FILE - N names`` lines for ``addn_hosts`` (of ``pid`` only).

        NM's dnsmasq re-reads on SIGHUP and also whenever NM pushes servers
        over D-Bus; see wait_dnsmasq().
        """
        pat = re.compile(rf"read {re.escape(str(addn_hosts))} - (\d+) names")
        return [int(m.group(1)) for m in map(pat.match, self.dnsmasq_log_lines(pid)) if m]

    def nmcli(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """The real nmcli, talking to this NM over its bus (from the test's netns)."""
        return subprocess.run(["nmcli", *args], env=self.bus.env(), check=check,
                              capture_output=True, text=True, timeout=30)

    # --- lifecycle -----------------------------------------------------------

    def start(self) -> NetworkManager:
        """Bus (unless given), namespaces, config, NM; connection up; its dnsmasq serving."""
        if not isolated():
            raise RuntimeError("NetworkManager runs only inside the test session's namespaces")
        for d in (ETC_DIR, STATE_DIR):
            if not d.is_dir():
                raise RuntimeError(f"{d} missing: nothing to bind-mount NM's private copy over")
        live = self.dnsmasq_pid()
        if live is not None and _is_dnsmasq(live) and not process_gone(live):
            raise RuntimeError(f"another NetworkManager's dnsmasq ({live}) owns {self.pid_file}")
        try:
            if self._own_bus:
                self.bus.start()
            self._make_namespaces()
            self._write_config()
            self.start_daemon()
        except BaseException:
            self.stop()
            raise
        return self

    def _make_namespaces(self) -> None:
        self.netns.add()
        self.upstream.add()
        add_veth(self.netns, self.device, self.upstream, self.upstream_device)
        self.upstream.ip("addr", "add", f"{self.upstream_address}/24", "dev",
                         self.upstream_device)
        self.upstream.ip("link", "set", self.upstream_device, "up")

    def _write_config(self) -> None:
        self.dir.chmod(0o755)  # NM's dnsmasq runs as nobody; it must reach the log and files
        for sub in ("conf.d", "dnsmasq.d", "dnsmasq-shared.d", "system-connections",
                    "dispatcher.d"):
            (self.etc_dir / sub).mkdir(parents=True, exist_ok=True)
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.system_conf_dir.mkdir(exist_ok=True)
        conf = NM_CONF.format(device=self.device, dns=self.dns)
        (self.etc_dir / "NetworkManager.conf").write_text(conf)
        # The only way to see this dnsmasq's log (no syslog in the test).
        (self.dnsmasq_d / "00-test-log.conf").write_text(f"log-facility={self.dnsmasq_log}\n")

    def start_daemon(self) -> int:
        """Start NM (config already written); returns the pid of its settled dnsmasq.

        On a first start this adds and activates the connection; after
        ``stop_daemon()`` NM finds the stored connection and the device's
        runtime state in /run/NetworkManager and takes the device over again.
        A dnsmasq left by the previous NM is killed by the new NM (via the pid
        file) and replaced: the returned pid is always a new one.
        """
        assert not self.running(), "NetworkManager already running"
        stale = self.dnsmasq_pid()
        argv = self.netns.exec_argv(
            "sh", "-c", self.launch, "nm-launch", str(self.etc_dir), str(self.state_dir),
            "NetworkManager", "--no-daemon", "--debug",
            f"--system-config-dir={self.system_conf_dir}")
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(argv, env=self.bus.env(), stdin=subprocess.DEVNULL,
                                         stdout=log, stderr=log)
        until(lambda: self._alive() and self.bus.has_owner(NM), timeout=20,
              what="NetworkManager on the bus")
        state = until(self._managed_state, timeout=20,
                      what=f"NetworkManager to manage {self.device}")
        if state != "connected":  # "disconnected", or "connected (externally)" after a restart
            stored = self.etc_dir / "system-connections" / f"{self.connection}.nmconnection"
            if not stored.exists():
                self.nmcli("connection", "add", "type", "ethernet", "ifname", self.device,
                           "con-name", self.connection, "ipv4.method", "manual",
                           "ipv4.addresses", self.address, "ipv4.dns", self.upstream_address,
                           "ipv6.method", "disabled",
                           # activated once, by the `up` below (autoconnect would race it)
                           "connection.autoconnect", "no")
            self.nmcli("--wait", "20", "connection", "up", self.connection)
        if self.dns != "dnsmasq":
            return 0  # no dnsmasq in this mode
        return self.wait_dnsmasq(not_pid=stale)

    def _alive(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise AssertionError(f"NetworkManager exited {self.proc.returncode}:\n"
                                 + self.log.read_text()[-4000:])
        return True

    def _managed_state(self) -> str:
        """veth0's state once NM manages it and is not in the middle of a change."""
        self._alive()
        state = self._device_state() or ""
        return state if state.startswith(("connected", "disconnected")) else ""

    def _device_state(self) -> str | None:
        """veth0's state once NM manages it ("disconnected", "connected", ...), else None."""
        r = self.nmcli("-t", "-f", "DEVICE,STATE", "device", check=False)
        for line in r.stdout.splitlines():
            dev, _, state = line.partition(":")
            if dev == self.device and state not in ("unmanaged", "unavailable", ""):
                return state
        return None

    def stop_daemon(self) -> int | None:
        """SIGTERM NetworkManager only, as ``systemctl stop`` would; returns its exit code.

        NM leaves its dnsmasq running (still owning its bus name and pid file),
        and the bus and namespaces stay: the "NM stopped" state.
        """
        rc = terminate(self.proc, timeout=15)
        self.proc = None
        return rc

    def restart(self) -> int:
        """Stop NM and start it again with the same config; returns the new dnsmasq pid."""
        self.stop_daemon()
        return self.start_daemon()

    def stop(self) -> None:
        """Everything, by pid: NM, every dnsmasq it spawned, the namespaces, the bus if ours."""
        self.stop_daemon()
        pids = set(self._dnsmasq_pids)
        live = self.dnsmasq_pid()
        if live is not None:
            pids.add(live)
        pids = {p for p in pids if _is_dnsmasq(p) and not process_gone(p)}
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
        until(lambda: all(process_gone(p) for p in pids), timeout=10,
              what=f"NetworkManager's dnsmasq {sorted(pids)} to exit")
        self._dnsmasq_pids.clear()
        self.netns.delete()  # kills by pid whatever is still inside, as a safety net
        self.upstream.delete()
        if isolated() and RUN_DIR.is_dir():  # on the session's private /run
            shutil.rmtree(RUN_DIR, ignore_errors=True)
        if self._own_bus:
            self.bus.stop()


class SessionNS:
    """The test session's own network namespace, shaped like a NetNS for the harness.

    For daemons that must share the session's loopback with libvirtd (which runs
    there, tests/harness/libvirt): each command gets a private mount namespace of
    its own (as ``ip netns exec`` would), and ``delete()`` removes only ``links``.
    """

    name = "session"

    def __init__(self, *links: str) -> None:
        self.links = links

    @property
    def path(self) -> Path:
        return Path(f"/proc/{os.getpid()}/ns/net")

    def add(self) -> SessionNS:
        return self

    def exec_argv(self, *argv: str) -> list[str]:
        return ["unshare", "-m", "--propagation", "private", *argv]

    def ip(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["ip", *args], check=check, capture_output=True, text=True,
                              timeout=30)

    def delete(self) -> None:
        for link in self.links:
            self.ip("link", "del", link, check=False)


# The session's /sys is shared with everything else in the session: a read-only
# *bind* remount changes this mount only (a plain remount would make the sysfs
# superblock, and with it the session's /sys, read-only).
SESSION_LAUNCH = """\
set -e
mount --bind /sys /sys
mount -o remount,bind,ro /sys
mount --bind "$1" /etc/NetworkManager
mount --bind "$2" /var/lib/NetworkManager
shift 2
exec "$@"
"""


class SessionNetworkManager(NetworkManager):
    """NetworkManager in the session's network namespace, beside libvirtd: its dnsmasq on
    127.0.0.1:53 is what libvirt's dnsmasq forwards to on a dns=dnsmasq host. It manages
    only its own veth (peer in a netns of its own); every other link stays unmanaged."""

    device = "nsnmveth0"
    address = "10.78.53.2/24"
    upstream_address = "10.78.53.1"
    launch = SESSION_LAUNCH

    def __init__(self, workdir: Path) -> None:
        super().__init__(workdir, name=unique_name("nsync-nms"))
        self.netns = SessionNS(self.device)  # type: ignore[assignment]
