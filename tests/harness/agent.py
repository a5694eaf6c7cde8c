"""namesync-agent run as a real process with a config file the test controls."""

from __future__ import annotations

import os
import resource
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

from agent.control.client import Client, ControlError

from .proc import terminate
from .wait import until


def toml_config(*, socket: Path, addn_hosts: Path | None, pid_file: Path | None,
                hosts_file: Path | None, static: dict[str, list[str]] | None = None,
                coalesce_ms: int = 20, extra: str = "", host: str | None = None,
                dnsmasq_extra: str = "", control_extra: str = "",
                networkmanager: str | None = None, libvirt: str | None = None,
                podman: str | None = None, peers: str | None = None,
                resolved: str | None = None) -> str:
    """A config for the test agent. ``host``/``networkmanager``/``libvirt``/``podman``/``peers``:
    the body of those sections; None disables them (no netlink, D-Bus, libvirtd or
    Podman, and no peer socket, unless a test asks)."""
    lines = ["[daemon]", f"coalesce_ms = {coalesce_ms}", 'log_level = "debug"',
             "[control]", f'socket = "{socket}"']
    if control_extra:
        lines.append(control_extra)
    lines.append("[dnsmasq]")
    if addn_hosts is None:
        lines.append("enabled = false")
    else:
        lines += [f'addn_hosts = "{addn_hosts}"', f'pid_file = "{pid_file}"']
        if dnsmasq_extra:
            lines.append(dnsmasq_extra)
    lines.append("[hosts_file]")
    lines.append("enabled = false" if hosts_file is None else f'path = "{hosts_file}"')
    for name, addrs in (static or {}).items():
        lines += ["[[static]]", f'name = "{name}"',
                  "addresses = [" + ", ".join(f'"{a}"' for a in addrs) + "]"]
    off = "enabled = false"
    lines += ["[host]", host if host is not None else off]
    lines += ["[networkmanager]", networkmanager if networkmanager is not None else off]
    lines += ["[libvirt]", libvirt if libvirt is not None else off]
    lines += ["[podman]", podman if podman is not None else off]
    lines += ["[peers]", peers if peers is not None else off]
    # Whatever the test, `agentctl setup` (and --remove) only ever touches drop-ins
    # in the test's directory, never the machine's /etc.
    work = socket.parent
    lines += ["[resolved]", resolved if resolved is not None else off,
              f'pid_file = "{work / "own-dnsmasq.pid"}"',
              f'nm_unmanaged_conf = "{work / "nm-conf.d" / "90-namesync-unmanaged.conf"}"',
              f'containers_conf = "{work / "containers.conf.d" / "90-namesync-dns.conf"}"']
    return "\n".join(lines) + "\n" + extra


class Agent:
    def __init__(self, workdir: Path, env: dict[str, str] | None = None,
                 nofile: int | None = None, wrap: tuple[str, ...] = ()) -> None:
        self.env = env or {}
        self.wrap = wrap  # a command the agent runs under, e.g. setpriv dropping a capability
        self.nofile = nofile  # RLIMIT_NOFILE (soft and hard) for the agent, e.g. systemd's 1024
        self.dir = workdir
        self.dir.mkdir(parents=True, exist_ok=True)
        self.config = self.dir / "config.toml"
        self.socket = self.dir / "control.sock"
        self.log = self.dir / "agent.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def set_config(self, text: str) -> None:
        """Replace the config atomically, as an editor would: the daemon never reads half."""
        tmp = self.config.with_name(f".{self.config.name}.tmp")
        tmp.write_text(text)
        tmp.rename(self.config)

    def command(self, *extra: str) -> list[str]:
        return [*self.wrap, sys.executable, "-m", "agent.daemon.main", "--config",
                str(self.config), *extra]

    def start(self) -> Agent:
        self._log = self.log.open("ab")
        self.proc = subprocess.Popen(self.command(), stdout=self._log, stderr=self._log,
                                     env={**os.environ, **self.env, "PYTHONUNBUFFERED": "1"},
                                     preexec_fn=self._limits if self.nofile else None)
        until(lambda: self._ready(), timeout=15, what="namesync-agent ready")
        return self

    def _limits(self) -> None:
        assert self.nofile is not None
        resource.setrlimit(resource.RLIMIT_NOFILE, (self.nofile, self.nofile))

    def _ready(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise AssertionError(f"namesync-agent exited {self.proc.returncode}:\n"
                                 + self.log.read_text())
        try:
            return bool(self.status()["daemon"]["ready"])
        except (ControlError, OSError):
            return False

    def status(self) -> dict[str, Any]:
        return Client(self.socket, timeout=5).call("status")

    def reload(self) -> int:
        """SIGHUP, then wait until the daemon has re-read the config; returns syncs before."""
        before = self.status()["daemon"]["config_loaded"]
        syncs: int = self.status()["daemon"]["syncs"]
        assert self.proc is not None
        self.proc.send_signal(signal.SIGHUP)
        until(lambda: self.status()["daemon"]["config_loaded"] != before
              or self.status()["daemon"]["config_error"], what="config reload")
        return syncs

    def stop(self) -> int | None:
        if self.proc is None:
            return None
        rc = terminate(self.proc, timeout=10)
        self.proc = None
        self._log.close()
        return rc


def agentctl(*args: str, check: bool = True,
             env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run the real CLI, as a user would."""
    return subprocess.run([sys.executable, "-m", "agent.cli.agentctl", *args],
                          capture_output=True, text=True, check=check, timeout=60,
                          env={**os.environ, **(env or {})})


def status_text(socket: Path) -> str:
    """``agentctl status`` as a user reads it; exit 0 (healthy) or 1 (degraded) both fine
    here (the exit codes have tests of their own)."""
    run = agentctl("--socket", str(socket), "status", check=False)
    assert run.returncode in (0, 1), (run.returncode, run.stdout, run.stderr)
    return run.stdout
