"""A private system bus: a real dbus-daemon with a copy of the machine's system bus config.

The copy keeps the policy and the ``<includedir>``s (so NetworkManager's and
dnsmasq's real bus policy files apply) and changes only what would touch the
machine: it listens on a socket in the test's directory, runs as root in the
foreground (the test's child, stopped by pid), writes no pid file, does no
service activation and does not log to syslog.

Nothing exports ``DBUS_SYSTEM_BUS_ADDRESS`` into the test process: pass
``bus.env()`` to the processes that should use this bus.
"""

from __future__ import annotations

import os
import subprocess
import xml.etree.ElementTree as ET
from pathlib import Path

from .proc import terminate
from .wait import until

SYSTEM_CONFIGS = (Path("/usr/share/dbus-1/system.conf"), Path("/etc/dbus-1/system.conf"))
DBUS = "org.freedesktop.DBus"
DOCTYPE = ('<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"\n'
           ' "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">\n')
# Elements of the real config that would touch the machine or need systemd.
_DROP = {"listen", "user", "fork", "pidfile", "syslog", "servicehelper",
         "standard_system_servicedirs", "servicedir", "keep_umask"}


class DBusError(RuntimeError):
    pass


def system_bus_config(socket: Path, source: Path | None = None) -> str:
    """The machine's system bus config, rewritten to listen only on ``socket``."""
    if source is None:
        source = next((p for p in SYSTEM_CONFIGS if p.exists()), None)
        if source is None:
            tried = ", ".join(map(str, SYSTEM_CONFIGS))
            raise FileNotFoundError(f"no system bus config in {tried}")
    root = ET.parse(source).getroot()
    for child in list(root):
        tag = child.tag
        text = (child.text or "").strip()
        if tag in _DROP:
            root.remove(child)
        elif tag == "include" and Path(text) in SYSTEM_CONFIGS:
            # The legacy main config would bring back the machine's <listen> and pid file.
            root.remove(child)
        elif tag in ("include", "includedir") and text and not text.startswith("/") \
                and child.get("selinux_root_relative") != "yes":
            child.text = str(source.parent / text)  # relative to the original, not to the copy
    listen = ET.Element("listen")
    listen.text = f"unix:path={socket}"
    listen.tail = "\n  "
    root.insert(0, listen)
    return '<?xml version="1.0"?>\n' + DOCTYPE + ET.tostring(root, encoding="unicode") + "\n"


def dbus_send(address: str, dest: str, path: str, method: str, *args: str,
              timeout: float = 5.0) -> str:
    """Call a method with dbus-send (works from sync and async tests alike); literal reply.

    ``method`` is ``interface.Member``; ``args`` in dbus-send syntax (``string:x``,
    ``uint32:4``). Raises DBusError with the bus's error text on failure.
    """
    r = subprocess.run(
        ["dbus-send", f"--bus={address}", "--print-reply=literal",
         f"--reply-timeout={int(timeout * 1000)}", f"--dest={dest}", path, method, *args],
        capture_output=True, text=True, timeout=timeout + 5)
    if r.returncode != 0:
        raise DBusError(r.stderr.strip() or f"dbus-send exited {r.returncode}")
    return r.stdout.strip()


class SystemBus:
    def __init__(self, workdir: Path) -> None:
        self.dir = workdir
        self.dir.mkdir(parents=True, exist_ok=True)
        self.socket = self.dir / "system_bus_socket"
        self.config = self.dir / "system.conf"
        self.pid_file = self.dir / "dbus-daemon.pid"
        self.log = self.dir / "dbus-daemon.log"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def address(self) -> str:
        return f"unix:path={self.socket}"

    def env(self, base: dict[str, str] | None = None) -> dict[str, str]:
        """An environment whose system bus is this one."""
        return {**(os.environ if base is None else base), "DBUS_SYSTEM_BUS_ADDRESS": self.address}

    def start(self) -> SystemBus:
        self.dir.chmod(0o755)  # clients that dropped privileges must reach the socket
        self.config.write_text(system_bus_config(self.socket))
        self.pid_file.unlink(missing_ok=True)
        with self.pid_file.open("wb") as pid_out, self.log.open("ab") as log:
            fd = pid_out.fileno()
            # --nofork: the daemon is our child, so it is reaped (no zombie after stop).
            # --print-pid is written once the socket listens: that is the readiness signal.
            self.proc = subprocess.Popen(
                ["dbus-daemon", f"--config-file={self.config}", "--nofork", "--nosyslog",
                 f"--print-pid={fd}"],
                pass_fds=(fd,), stdin=subprocess.DEVNULL, stdout=log, stderr=log)
        until(self._pid_printed, timeout=10, what="dbus-daemon to print its pid")
        until(lambda: self.has_owner(DBUS), timeout=10, what="dbus-daemon to answer")
        return self

    def _pid_printed(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise AssertionError(f"dbus-daemon exited {self.proc.returncode}:\n"
                                 + self.log.read_text())
        return self.pid_file.read_text().endswith("\n")

    @property
    def pid(self) -> int:
        return int(self.pid_file.read_text())

    def call(self, dest: str, path: str, method: str, *args: str, timeout: float = 5.0) -> str:
        return dbus_send(self.address, dest, path, method, *args, timeout=timeout)

    def has_owner(self, name: str) -> bool:
        try:
            reply = self.call(DBUS, "/org/freedesktop/DBus", f"{DBUS}.NameHasOwner",
                              f"string:{name}")
        except DBusError:
            return False
        return reply.split()[-1] == "true"

    def owner_pid(self, name: str) -> int | None:
        """GetConnectionUnixProcessID of ``name``; None if nobody owns it."""
        try:
            reply = self.call(DBUS, "/org/freedesktop/DBus",
                              f"{DBUS}.GetConnectionUnixProcessID", f"string:{name}")
        except DBusError:
            return None
        return int(reply.split()[-1])

    def stop(self) -> None:
        # --nofork: proc.pid is the daemon itself (the pid it printed).
        terminate(self.proc)
        self.proc = None
        self.socket.unlink(missing_ok=True)
