"""A real user's ``qemu:///session`` libvirtd and its QEMU (TCG) guests, bridged or user-mode.

The session daemon is what GNOME Boxes or virt-manager's user session run:
``libvirtd`` as the user, sockets under ``$XDG_RUNTIME_DIR/libvirt``, config
under ``~/.config/libvirt``. A guest's ``<interface type='bridge'>`` is
plugged in by qemu-bridge-helper, which needs root (Fedora ships it setuid;
Debian does not) and an ``allow BRIDGE`` line in /etc/qemu/bridge.conf.
Neither is set up on the machine: the daemon gets its own mount namespace
(a slave of the test session's) in which, before it drops to the user,

    WORKDIR/priv                 a tmpfs (suid allowed) holding a setuid-root
                                 copy of qemu-bridge-helper (qemu.conf's
                                 bridge_helper points at it) and the overlay's
                                 upper and work dirs
    /etc                         an overlay of the machine's /etc with
                                 qemu/bridge.conf = "allow BRIDGE" for the test's
                                 bridges (the machine has no /etc/qemu to bind a
                                 file onto; nothing is written to its /etc)

so only this daemon and the helpers it runs see them, and they vanish with it.
The bridge is a NAT network of the test's private system libvirtd
(tests/harness/libvirt): its dnsmasq hands out the lease and writes
``<bridge>.status``, as for a system VM. User-mode guests (QEMU's slirp) need
none of this: their NIC is ``<interface type='user'>`` or, with host forwards,
``-netdev user,hostfwd=...`` in ``<qemu:commandline>`` (libvirt 9.0 has no passt).

Guests are tests/harness/qemu_image.py's kernel + initramfs booted directly
(``<kernel>``/``<initrd>``), ``<domain type='qemu'>`` (TCG: the user has no
/dev/kvm), serial console to a file the harness reads. The user's processes
(libvirtd, QEMU) are stopped by pid; Session.teardown kills any left, and
tests/harness/qemu_reaper.py does if pytest dies without tearing down.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from xml.sax.saxutils import escape, quoteattr

from .proc import (
    comm,
    die_with_parent,
    kill_and_reap,
    process_gone,
    read_pid,
    start_reaper,
    stop_reaper,
    terminate,
)
from .qemu_image import CONSOLE_MARK, GuestImage
from .rootless import Session
from .wait import until

SESSION_URI = "qemu:///session"
# Where Debian and Fedora put it (Fedora's is setuid already, Debian's is not).
BRIDGE_HELPERS = (Path("/usr/lib/qemu/qemu-bridge-helper"), Path("/usr/libexec/qemu-bridge-helper"))
QEMU = Path("/usr/bin/qemu-system-x86_64")

# Run as root in the daemon's own mount namespace; then exec the rest of argv as the user.
# $1 WORKDIR/priv, $2 the bridge.conf text, $3 the machine's qemu-bridge-helper.
LAUNCH = """\
set -e
priv=$1; conf=$2; helper=$3; shift 3
mount -t tmpfs -o mode=0755,size=16m nsync-qemu-priv "$priv"
mkdir -p "$priv/etc-upper/qemu" "$priv/etc-work"
printf '%s' "$conf" > "$priv/etc-upper/qemu/bridge.conf"
cp "$helper" "$priv/qemu-bridge-helper"
chmod 4755 "$priv/qemu-bridge-helper"
mount -t overlay nsync-qemu-etc \\
  -o "lowerdir=/etc,upperdir=$priv/etc-upper,workdir=$priv/etc-work" /etc
exec "$@"
"""


def bridge_helper() -> Path | None:
    return next((p for p in BRIDGE_HELPERS if p.exists()), None)


def unavailable() -> str | None:
    """Why a session QEMU guest cannot run here (None if it can)."""
    missing = "is missing (Debian: apt-get install qemu-system-x86; Fedora: qemu-system-x86-core)"
    if not QEMU.exists():
        return f"{QEMU} {missing}"
    if bridge_helper() is None:
        return f"qemu-bridge-helper {missing}"
    return None


def random_mac() -> str:
    return "52:54:00:" + ":".join(f"{b:02x}" for b in secrets.token_bytes(3))


class SessionLibvirtd:
    """``libvirtd`` run as ``session``'s user, for ``bridges`` of the test's netns."""

    def __init__(self, session: Session, workdir: Path, bridges: Sequence[str]) -> None:
        self.session = session
        self.dir = workdir
        self.bridges = list(bridges)
        self.priv = workdir / "priv"
        self.log = workdir / "libvirtd.log"
        self.socket = session.runtime / "libvirt" / "libvirt-sock"
        self.proc: subprocess.Popen[bytes] | None = None
        self._reaper: subprocess.Popen[bytes] | None = None
        self.guests: dict[str, QemuGuest] = {}

    def _own(self, path: Path, mode: int = 0o755) -> Path:
        path.mkdir(parents=True, exist_ok=True, mode=mode)
        os.chown(path, self.session.user.uid, self.session.user.gid)
        return path

    def _write_user_config(self) -> None:
        home = self.session.user.home
        for d in (home / ".config", home / ".config" / "libvirt"):
            self._own(d, 0o700)
        qemu_conf = home / ".config" / "libvirt" / "qemu.conf"
        # file: the console goes where the domain says, with no session virtlogd to stop.
        qemu_conf.write_text(f'bridge_helper = "{self.priv / "qemu-bridge-helper"}"\n'
                             'stdio_handler = "file"\n')
        os.chown(qemu_conf, self.session.user.uid, self.session.user.gid)

    def env(self) -> dict[str, str]:
        # Never let a client autostart a second session daemon behind the harness's back.
        return {"LIBVIRT_AUTOSTART": "0"}

    def start(self) -> SessionLibvirtd:
        try:
            self._start()
        except BaseException:
            with contextlib.suppress(Exception):  # the start failure is the one to see
                self.stop()
            raise
        return self

    def _start(self) -> None:
        self._own(self.dir)
        self.priv.mkdir(exist_ok=True)
        self._write_user_config()
        if self._reaper is None:
            self._start_reaper()
        conf = "".join(f"allow {b}\n" for b in self.bridges)
        argv = ["unshare", "-m", "--propagation", "slave", "sh", "-c", LAUNCH,
                "qemu-session-launch", str(self.priv), conf, str(bridge_helper()),
                *self.session.argv("libvirtd", env_extra=self.env())]
        with self.log.open("ab") as log:
            # unshare, sh, setpriv and env all exec: self.proc.pid is libvirtd's.
            self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log,
                                         stderr=log, start_new_session=True, cwd="/",
                                         preexec_fn=die_with_parent)
        until(self._answers, timeout=30, interval=0.05,
              what=f"the session libvirtd of {self.session.user.name} to answer")

    def kill(self) -> None:
        """SIGKILL libvirtd by pid (its QEMUs run on, as after a crash) and reap it."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=15)
        self.proc = None

    def _start_reaper(self) -> None:
        """qemu_reaper.py: kills the user's QEMUs if pytest dies without stop()."""
        self._reaper = start_reaper(Path(__file__).with_name("qemu_reaper.py"),
                                    [str(self.session.user.uid)], self.dir / "reaper.log")

    def _stop_reaper(self) -> None:
        stop_reaper(self._reaper)
        self._reaper = None

    def _answers(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise AssertionError(f"session libvirtd exited {self.proc.returncode}:\n"
                                 + self.log.read_text()[-4000:])
        return self.socket.exists() and self.virsh("version", check=False).returncode == 0

    def virsh(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """virsh on qemu:///session as the user."""
        r = subprocess.run(self.session.argv("virsh", "-c", SESSION_URI, *args,
                                             env_extra=self.env()),
                           capture_output=True, text=True, timeout=60, cwd="/")
        if check and r.returncode != 0:
            raise AssertionError(f"virsh {' '.join(args)} as {self.session.user.name} failed "
                                 f"({r.returncode}): {r.stderr}")
        return r

    def guest(self, name: str, image: GuestImage, nic: Nic, *more: Nic,
              mac: str | None = None, dhcp_hostname: str | None = None,
              memory_mib: int = 128) -> QemuGuest:
        """A defined (not started) domain with NICs ``nic``, ``*more`` (eth0, eth1, ...);
        its udhcpc sends ``dhcp_hostname`` (default: the domain name)."""
        macs = [mac or random_mac()] + [random_mac() for _ in more]
        g = QemuGuest(self, name, image, [nic, *more], macs, memory_mib,
                      dhcp_hostname or name)
        self.guests[name] = g
        g.define()
        return g

    def stop(self) -> None:
        """Every guest destroyed and undefined, libvirtd stopped, their QEMUs gone; by pid."""
        qemus: list[int] = []
        for g in self.guests.values():
            pid = g.qemu_pid()
            if pid is not None:
                qemus.append(pid)
            if self.proc is not None and self.proc.poll() is None:
                with contextlib.suppress(Exception):
                    g.destroy()
                with contextlib.suppress(Exception):
                    self.virsh("undefine", g.name, check=False)
        terminate(self.proc, timeout=15)
        self.proc = None
        kill_and_reap(qemus)
        self.guests.clear()
        self._stop_reaper()


@dataclass
class Boot:
    """What a guest said on its console, with the monotonic time each line was first seen."""

    lines: list[tuple[float, str]]

    def first(self, text: str) -> float | None:
        return next((t for t, line in self.lines if text in line), None)


@dataclass(frozen=True)
class BridgeNic:
    """``<interface type='bridge'>``: a tap on ``bridge``, plugged in by qemu-bridge-helper.
    ``alias``: a user alias ("ua-" + alias), which QEMU domains keep (LXC ones do not)."""

    bridge: str
    alias: str | None = None

    def xml(self, mac: str) -> str:
        alias = f"<alias name={quoteattr('ua-' + self.alias)}/>" if self.alias else ""
        return (f"<interface type='bridge'><mac address={quoteattr(mac)}/>"
                f"<source bridge={quoteattr(self.bridge)}/><model type='virtio'/>{alias}"
                "</interface>")


@dataclass(frozen=True)
class UserNic:
    """``<interface type='user'>`` (QEMU's slirp: libvirt 9.0 has no passt backend), with
    ``forwards`` (host port, guest port) as ``<portForward>``, which libvirt 9.0 accepts
    and keeps in the XML but does not give to slirp."""

    forwards: tuple[tuple[int, int], ...] = ()

    def xml(self, mac: str) -> str:
        parts = [f"<mac address={quoteattr(mac)}/>"]
        parts += [f"<portForward proto='tcp'><range start='{host}' to='{guest}'/></portForward>"
                  for host, guest in self.forwards]
        parts.append("<model type='virtio'/>")
        return f"<interface type='user'>{''.join(parts)}</interface>"


@dataclass(frozen=True)
class CommandlineNic:
    """QEMU's slirp with host forwards on QEMU's own command line (``<qemu:commandline>``
    ``-netdev user,id=ID,hostfwd=RULE... -device virtio-net-pci,netdev=ID,mac=MAC``):
    how session VMs get port forwards where libvirt has no passt backend (< 9.2).
    ``hostfwd``: QEMU's rules, e.g. "tcp::2222-:80", "tcp:127.0.0.1:2222-:80"."""

    hostfwd: tuple[str, ...] = ()
    netdev: str = "nsnet0"

    def xml(self, mac: str) -> str:
        return ""  # no <interface> element at all

    def commandline(self, mac: str) -> str:
        fwd = "".join(f",hostfwd={rule}" for rule in self.hostfwd)
        args = ["-netdev", f"user,id={self.netdev}{fwd}",
                "-device", f"virtio-net-pci,netdev={self.netdev},mac={mac}"]
        return ("<qemu:commandline>" + "".join(f"<qemu:arg value={quoteattr(a)}/>" for a in args)
                + "</qemu:commandline>")


Nic = BridgeNic | UserNic | CommandlineNic
QEMU_XMLNS = "http://libvirt.org/schemas/domain/qemu/1.0"


class QemuGuest:
    """One session domain: the tiny kernel + initramfs, virtio NICs (eth0, eth1, ...)."""

    def __init__(self, daemon: SessionLibvirtd, name: str, image: GuestImage,
                 nics: Sequence[Nic], macs: Sequence[str], memory_mib: int,
                 dhcp_hostname: str) -> None:
        self.daemon = daemon
        self.name = name
        self.dhcp_hostname = dhcp_hostname
        self.image = image
        self.nics = list(nics)
        self.macs = list(macs)
        self.mac = self.macs[0]
        self.memory_mib = memory_mib
        self.dir = daemon._own(daemon.dir / "guests" / name)
        self.console = self.dir / "console.log"
        self._seen: list[tuple[float, str]] = []
        self._read = 0

    @property
    def xml(self) -> str:
        nics = zip(self.nics, self.macs, strict=True)
        devices = "\n    ".join(n.xml(m) for n, m in nics if not isinstance(n, CommandlineNic))
        extra = "".join(n.commandline(m) for n, m in zip(self.nics, self.macs, strict=True)
                        if isinstance(n, CommandlineNic))
        return f"""\
<domain type='qemu' xmlns:qemu='{QEMU_XMLNS}'>
  <name>{escape(self.name)}</name>
  <memory unit='MiB'>{self.memory_mib}</memory>
  <vcpu>1</vcpu>
  <os>
    <type arch='x86_64' machine='pc'>hvm</type>
    <kernel>{escape(str(self.image.kernel))}</kernel>
    <initrd>{escape(str(self.image.initrd))}</initrd>
    <cmdline>{escape(self.image.cmdline(self.dhcp_hostname))}</cmdline>
  </os>
  <on_reboot>destroy</on_reboot>
  <devices>
    <emulator>{QEMU}</emulator>
    {devices}
    <serial type='file'><source path={quoteattr(str(self.console))}/></serial>
    <memballoon model='none'/>
  </devices>
  {extra}
</domain>
"""

    def define(self) -> None:
        path = self.dir / "domain.xml"
        path.write_text(self.xml)
        path.chmod(0o644)
        self.daemon.virsh("define", str(path))

    def start(self) -> float:
        """virsh start; returns the monotonic time it returned (QEMU is running then)."""
        self.console.unlink(missing_ok=True)
        self._seen, self._read = [], 0
        self.daemon.virsh("start", self.name)
        return time.monotonic()

    def destroy(self) -> None:
        self.daemon.virsh("destroy", self.name)

    def is_active(self) -> bool:
        out = self.daemon.virsh("domstate", self.name, check=False).stdout.strip()
        return out == "running"

    def qemu_pid(self) -> int | None:
        """The QEMU process (libvirt's pid file), if it still runs."""
        pid = read_pid(self.daemon.session.runtime / "libvirt" / "qemu" / "run"
                       / f"{self.name}.pid")
        if pid is None or process_gone(pid) or not comm(pid).startswith("qemu-system"):
            return None  # gone, or a stale pid file's number now used by another process
        return pid

    def boot(self) -> Boot:
        """The console so far: every new line stamped with when this call first saw it."""
        try:
            with self.console.open("rb") as f:
                f.seek(self._read)
                chunk = f.read()
        except FileNotFoundError:
            return Boot(list(self._seen))
        complete = chunk[:chunk.rfind(b"\n") + 1]
        self._read += len(complete)
        now = time.monotonic()
        for raw in complete.decode(errors="replace").splitlines():
            self._seen.append((now, raw.rstrip("\r")))
        return Boot(list(self._seen))

    def wait_console(self, text: str, timeout: float = 60) -> float:
        """Poll the console until a line contains ``text``; returns when it was seen."""
        def seen() -> float:
            return self.boot().first(text) or 0.0

        try:
            return until(seen, timeout=timeout, interval=0.05,
                         what=f"{text!r} on the console of {self.name}")
        except AssertionError as e:
            tail = "\n".join(line for _, line in self._seen[-30:])
            raise AssertionError(f"{e}\nconsole of {self.name}:\n{tail}") from None

    def bound_address(self, nic: int = 0) -> str | None:
        """The address udhcpc configured on eth<nic>, as the guest said on its console."""
        for _, line in reversed(self.boot().lines):
            words = line.split()
            if line.startswith(CONSOLE_MARK) and words[1:3] in (["bound", f"eth{nic}"],
                                                                  ["renew", f"eth{nic}"]):
                return words[3] if len(words) > 3 else None
        return None
