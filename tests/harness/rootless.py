"""A real unprivileged user's session: rootless Podman and processes run as that user.

The user comes from tests/harness/users.py (unique per run). Its session
lives in the test session's private /run (isolation.py):

    /run/user/UID                  XDG_RUNTIME_DIR (0700, the user's)
    /run/user/UID/podman/podman.sock   its `podman system service`, the user
                                   agent's default Podman socket
    WORKDIR (the user's)           containers.conf (runc, cgroupfs, file events,
                                   ulimits this machine allows), --root/--runroot
                                   with vfs storage: nothing under the user's home

Rootless networking is slirp4netns; ``-p HOST:CTR`` is served by
rootlessport on the test session's network namespace.

Processes run as the user with setpriv. The venv's interpreter lives under
/root (mode 0700 here), which the user cannot enter: they run the system's
python3 (same 3.11 ABI) with the worktree and the venv's site-packages on
PYTHONPATH. Teardown removes every container, stops the service, then
kills whatever still runs as the user (catatonit's pause process,
rootlessport, conmon) by pid.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import site
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from .agent import Agent
from .podman import IMAGE, _busybox_rootfs_tar, containers_conf, ping
from .proc import process_gone, terminate
from .users import User
from .wait import until

REPO = Path(__file__).resolve().parents[2]
SYSTEM_PYTHON = Path("/usr/bin/python3")


@contextlib.contextmanager
def host_bridge(name: str, address: str) -> Iterator[str]:
    """A port-less bridge with ``address``/24 in the test's netns: the "host" interface
    the system agent's [host] names, whose address via-host names answer."""
    subprocess.run(["ip", "link", "del", name], capture_output=True, check=False)
    subprocess.run(["ip", "link", "add", name, "type", "bridge"], check=True)
    subprocess.run(["ip", "addr", "add", f"{address}/24", "dev", name], check=True)
    subprocess.run(["ip", "link", "set", name, "up"], check=True)
    try:
        yield name
    finally:
        subprocess.run(["ip", "link", "del", name], capture_output=True, check=False)


def skip_without_user_python() -> None:
    """Skip the calling module's tests when a real user cannot run this venv's Python."""
    import pytest

    why = user_python_problem()
    if why:
        pytest.skip(why)


def user_python_problem() -> str | None:
    """Why a test user cannot run namesync (None: it can)."""
    if not SYSTEM_PYTHON.exists():
        return f"{SYSTEM_PYTHON} missing (the test user cannot run the venv's python)"
    out = subprocess.run([str(SYSTEM_PYTHON), "-c",
                          "import sys; print(sys.version_info[:2])"],
                         capture_output=True, text=True, check=False)
    if out.stdout.strip() != str(tuple(sys.version_info[:2])):
        return (f"{SYSTEM_PYTHON} is {out.stdout.strip()}, the venv is "
                f"{tuple(sys.version_info[:2])}: the venv's packages would not load")
    return None


def _pids_of(uid: int) -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                if entry.stat().st_uid == uid:
                    pids.append(int(entry.name))
    return pids


class Session:
    """One real user's session: env, setpriv, and a rootless Podman service."""

    def __init__(self, user: User, workdir: Path) -> None:
        self.user = user
        self.runtime = Path(f"/run/user/{user.uid}")
        self.dir = workdir
        self.podman_socket = self.runtime / "podman" / "podman.sock"
        self.service: subprocess.Popen[bytes] | None = None
        self._service_log: Any = None
        # Prefix for every command of the user (HostView.enter(): its netns and resolv.conf).
        self.enter: list[str] = []

    def env(self, **extra: str) -> dict[str, str]:
        venv_site = [p for p in site.getsitepackages() if p.startswith(sys.prefix)]
        return {
            "HOME": str(self.user.home), "USER": self.user.name, "LOGNAME": self.user.name,
            "PATH": "/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin",
            "XDG_RUNTIME_DIR": str(self.runtime),
            "CONTAINERS_CONF": str(self.dir / "containers.conf"),
            "PYTHONPATH": os.pathsep.join([str(REPO), *venv_site]),
            "PYTHONUNBUFFERED": "1", "LANG": "C.UTF-8",
            **extra,
        }

    def argv(self, *command: str, env_extra: dict[str, str] | None = None) -> list[str]:
        """``command`` run as the user (setpriv: its uid, gid and groups; env replaced)."""
        env = [f"{k}={v}" for k, v in self.env(**(env_extra or {})).items()]
        return [*self.enter, "setpriv", f"--reuid={self.user.uid}", f"--regid={self.user.gid}",
                "--init-groups", "env", "-i", *env, *command]

    def python(self, *args: str, env_extra: dict[str, str] | None = None) -> list[str]:
        return self.argv(str(SYSTEM_PYTHON), *args, env_extra=env_extra)

    def run(self, *command: str, check: bool = True, input: bytes | None = None,
            timeout: float = 60) -> subprocess.CompletedProcess[str]:
        r = subprocess.run(self.argv(*command), input=input, capture_output=True,
                           timeout=timeout, cwd="/")
        out = subprocess.CompletedProcess(r.args, r.returncode, r.stdout.decode(errors="replace"),
                                          r.stderr.decode(errors="replace"))
        if check and r.returncode != 0:
            raise AssertionError(f"{' '.join(command)} as {self.user.name} failed "
                                 f"({r.returncode}): {out.stderr}")
        return out

    def _mkdir(self, path: Path, mode: int) -> None:
        path.mkdir(parents=True, exist_ok=True)
        os.chown(path, self.user.uid, self.user.gid)
        path.chmod(mode)

    def setup(self) -> Session:
        self._mkdir(self.runtime, 0o700)
        self._mkdir(self.dir, 0o755)
        for d in ("tmp", "root", "runroot"):
            self._mkdir(self.dir / d, 0o700)
        conf = self.dir / "containers.conf"
        conf.write_text(containers_conf(self.dir, 'default_rootless_network_cmd = "slirp4netns"'))
        os.chown(conf, self.user.uid, self.user.gid)
        return self

    # --- rootless Podman ----------------------------------------------------

    def podman_argv(self, *args: str) -> list[str]:
        return ["podman", "--storage-driver", "vfs", "--root", str(self.dir / "root"),
                "--runroot", str(self.dir / "runroot"), *args]

    def podman(self, *args: str, check: bool = True, input: bytes | None = None,
               timeout: float = 90) -> subprocess.CompletedProcess[str]:
        return self.run(*self.podman_argv(*args), check=check, input=input, timeout=timeout)

    def start_podman(self) -> Session:
        self.podman("import", "-q", "--change", 'CMD ["/bin/sh"]', "-", IMAGE,
                    input=_busybox_rootfs_tar())
        self._mkdir(self.podman_socket.parent, 0o700)
        self._service_log = (self.dir / "service.log").open("ab")
        self.service = subprocess.Popen(
            self.argv(*self.podman_argv("system", "service", "--time=0",
                                        f"unix://{self.podman_socket}")),
            stdout=self._service_log, stderr=self._service_log, cwd="/")
        until(lambda: self._service_alive() and ping(self.podman_socket), timeout=20,
              what="rootless podman system service to answer /_ping")
        return self

    def _service_alive(self) -> bool:
        assert self.service is not None
        if self.service.poll() is not None:
            raise AssertionError("rootless podman service exited: "
                                 + (self.dir / "service.log").read_text()[-2000:])
        return True

    def container(self, name: str, *options: str,
                  command: tuple[str, ...] = ("sleep", "1000")) -> str:
        return self.podman("run", "-d", "--name", name, *options, IMAGE,
                           *command).stdout.strip()

    def teardown(self) -> None:
        """Stop everything the user runs, by pid; leave no state behind."""
        with contextlib.suppress(Exception):
            if self.service is not None:
                self.podman("rm", "-a", "-f", "-t", "0", check=False)
        terminate(self.service, timeout=10)
        self.service = None
        if self._service_log is not None:
            self._service_log.close()
        pids = _pids_of(self.user.uid)
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        until(lambda: all(process_gone(p) for p in pids), timeout=10,
              what=f"processes of {self.user.name} {pids} to exit")
        for path in (self.dir, self.runtime):
            subprocess.run(["umount", "-R", "-l", str(path)], capture_output=True, check=False)
            shutil.rmtree(path, ignore_errors=True)


class UserAgent(Agent):
    """namesync-agent --mode user, run as the session's user with its own environment."""

    def __init__(self, session: Session, workdir: Path,
                 env_extra: dict[str, str] | None = None) -> None:
        super().__init__(workdir)
        self.session = session
        self.env_extra = env_extra
        self.socket = session.runtime / "namesync" / "control.sock"  # the user default

    def command(self, *extra: str) -> list[str]:
        return self.session.python("-m", "agent.daemon.main", "--mode", "user",
                                   "--config", str(self.config), *extra,
                                   env_extra=self.env_extra)


_VIEW = r"""
set -e
[ -e "$2" ] || : > "$2"
mount --bind "$1" "$2"
echo ready
exec sleep 86400
"""


class HostView:
    """A network namespace plus a private mount namespace whose /etc/resolv.conf is the
    test's: what a user's rootless Podman reads as the host's resolver. Podman builds the
    container's resolv.conf from it, and slirp4netns forwards the container's 10.0.2.3
    to its first nameserver (pasta does the same for 169.254.1.1). The machine's own
    /etc/resolv.conf is never touched: the bind mount lives only in the holder's
    namespace, and the session's commands enter it with ``enter()``.
    """

    def __init__(self, workdir: Path, nameservers: tuple[str, ...],
                 netns_path: Path | None = None) -> None:
        self.dir = workdir
        self.nameservers = nameservers
        self.netns_path = netns_path
        self.resolv_conf = workdir / "resolv.conf"
        self.holder: subprocess.Popen[str] | None = None

    def start(self) -> HostView:
        self.dir.mkdir(parents=True, exist_ok=True)
        self.resolv_conf.write_text("".join(f"nameserver {n}\n" for n in self.nameservers)
                                    + "options edns0 trust-ad\nsearch .\n")
        self.resolv_conf.chmod(0o644)
        # A symlinked resolv.conf (Fedora: into /run/systemd/resolve) is bound at its
        # target, which on the session's private /run may need creating first.
        target = Path(os.path.realpath("/etc/resolv.conf"))
        net = ["nsenter", f"--net={self.netns_path}", "--"] if self.netns_path else []
        self.holder = subprocess.Popen(
            [*net, "unshare", "-m", "--propagation", "private",
             "sh", "-c", _VIEW, "view", str(self.resolv_conf), str(target)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        assert self.holder.stdout is not None and self.holder.stderr is not None
        if self.holder.stdout.readline().strip() != "ready":
            self.holder.wait(10)
            raise AssertionError(f"host view holder failed: {self.holder.stderr.read()}")
        return self

    def enter(self) -> list[str]:
        assert self.holder is not None
        return ["nsenter", "-t", str(self.holder.pid), "-m", "-n", "--"]

    def stop(self) -> None:
        terminate(self.holder)
        self.holder = None
