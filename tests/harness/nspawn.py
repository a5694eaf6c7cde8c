"""A real systemd (PID 1 of its own container) booted with systemd-nspawn from a cached rootfs.

    c = Container(rootfs.build(), workdir, binds=[(host_dir, "/namesync-test/x")]).boot()
    c.run("systemctl", "start", "namesync")
    c.stop()

The rootfs is the shared read-only cache (tests/harness/rootfs.py), booted
with ``--volatile=overlay``: every write goes to a tmpfs and vanishes at
poweroff. The machine here has no systemd as PID 1 and no machined, hence
``--register=no --keep-unit``; with --keep-unit nspawn makes its cgroups next
to its own, so the launcher is first moved into a cgroup of its own, unique
per container, in both hierarchies (name=systemd and the cgroup2 at
/sys/fs/cgroup/unified), removed again at stop. Machine names are unique per
run (pid + counter). Commands run with ``nsenter -t PID1 -a``.

Stopping: SIGTERM to nspawn is a clean poweroff, but only once the
container's systemd has answered (one sent during early boot is lost and
nspawn waits for ever), so stop() waits for that first; SIGKILL (nspawn and
everything in its cgroups, by pid) if poweroff takes too long.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import re
import signal
import subprocess
from collections.abc import Sequence
from pathlib import Path

from .proc import children, comm, die_with_parent, kill_and_reap, process_gone
from .wait import Timeout, until

CGROUP_ROOT = Path("/sys/fs/cgroup")
HIERARCHIES = ("systemd", "unified")
PROPAGATE = Path("/run/systemd/nspawn/propagate")
BOOT_TIMEOUT_S = 60
POWEROFF_TIMEOUT_S = 20
_counter = itertools.count()


def unavailable() -> str | None:
    """Why no container can be booted here (None if it can)."""
    missing = [h for h in HIERARCHIES if not (CGROUP_ROOT / h / "cgroup.procs").exists()]
    if missing:
        return f"cgroup hierarchies {missing} not mounted under {CGROUP_ROOT}"
    return None


def _remove_tree(cg: Path) -> None:
    """rmdir a cgroup and its children, deepest first (a busy one stays)."""
    for d in sorted((p for p in cg.rglob("*") if p.is_dir()), key=lambda p: len(p.parts),
                    reverse=True):
        with contextlib.suppress(OSError):
            d.rmdir()
    with contextlib.suppress(OSError):
        cg.rmdir()


def sweep_stale_cgroups() -> None:
    """Empty cgroups left by a test process that died (its pid is in the name)."""
    for h in HIERARCHIES:
        for cg in (CGROUP_ROOT / h).glob("namesync-test-nstest-*"):
            m = re.fullmatch(r"namesync-test-nstest-(\d+)-\d+", cg.name)
            if m and process_gone(int(m.group(1))):
                _remove_tree(cg)


class Container:
    def __init__(self, rootfs: Path, workdir: Path,
                 binds: Sequence[tuple[Path, str]] = (), ro_binds: Sequence[tuple[Path, str]] = (),
                 unified: bool = False) -> None:
        self.rootfs = rootfs
        self.dir = workdir
        self.dir.mkdir(parents=True, exist_ok=True)
        self.name = f"nstest-{os.getpid()}-{next(_counter)}"
        self.console = self.dir / "console.log"
        self.binds = list(binds)
        self.ro_binds = list(ro_binds)
        # systemd >= 258 (sid) has no cgroup v1: nspawn must give it the unified hierarchy.
        self.unified = unified
        self.cgroups = [CGROUP_ROOT / h / f"namesync-test-{self.name}" for h in HIERARCHIES]
        self.proc: subprocess.Popen[bytes] | None = None
        self.pid1: int | None = None
        self.answered = False

    def argv(self) -> list[str]:
        argv = ["systemd-nspawn", "-D", str(self.rootfs), "--volatile=overlay", "--boot",
                "--register=no", "--keep-unit", "--private-network",
                f"--machine={self.name}", "--console=read-only"]
        argv += [f"--bind={src}:{dst}" for src, dst in self.binds]
        argv += [f"--bind-ro={src}:{dst}" for src, dst in self.ro_binds]
        return argv

    def _enter_own_cgroups(self) -> None:
        """preexec_fn: the launcher (soon nspawn itself) into this container's cgroups;
        and a poweroff (SIGTERM) if the test process dies without stopping it."""
        for cg in self.cgroups:
            (cg / "cgroup.procs").write_text(str(os.getpid()))
        die_with_parent()

    def boot(self) -> Container:
        """Start nspawn and wait until the container's systemd reports it is up."""
        sweep_stale_cgroups()
        for cg in self.cgroups:
            cg.mkdir()
        with self.console.open("ab") as log:
            env = dict(os.environ)
            if self.unified:
                env["SYSTEMD_NSPAWN_UNIFIED_HIERARCHY"] = "1"
            self.proc = subprocess.Popen(self.argv(), stdin=subprocess.DEVNULL, stdout=log,
                                         env=env,
                                         stderr=log, start_new_session=True,
                                         preexec_fn=self._enter_own_cgroups)
        try:
            self.pid1 = until(self._find_pid1, timeout=BOOT_TIMEOUT_S, interval=0.02,
                              what=f"systemd in container {self.name}")
            until(lambda: self._alive() and
                  Path(f"/proc/{self.pid1}/root/run/systemd/private").is_socket(),
                  timeout=BOOT_TIMEOUT_S, interval=0.02, what="the container's systemd socket")
            state = self.run("systemctl", "is-system-running", "--wait", check=False,
                             timeout=BOOT_TIMEOUT_S)
            self.answered = True
            if state.stdout.strip() not in ("running", "degraded"):
                raise AssertionError(f"container {self.name} did not boot: {state.stdout}"
                                     f"{self.console.read_text()[-4000:]}")
        except BaseException:
            self.stop()
            raise
        return self

    def _alive(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise AssertionError(f"systemd-nspawn exited {self.proc.returncode}:\n"
                                 + self.console.read_text()[-4000:])
        return True

    def _find_pid1(self) -> int | None:
        """The container's PID 1: the nspawn child whose comm is "systemd" (a transient
        helper child comes first)."""
        assert self.proc is not None
        self._alive()
        return next((c for c in children(self.proc.pid) if comm(c) == "systemd"), None)

    def run(self, *argv: str, check: bool = True, timeout: float = 60,
            input: str | None = None) -> subprocess.CompletedProcess[str]:
        """``argv`` inside the container (all its namespaces, its root)."""
        assert self.pid1 is not None, "container not booted"
        r = subprocess.run(["nsenter", "-t", str(self.pid1), "-a", "--", *argv],
                           capture_output=True, text=True, timeout=timeout, input=input)
        if check and r.returncode != 0:
            raise AssertionError(f"{argv} exited {r.returncode} in {self.name}:\n"
                                 f"{r.stdout}{r.stderr}")
        return r

    def sh(self, script: str, check: bool = True,
           timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return self.run("sh", "-ec", script, check=check, timeout=timeout)

    def write(self, path: str, text: str, mode: int = 0o644) -> None:
        """A file inside the container, written from the host through its root."""
        self.run("sh", "-c", f'umask 022; cat > "$1" && chmod {mode:o} "$1"', "sh", path,
                 input=text)

    def host_path(self, path: str) -> Path:
        """``path`` of the container seen from the host (through PID 1's root)."""
        return Path(f"/proc/{self.pid1}/root") / path.lstrip("/")

    def host_pid(self, pid: int) -> int:
        """The host pid of the container's process ``pid`` (NSpid in its status)."""
        for task in self._cgroup_pids():
            with contextlib.suppress(OSError):
                for line in Path(f"/proc/{task}/status").read_text().splitlines():
                    if line.startswith("NSpid:") and line.split()[-1] == str(pid):
                        return task
        raise LookupError(f"no process {pid} in container {self.name}")

    def _cgroup_pids(self) -> set[int]:
        found: set[int] = set()
        for cg in self.cgroups:
            for procs in cg.rglob("cgroup.procs") if cg.is_dir() else ():
                with contextlib.suppress(OSError, ValueError):
                    found.update(int(p) for p in procs.read_text().split())
        return found

    def stop(self) -> None:
        """Power off (SIGTERM once systemd answered), SIGKILL as fallback; cgroups removed."""
        if self.proc is not None and self.proc.poll() is None:
            if self.pid1 is not None and not self.answered:
                # An early SIGTERM is lost: give systemd the chance to come up first.
                with contextlib.suppress(Exception):
                    self.run("systemctl", "is-system-running", "--wait", check=False,
                             timeout=BOOT_TIMEOUT_S)
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(POWEROFF_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                kill_and_reap({self.proc.pid, *self._cgroup_pids()})
                self.proc.wait()
        with contextlib.suppress(Timeout):  # what nspawn left in its cgroups, by pid
            left = {p for p in self._cgroup_pids() if not process_gone(p)}
            if left:
                kill_and_reap(left)
        for cg in self.cgroups:
            if cg.is_dir():
                _remove_tree(cg)
        subprocess.run(["rm", "-rf", str(PROPAGATE / self.name)], check=False)
        self.proc = None
        self.pid1 = None
