"""(From the release review.) with libvirtd socket-activated and `--timeout` (Debian/Fedora default:
libvirtd.service LIBVIRTD_ARGS="--timeout 120", virtqemud the same), releasing the
connection lets libvirtd exit when idle; its exit unlinks <state>/driver.pid in the
watched dirs, which wakes namesync, whose reconnect starts libvirtd again: a cycle
of a libvirtd start every (timeout + release_idle_s) for ever, on a machine where
nothing happens.  sockact.py stands in for systemd's socket units."""
from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.harness.agent import Agent
from tests.harness.libvirt import Libvirtd, Network
from tests.harness.libvirt.base import UNIFIED
from tests.harness.proc import is_mountpoint
from tests.harness.wait import until
from tests.integration.test_libvirt import libvirt_source

pytestmark = [pytest.mark.integration, pytest.mark.libvirt]
HARNESS = Path(__file__).resolve().parent.parent / "harness"


def spawns(log: Path) -> list[str]:
    lines = log.read_text().splitlines() if log.exists() else []
    return [line for line in lines if line.startswith("spawn")]


@pytest.mark.timeout(200)
def test_idle_exit_respawn_cycle(libvirtd: Libvirtd, libvirt_network: Network,
                                 write_config: Callable[..., None], agent: Agent,
                                 tmp_path: Path) -> None:
    libvirtd.stop()  # the harness's; ours is socket-activated
    log = tmp_path / "sockact.log"
    hide = str(UNIFIED) if is_mountpoint(UNIFIED) else ""
    act = subprocess.Popen([sys.executable, str(HARNESS / "libvirt_sockact.py"), str(log), "3",
                            hide], start_new_session=True)
    try:
        until(lambda: os.path.exists("/run/libvirt/libvirt-sock-ro"), what="sockets")
        subprocess.run(["virsh", "-c", "lxc:///system", "version"], check=True,
                       capture_output=True, timeout=30)
        write_config(libvirt='uris = ["lxc:///system"]\nrelease_idle_s = 1\n')
        agent.start()
        until(lambda: libvirt_source(agent)["state"] == "released", timeout=30,
              what="released")
        t0, n0 = time.time(), len(spawns(log))
        # Nothing happens meanwhile; libvirtd exits after 3 s without a client. What is
        # asserted is an absence over a span (no libvirtd started), not a sync point.
        time.sleep(15)
        n = len(spawns(log)) - n0
        listed = agent.log.read_text().count('"event": "libvirt listed"')
        print(log.read_text())
        print("libvirtd started", n, "times in", round(time.time() - t0), "s; listings", listed)
        assert n == 0, f"libvirtd was started {n} times in 15 s of idleness by namesync"
    finally:
        agent.stop()
        os.kill(act.pid, signal.SIGKILL)
        act.wait()
        for line in reversed(log.read_text().splitlines() if log.exists() else []):
            kind, pid, *_ = line.split()
            if kind == "spawn":
                with contextlib.suppress(ProcessLookupError):
                    os.kill(int(pid), signal.SIGTERM)
                    until(lambda p=int(pid): not os.path.exists(f"/proc/{p}"), timeout=10,
                          what="libvirtd gone")
                break
        for p in ("libvirt-sock", "libvirt-sock-ro", "libvirt-admin-sock"):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(f"/run/libvirt/{p}")
