"""Control socket bounds on a real server: slow requests, caps, and running out of descriptors.

The descriptor test runs the server in a child process that really uses up
its RLIMIT_NOFILE (opening /dev/null until EMFILE), so accept() fails the
way it does in a flooded daemon.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from agent.control.server import ControlServer, Limits, Peer, effective_limits

from .helpers import until


@pytest.fixture
def sock_dir() -> Iterator[Path]:
    d = Path(tempfile.mkdtemp(prefix="namesync-limits-"))
    yield d
    shutil.rmtree(d, ignore_errors=True)


async def status(peer: Peer, params: dict[str, Any]) -> dict[str, Any]:
    return {"ok": True}


def test_limits_stay_below_the_descriptor_limit() -> None:
    lim = effective_limits(Limits(max_connections=5000, max_per_uid=5000), nofile=1024)
    assert lim.max_connections + lim.root_reserve <= 1024 - 128
    assert lim.max_per_uid <= lim.max_connections
    assert lim.root_reserve >= 1
    assert effective_limits(Limits(), nofile=65536) == Limits()


def test_slow_request_and_idle_connection_are_closed(sock_dir: Path) -> None:
    path = sock_dir / "control.sock"

    def slowloris() -> tuple[float, float]:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as slow, \
                socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as idle:
            slow.settimeout(10)
            idle.settimeout(10)
            slow.connect(str(path))
            idle.connect(str(path))
            t0 = time.monotonic()
            slow.sendall(b'{"v":1,"id":1,')  # and never the rest
            reply = slow.recv(65536)
            slow_closed = time.monotonic() - t0
            assert reply == b""  # closed, nothing of the half request answered
            assert idle.recv(65536) == b""
            return slow_closed, time.monotonic() - t0

    async def main() -> tuple[float, float]:
        server = ControlServer(path, {"status": status},
                               limits=Limits(idle_timeout_s=3.0, request_timeout_s=0.3))
        await server.start()
        try:
            return await asyncio.to_thread(slowloris)
        finally:
            await server.close()

    slow_closed, idle_closed = asyncio.run(main())
    # Bounds loose enough for a loaded CI machine, still telling the two timeouts apart.
    assert 0.25 < slow_closed < 2.5  # the request timeout, not the idle one
    assert 2.9 < idle_closed < 10


def test_per_uid_cap_refuses_with_a_reason_and_the_served_ones_keep_working(
        sock_dir: Path) -> None:
    """Past the cap (root's reserve, or the per-uid cap when not run as root), each further
    connection gets one refusal line; the ones let in keep working."""
    path = sock_dir / "control.sock"

    def flood() -> tuple[list[str], dict[str, Any]]:
        socks = []
        codes = []
        for _ in range(6):
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.settimeout(5)
            s.connect(str(path))
            socks.append(s)
        for s in socks[4:]:
            codes.append(json.loads(s.recv(65536))["error"]["code"])
        socks[0].sendall(b'{"v":1,"id":1,"method":"status"}\n')
        served = json.loads(socks[0].recv(65536))
        for s in socks:
            s.close()
        return codes, served

    async def main() -> tuple[list[str], dict[str, Any]]:
        server = ControlServer(path, {"status": status},
                               limits=Limits(root_reserve=4, max_per_uid=4))
        await server.start()
        try:
            return await asyncio.to_thread(flood)
        finally:
            await server.close()

    codes, served = asyncio.run(main())
    assert codes == ["too_many_connections"] * 2
    assert served["result"] == {"ok": True}


CHILD = textwrap.dedent("""
    import asyncio, os, sys
    from pathlib import Path
    from agent.control.server import ControlServer

    async def status(peer, params):
        return {"ok": True}

    async def main():
        server = ControlServer(Path(sys.argv[1]), {"status": status})
        await server.start()
        loop = asyncio.get_running_loop()
        hogs = []
        try:
            while True:
                hogs.append(os.open("/dev/null", os.O_RDONLY))
        except OSError:
            pass
        print("full", flush=True)
        freed = asyncio.Event()
        def on_stdin():
            os.read(0, 100)
            freed.set()
        loop.add_reader(0, on_stdin)
        await freed.wait()
        for fd in hogs:
            os.close(fd)
        await asyncio.sleep(30)

    asyncio.run(main())
""")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def test_out_of_descriptors_pauses_accepting_logs_once_and_recovers(
        sock_dir: Path, tmp_path: Path) -> None:
    path = sock_dir / "control.sock"
    out = tmp_path / "child.log"
    with out.open("wb") as log:
        child = subprocess.Popen([sys.executable, "-c", CHILD, str(path)], stdin=subprocess.PIPE,
                                 stdout=log, stderr=subprocess.STDOUT,
                                 env={**os.environ, "PYTHONUNBUFFERED": "1"})
    clients: list[socket.socket] = []
    try:
        until(lambda: b"full" in out.read_bytes(), timeout=20, what="child out of descriptors")
        for _ in range(5):
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.settimeout(10)
            s.connect(str(path))  # queued in the backlog: the server cannot accept it
            s.sendall(b'{"v":1,"id":1,"method":"status"}\n')
            clients.append(s)
        until(lambda: b"cannot accept" in out.read_bytes(), timeout=10, what="the pause")
        cpu0 = cpu_seconds(child.pid)
        time.sleep(2)  # the episode itself: what the server does while it lasts is measured
        assert cpu_seconds(child.pid) - cpu0 < 0.5  # paused, not spinning on EMFILE
        assert out.read_bytes().count(b"cannot accept") == 1  # once per episode
        assert child.stdin is not None
        child.stdin.write(b"free\n")
        child.stdin.flush()
        for s in clients:
            assert json.loads(s.recv(65536))["result"] == {"ok": True}
        until(lambda: b"accepting again" in out.read_bytes(), timeout=5, what="end of episode")
    finally:
        for s in clients:
            s.close()
        child.kill()
        child.wait()
