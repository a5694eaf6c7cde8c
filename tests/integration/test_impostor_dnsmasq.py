"""A process that only calls itself dnsmasq is never signalled (issue 10, defect 8).

The impostor is a real Python process that renamed itself with
prctl(PR_SET_NAME, "dnsmasq") (so /proc/PID/comm says dnsmasq) and faked its
argv, with its pid in the pid file. A SIGHUP handler in it writes a file:
that file must stay empty, and status must say why it was not signalled.
The agent runs once with every capability (it can read /proc/PID/exe) and
once without CAP_SYS_PTRACE, as under the shipped unit (it cannot read the
exe of another uid's process and falls back to who the process runs as).
"""

from __future__ import annotations

import subprocess
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.harness.agent import Agent
from tests.harness.dnsmasq import Dnsmasq
from tests.harness.users import User
from tests.harness.wait import until
from tests.unit.helpers import python_for

from .conftest import WriteConfig

pytestmark = pytest.mark.integration

IMPOSTOR = textwrap.dedent("""
    import ctypes, signal, sys, time
    record = sys.argv[1]
    def hup(*_):
        with open(record, "a") as f:
            f.write("HUP\\n")
    signal.signal(signal.SIGHUP, hup)
    PR_SET_NAME = 15
    ctypes.CDLL(None).prctl(PR_SET_NAME, b"dnsmasq", 0, 0, 0)
    print("ready", flush=True)
    while True:
        time.sleep(60)
""")

NO_PTRACE = ("setpriv", "--bounding-set=-sys_ptrace", "--")


@pytest.fixture(params=["root", "user"])
def impostor(request: pytest.FixtureRequest, public_tmp: Path,
             unix_user: Callable[[str], User]) -> Iterator[tuple[int, Path, int]]:
    uid = 0 if request.param == "root" else unix_user("impostor").uid
    py = python_for(uid)
    if py is None:
        pytest.skip(f"no Python interpreter executable by uid {uid}")
    record = public_tmp / "impostor-signals"
    record.write_text("")
    record.chmod(0o666)
    # argv[0] says dnsmasq too, with NetworkManager's arguments.
    proc = subprocess.Popen(
        ["dnsmasq", "-I", "-c", IMPOSTOR, str(record),
         "--pid-file=/run/NetworkManager/dnsmasq.pid"],
        executable=py, user=uid, group=uid if uid else 0, extra_groups=[] if uid else None,
        cwd="/", stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdout.readline() == "ready\n"
    assert Path(f"/proc/{proc.pid}/comm").read_text() == "dnsmasq\n"
    yield proc.pid, record, uid
    proc.kill()
    proc.wait()


def uid_of(pid: int) -> str:
    status = Path(f"/proc/{pid}/status").read_text()
    return next(line.split()[1] for line in status.splitlines() if line.startswith("Uid:"))


def dnsmasq_reload(agent: Agent) -> dict[str, object]:
    sink = next(s for s in agent.status()["sinks"] if s["kind"] == "dnsmasq")
    reload: dict[str, object] = sink["last_reload"]
    return reload


@pytest.mark.parametrize("caps", ["all", "no-ptrace"])
def test_renamed_process_in_the_pid_file_is_not_signalled(
        dnsmasq: Dnsmasq, agent_dir: Path, write_config: WriteConfig, public_tmp: Path,
        impostor: tuple[int, Path, int], caps: str) -> None:
    pid, record, uid = impostor
    pid_file = public_tmp / "impostor.pid"
    pid_file.write_text(f"{pid}\n")
    agent = Agent(agent_dir, wrap=NO_PTRACE if caps == "no-ptrace" else ())
    try:
        write_config({"a.dns.test": ["10.0.0.1"]}, pid_file=pid_file)
        agent.start()
        r = dnsmasq_reload(agent)
    finally:
        agent.stop()
    if caps == "no-ptrace" and uid == 0:
        # A root process with more capabilities than the agent cannot be inspected
        # without CAP_SYS_PTRACE, and root is trusted (it could send SIGHUP itself):
        # signalled, and status says what it was taken on.
        assert r["signalled"] is True and r["pid"] == pid
        assert r["verified"] == ("runs as uid 0 (its executable cannot be read without "
                                 "CAP_SYS_PTRACE)")
        until(lambda: record.read_text() == "HUP\n", what="the root process's SIGHUP")
        return
    assert r["signalled"] is False and r["pid"] == pid
    reason = str(r["reason"])
    if caps == "all":
        exe = Path(f"/proc/{pid}/exe").readlink()
        assert reason == (f"pid {pid} calls itself dnsmasq but runs {str(exe)!r}, "
                          "not a dnsmasq binary")
    else:
        assert reason.startswith(f"pid {pid} calls itself dnsmasq but runs as uid {uid}, ")
    assert record.read_text() == ""
    # The real dnsmasq was not told either: it has not re-read the file.
    assert dnsmasq.reads() == [0]


@pytest.mark.parametrize("caps", ["all", "no-ptrace"])
def test_real_dnsmasq_is_still_signalled(
        dnsmasq: Dnsmasq, agent_dir: Path, write_config: WriteConfig, caps: str) -> None:
    """The positive control: the real dnsmasq (running as nobody) passes both checks."""
    agent = Agent(agent_dir, wrap=NO_PTRACE if caps == "no-ptrace" else ())
    try:
        write_config({"a.dns.test": ["10.0.0.1"]})
        agent.start()
        r = dnsmasq_reload(agent)
    finally:
        agent.stop()
    assert (r["signalled"], r["pid"], r["reason"]) == (True, dnsmasq.pid, None)
    assert r["verified"] == (
        f"executable {Path(f'/proc/{dnsmasq.pid}/exe').readlink()}" if caps == "all" else
        f"runs as uid {uid_of(dnsmasq.pid)} (its executable cannot be read without "
        "CAP_SYS_PTRACE)")
    assert dnsmasq.query("a.dns.test").records == ("10.0.0.1",)
