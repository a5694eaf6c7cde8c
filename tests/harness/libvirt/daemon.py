"""The private libvirtd + virtlogd: start, restart, networks and guests, full teardown.

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
Guests' cgroups go under a per-session partition (cgroups.py).
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import os
import shutil
import subprocess
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from ..isolation import isolated
from ..proc import (
    cmdline,
    comm,
    die_with_parent,
    is_mountpoint,
    kill_and_reap,
    namespace,
    pids,
    process_gone,
    read_pid,
    start_reaper,
    stop_reaper,
    terminate,
)
from ..wait import until
from .base import (
    ETC_DIR,
    IP_FORWARD,
    LEASE_DIR,
    LIBVIRTD_PID_FILE,
    LXC_URI,
    RUN_DIR,
    STATE_DIRS,
    UNIFIED,
    VIRTLOGD_PID_FILE,
    VIRTLOGD_SOCK,
    libvirt,
)
from .busybox import build_template
from .cgroups import Partition
from .firewall import remove_libvirt_chains
from .guest import Guest, Nic
from .network import Network

# Run in libvirtd's own mount namespace ($1: mounts to hide from it), then exec it.
LAUNCH = """\
set -e
for m in $1; do umount "$m"; done
shift
exec "$@"
"""


class Libvirtd:
    """Private libvirtd + virtlogd; networks and guests made through it; full teardown."""

    def __init__(self, workdir: Path) -> None:
        self.dir = workdir
        self.dir.mkdir(parents=True, exist_ok=True)
        self.log = self.dir / "libvirtd.log"
        self.virtlogd_log = self.dir / "virtlogd.log"
        self.etc_copy = self.dir / "etc-libvirt"
        self.cgroups = Partition(f"/nsync-{os.getpid()}")
        self.partition = self.cgroups.name
        self.proc: subprocess.Popen[bytes] | None = None
        self.virtlogd: subprocess.Popen[bytes] | None = None
        self.networks: dict[str, Network] = {}
        self.guests: dict[str, Guest] = {}
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
        live = read_pid(LIBVIRTD_PID_FILE)
        if live is not None and comm(live) == "libvirtd" and not process_gone(live):
            raise RuntimeError(f"a libvirtd ({live}) already runs in this session")
        self._ip_forward = IP_FORWARD.read_text().strip()
        self._private_config()
        self.cgroups.make()
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
        self._reaper = start_reaper(Path(__file__).with_name("reaper.py"),
                                    [self.cgroups.dirname, str(LEASE_DIR)],
                                    self.dir / "reaper.log")

    def _stop_reaper(self) -> None:
        stop_reaper(self._reaper)
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
                                             preexec_fn=die_with_parent)
        until(lambda: self._alive(self.virtlogd, self.virtlogd_log, "virtlogd")
              and VIRTLOGD_SOCK.exists(), timeout=10, what="virtlogd's socket")

    def start_daemon(self) -> int:
        """Start libvirtd alone (state, config and guests as they are); returns its pid."""
        assert not self.running(), "libvirtd already running"
        self._drop_conns()
        hide = " ".join(str(m) for m in (UNIFIED,) if is_mountpoint(m))
        argv = ["unshare", "-m", "--propagation", "slave", "sh", "-c", LAUNCH,
                "libvirtd-launch", hide, "libvirtd"]
        with self.log.open("ab") as log:
            # unshare and sh exec: self.proc.pid is libvirtd's own pid.
            self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                         start_new_session=True, preexec_fn=die_with_parent)
        until(lambda: self._alive(self.proc, self.log, "libvirtd") and self._answers(),
              timeout=20, interval=0.02, what="libvirtd to answer on lxc:///system")
        pid = read_pid(LIBVIRTD_PID_FILE)
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
            except libvirt().libvirtError:
                pass
            with contextlib.suppress(Exception):
                c.close()
        c = libvirt().open(uri)
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
        if self._template is None:
            self._template = build_template(self.dir / "rootfs-template")
        return self._template

    # --- cleanup ---

    def cleanup(self) -> None:
        """After a test: every domain and network gone, their processes and leases too.

        libvirtd is (re)started first if the test left it stopped. The daemon,
        its mounts and config stay for the next test.
        """
        self.ensure_running()
        lv = libvirt()
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
        name = comm(pid)
        # A guest's processes: in our cgroup partition, or (started by Guest.exec,
        # which does not change cgroups) in the pid namespace of a live guest init.
        if self.cgroups.holds(pid) or namespace(pid, "pid") in guest_pidns:
            return name or "?"
        if namespace(pid, "net") != namespace("self", "net"):
            return None
        if name == "libvirt_lxc" or (daemons and name in ("libvirtd", "virtlogd")):
            return name
        if name == "dnsmasq" and any(str(LEASE_DIR) in a for a in cmdline(pid)):
            return name  # libvirt's, not a test's own dnsmasq
        return None

    def _guest_pid_namespaces(self) -> set[str]:
        """Pid namespaces of guest inits still alive (a dead init's number may be reused)."""
        found = set()
        for g in self.guests.values():
            init = g.init_pid
            if init is not None and not process_gone(init):
                ns = namespace(init, "pid")
                if ns is not None:
                    found.add(ns)
        return found

    def leftovers(self, daemons: bool = False) -> list[str]:
        """Live libvirt_lxc controllers, guest processes and libvirt's dnsmasq (and
        libvirtd/virtlogd if ``daemons``) of this session, as "pid comm"."""
        found = []
        guest_pidns = self._guest_pid_namespaces()
        for pid in pids():
            name = self._ours(pid, daemons, guest_pidns)
            if name is not None:
                found.append(f"{pid} {name}")
        return found

    def _kill_strays(self) -> None:
        """Controllers, guests and dnsmasqs still alive after the API cleanup: by pid."""
        guest_pidns = self._guest_pid_namespaces()
        strays = {pid for pid in pids() if self._ours(pid, False, guest_pidns) is not None}
        for pidfile in [*RUN_DIR.glob("lxc/*.pid"), *RUN_DIR.glob("network/*.pid")]:
            pid = read_pid(pidfile)
            if pid is not None and self._ours(pid, False, guest_pidns) is not None:
                strays.add(pid)
        # What destroy() just stopped may still be on its way out.
        with contextlib.suppress(AssertionError):
            until(lambda: all(process_gone(p) for p in strays), timeout=3)
        kill_and_reap(strays)

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
        step(remove_libvirt_chains)
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
        step(self.cgroups.remove)
        step(self._stop_reaper)
        self.networks.clear()
        self.guests.clear()
        if errors:
            raise errors[0]
