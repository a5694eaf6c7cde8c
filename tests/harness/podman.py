"""A private rootful Podman: its own storage, network configs and API service.

Everything lives under one work directory the test owns:

    WORKDIR/containers.conf   runc, cgroupfs, file events, ulimits this machine allows,
                              and network_config_dir = WORKDIR/networks, so
                              `podman network create` never writes /etc/containers
    WORKDIR/root, runroot     --root/--runroot: private image and container storage
    WORKDIR/tmp               engine tmp_dir (exit files, locks), not /run/libpod
    WORKDIR/podman.sock       `podman system service --time=0 unix://...`, a child of
                              the test, stopped (or SIGKILLed, restarted) by pid

netavark's own run directory (/run/containers/networks, with aardvark-dns's
config files) cannot be moved for rootful Podman; inside the test session it
is on the session's private /run (isolation.py), as are the bridges, iptables
chains and ip_forward, which live in the session's private network namespace.
aardvark-dns, conmon and the containers' processes outlive the service by
design; teardown removes every container, then kills whatever is left by pid
(aardvark-dns by its pid file, conmon by our storage root on its command line,
container processes by the cgroups Podman made for them), removes those
cgroups from the machine's cgroupfs, unmounts the storage and puts ip_forward
back.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import resource
import shutil
import signal
import socket
import subprocess
import tarfile
from pathlib import Path
from typing import Any

from .proc import cmdline, kill_and_reap, mounts_under, read_pid, terminate
from .proc import pids as all_pids
from .wait import until

IMAGE = "localhost/namesync-busybox:latest"
NETAVARK_RUN = Path("/run/containers/networks")
AARDVARK_DIR = NETAVARK_RUN / "aardvark-dns"
IP_FORWARD = Path("/proc/sys/net/ipv4/ip_forward")
CGROUP_ROOT = Path("/sys/fs/cgroup")
CGROUP_PARENT = "libpod_parent"  # where cgroupfs-managed rootful Podman puts containers


def containers_conf(workdir: Path, network: str | None = None) -> str:
    """containers.conf for a private Podman under ``workdir``; ``network``: the
    [network] lines after the backend (default: networks kept under ``workdir``)."""
    if network is None:
        network = f'network_config_dir = "{workdir}/networks"'
    hard_nofile = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    if hard_nofile == resource.RLIM_INFINITY:
        hard_nofile = 1048576
    return f"""\
[containers]
# Podman raises RLIMIT_NOFILE to 1M by default; without CAP_SYS_RESOURCE that fails.
default_ulimits = ["nofile={hard_nofile}:{hard_nofile}", "nproc=32768:32768"]
[engine]
cgroup_manager = "cgroupfs"
events_logger = "file"
events_logfile_path = "{workdir}/events.log"
runtime = "runc"
tmp_dir = "{workdir}/tmp"
[network]
network_backend = "netavark"
{network}
"""


def _busybox_rootfs_tar() -> bytes:
    """A minimal rootfs: busybox-static and one symlink per applet, as a tar stream."""
    busybox = shutil.which("busybox")
    if busybox is None:
        raise RuntimeError("busybox not found")
    applets = subprocess.run([busybox, "--list"], capture_output=True, text=True,
                             check=True).stdout.split()
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for d in ("bin", "sbin", "usr", "usr/bin", "usr/sbin", "etc", "proc", "sys", "dev",
                  "tmp", "run", "root"):
            info = tarfile.TarInfo(d)
            info.type = tarfile.DIRTYPE
            info.mode = 0o1777 if d == "tmp" else 0o755
            tar.addfile(info)
        tar.add(busybox, arcname="bin/busybox")
        for applet in applets:
            if applet == "busybox":
                continue
            info = tarfile.TarInfo(f"bin/{applet}")
            info.type = tarfile.SYMTYPE
            info.linkname = "busybox"
            tar.addfile(info)
        passwd = b"root:x:0:0:root:/root:/bin/sh\n"
        info = tarfile.TarInfo("etc/passwd")
        info.size = len(passwd)
        info.mode = 0o644
        tar.addfile(info, io.BytesIO(passwd))
    return buf.getvalue()


def _cgroup_dirs(ids: set[str] | None = None) -> set[Path]:
    """Podman's cgroups under CGROUP_PARENT in every hierarchy (libpod-<ID>,
    libpod-conmon-<ID>); with ``ids``, only those of these containers. The tree is
    shared with every other test session on the machine, and dirs vanish while it is
    walked: tolerate both, and never touch another session's containers."""
    found: set[Path] = set()
    for hierarchy in CGROUP_ROOT.iterdir() if CGROUP_ROOT.is_dir() else ():
        top = hierarchy / CGROUP_PARENT
        for dirpath, dirnames, _ in os.walk(top, onerror=lambda _e: None):
            for d in dirnames:
                if ids is None or any(cid in d for cid in ids):
                    found.add(Path(dirpath) / d)
    return found


def ping(sock: Path, timeout: float = 1.0) -> bool:
    """True when the API service on ``sock`` answers GET /_ping with OK."""
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(timeout)
            s.connect(str(sock))
            s.sendall(b"GET /_ping HTTP/1.0\r\nHost: d\r\n\r\n")
            data = b""
            while chunk := s.recv(4096):
                data += chunk
        return data.startswith(b"HTTP/1.") and data.rstrip().endswith(b"OK")
    except OSError:
        return False


class Podman:
    def __init__(self, workdir: Path) -> None:
        self.dir = workdir
        self.dir.mkdir(parents=True, exist_ok=True)
        self.conf = self.dir / "containers.conf"
        self.root = self.dir / "root"
        self.runroot = self.dir / "runroot"
        self.socket = self.dir / "podman.sock"
        self.env = {**os.environ, "CONTAINERS_CONF": str(self.conf)}
        self.service: subprocess.Popen[bytes] | None = None
        self._service_log: Any = None
        self._ip_forward: str | None = None
        self._cgroups_before: set[Path] = set()
        # Every container this instance made: teardown kills and cleans up only
        # these (another session's Podman shares CGROUP_PARENT on this machine).
        self._ids: set[str] = set()

    # --- lifecycle ---------------------------------------------------------

    def setup(self) -> Podman:
        """Write the config, import the busybox image; the service is started separately."""
        if IP_FORWARD.exists():
            self._ip_forward = IP_FORWARD.read_text()
        self._cgroups_before = _cgroup_dirs()
        for d in ("tmp", "networks"):
            (self.dir / d).mkdir(exist_ok=True)
        self.conf.write_text(containers_conf(self.dir))
        self.cli("import", "-q", "--change", 'CMD ["/bin/sh"]', "-", IMAGE,
                 input=_busybox_rootfs_tar())
        return self

    def start_service(self) -> Podman:
        assert self.service is None or self.service.poll() is not None, "service already running"
        with contextlib.suppress(FileNotFoundError):
            self.socket.unlink()  # left by a SIGKILLed service
        self._service_log = (self.dir / "service.log").open("ab")
        self.service = subprocess.Popen(
            [*self._base(), "system", "service", "--time=0", f"unix://{self.socket}"],
            env=self.env, stdout=self._service_log, stderr=self._service_log)
        until(lambda: self._service_alive() and ping(self.socket), timeout=15,
              what="podman system service to answer /_ping")
        return self

    def _service_alive(self) -> bool:
        assert self.service is not None
        if self.service.poll() is not None:
            raise AssertionError(f"podman system service exited {self.service.returncode}: "
                                 + (self.dir / "service.log").read_text()[-2000:])
        return True

    def kill_service(self, sig: int = signal.SIGKILL) -> None:
        """Stop the API service by its pid; containers keep running (conmon holds them)."""
        if self.service is None:
            return
        if self.service.poll() is None:
            self.service.send_signal(sig)
        self.service.wait(timeout=15)
        self.service = None
        if self._service_log is not None:
            self._service_log.close()
            self._service_log = None

    def stop_service(self) -> None:
        if self.service is not None:
            terminate(self.service, timeout=10)
        self.kill_service()

    def teardown(self) -> None:
        """Remove everything, kill what is left by pid, leave no state; safe after failures."""
        try:
            self.remove_all()
            for net in self.networks():
                self.cli("network", "rm", "-f", net, check=False)
        finally:
            self.stop_service()
            self._kill_leftovers()
            for point in sorted(mounts_under(self.dir), key=len, reverse=True):
                subprocess.run(["umount", "-l", point], check=False, capture_output=True)
            self._remove_cgroups()
            if self._ip_forward is not None and IP_FORWARD.exists():
                IP_FORWARD.write_text(self._ip_forward)
            shutil.rmtree(self.dir, ignore_errors=True)

    def _remember_ids(self) -> None:
        out = self.cli("ps", "-a", "-q", "--no-trunc", check=False).stdout.split()
        self._ids.update(i for i in out if len(i) == 64)

    def _kill_leftovers(self) -> None:
        pids: set[int] = set()
        pid_file = AARDVARK_DIR / "aardvark.pid"
        pid = read_pid(pid_file)
        if pid is not None and any("aardvark-dns" in a for a in cmdline(pid)):
            pids.add(pid)
        # Processes in the cgroups Podman made for our containers, and any conmon
        # whose command line names our private storage root (a conmon is not in
        # its container's cgroup): whatever rm left behind.
        for cgroup in _cgroup_dirs(self._ids) - self._cgroups_before:
            with contextlib.suppress(OSError, ValueError):
                pids.update(int(p) for p in (cgroup / "cgroup.procs").read_text().split())
        marker = str(self.root)
        pids.update(p for p in all_pids() if any(marker in a for a in cmdline(p)))
        pids.discard(os.getpid())
        kill_and_reap(pids)

    def _remove_cgroups(self) -> None:
        # Deepest first; a cgroup that still has a process (not ours) refuses rmdir.
        for path in sorted(_cgroup_dirs(self._ids) - self._cgroups_before,
                           key=lambda p: len(p.parts),
                           reverse=True):
            with contextlib.suppress(OSError):
                path.rmdir()

    # --- the CLI -----------------------------------------------------------

    def _base(self) -> list[str]:
        return ["podman", "--root", str(self.root), "--runroot", str(self.runroot)]

    def cli(self, *args: str, check: bool = True, input: bytes | None = None,
            timeout: float = 60) -> subprocess.CompletedProcess[str]:
        r = subprocess.run([*self._base(), *args], env=self.env, input=input,
                           capture_output=True, timeout=timeout)
        out = subprocess.CompletedProcess(r.args, r.returncode, r.stdout.decode(errors="replace"),
                                          r.stderr.decode(errors="replace"))
        if check and r.returncode != 0:
            raise AssertionError(f"podman {' '.join(args)} failed ({r.returncode}): {out.stderr}")
        return out

    def popen(self, *args: str) -> subprocess.Popen[bytes]:
        """Start a podman CLI command without waiting (bursts, races)."""
        return subprocess.Popen([*self._base(), *args], env=self.env,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)

    def run(self, name: str, *options: str, command: tuple[str, ...] = ("sleep", "1000")) -> str:
        """``podman run -d``; returns the container id once the command has returned."""
        return self.cli("run", "-d", "--name", name, *options, IMAGE, *command).stdout.strip()

    def run_via_api(self, name: str, network: str, aliases: list[str]) -> str:
        """Create and start a container through the REST API, which (unlike the CLI)
        takes network aliases as given, newlines included; returns its id."""
        from podman import PodmanClient

        body = {"name": name, "image": IMAGE, "command": ["sleep", "1000"],
                "Networks": {network: {"aliases": aliases}}}
        with PodmanClient(base_url=f"unix://{self.socket}") as client:
            r = client.api.post("/containers/create", data=json.dumps(body),
                                headers={"content-type": "application/json"})
            if r.status_code != 201:
                raise AssertionError(f"create {name}: {r.status_code} {r.text}")
            cid: str = r.json()["Id"]
            r = client.api.post(f"/containers/{cid}/start")
            if r.status_code != 204:
                raise AssertionError(f"start {name}: {r.status_code} {r.text}")
        return cid

    def create(self, name: str, *options: str) -> str:
        return self.cli("create", "--name", name, *options, IMAGE, "sleep", "1000").stdout.strip()

    def start(self, *names: str) -> None:
        self.cli("start", *names)

    def stop(self, name: str) -> None:
        self.cli("stop", "-t", "0", name)

    def restart(self, name: str) -> None:
        self.cli("restart", "-t", "0", name)

    def rm(self, name: str) -> None:
        self.cli("rm", "-f", "-t", "0", name)

    def rename(self, old: str, new: str) -> None:
        self.cli("rename", old, new)

    def pause(self, name: str) -> None:
        self.cli("pause", name)

    def unpause(self, name: str) -> None:
        self.cli("unpause", name)

    def network_create(self, name: str, subnet: str, *options: str) -> str:
        self.cli("network", "create", "--subnet", subnet, *options, name)
        return name

    def network_connect(self, network: str, container: str, *options: str) -> None:
        self.cli("network", "connect", *options, network, container)

    def network_disconnect(self, network: str, container: str) -> None:
        self.cli("network", "disconnect", network, container)

    def pod_create(self, name: str, *options: str) -> str:
        return self.cli("pod", "create", "--name", name, *options).stdout.strip()

    def pod_rm(self, name: str) -> None:
        self.cli("pod", "rm", "-f", "-t", "0", name)

    def inspect(self, name: str) -> dict[str, Any]:
        data: list[dict[str, Any]] = json.loads(self.cli("inspect", name).stdout)
        return data[0]

    def addresses(self, name: str) -> dict[str, tuple[str, str]]:
        """network -> (IPv4, IPv6) of a container, as ``podman inspect`` reports them."""
        nets = self.inspect(name)["NetworkSettings"]["Networks"] or {}
        return {n: (v["IPAddress"], v["GlobalIPv6Address"]) for n, v in nets.items()}

    def networks(self) -> list[str]:
        out = self.cli("network", "ls", "--format", "{{.Name}}").stdout.split()
        return [n for n in out if n != "podman"]

    def remove_all(self) -> None:
        """Every pod and container gone."""
        self._remember_ids()
        self.cli("pod", "rm", "-a", "-f", "-t", "0", check=False)
        self.cli("rm", "-a", "-f", "-t", "0", check=False)
