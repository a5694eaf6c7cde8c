"""The harness's /proc readers (tests/harness/proc.py) and the per-test timeout, on real
processes: teardown everywhere depends on them telling live, zombie and gone apart."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from tests.harness import proc
from tests.harness.wait import until


def test_states_of_a_real_child_live_zombie_reaped() -> None:
    child = subprocess.Popen(["cat"], stdin=subprocess.PIPE, stdout=subprocess.DEVNULL)
    assert child.stdin is not None
    try:
        assert not proc.process_gone(child.pid)
        # Popen returns before the exec is visible in /proc on a busy machine
        until(lambda: proc.comm(child.pid) == "cat" and proc.cmdline(child.pid) == ["cat"],
              what="cat to run")
        assert proc.namespace(child.pid, "mnt") == proc.namespace("self", "mnt")
        assert child.pid in proc.children(os.getpid())
        assert child.pid in set(proc.pids())
        child.stdin.close()
        until(lambda: proc.state(child.pid) == "Z", what="child to become a zombie")
        assert proc.process_gone(child.pid)  # a zombie counts as gone
    finally:
        child.stdin.close()
        child.kill()
        child.wait()
    assert proc.state(child.pid) is None
    assert proc.comm(child.pid) == "" and proc.cmdline(child.pid) == []
    assert proc.namespace(child.pid, "net") is None and proc.status(child.pid) == {}


def test_kill_and_reap_by_pid() -> None:
    child = subprocess.Popen(["sleep", "60"])
    try:
        proc.kill_and_reap([child.pid])
        assert proc.process_gone(child.pid)
    finally:
        assert child.wait(5) == -9


def test_status_and_mounts_of_self() -> None:
    st = proc.status("self")
    assert st["Pid"] == str(os.getpid())
    assert int(st["CapBnd"], 16) > 0 and st["NoNewPrivs"] in ("0", "1")
    root = proc.mount_at("/")
    assert root is not None and proc.is_mountpoint("/")
    assert "/proc" in proc.mounts_under("/proc")
    assert not proc.is_mountpoint(Path("/proc/self"))


def test_read_pid(tmp_path: Path) -> None:
    f = tmp_path / "pid"
    assert proc.read_pid(f) is None
    f.write_text("123\n")
    assert proc.read_pid(f) == 123
    f.write_text("junk")
    assert proc.read_pid(f) is None


def test_every_test_has_a_timeout(request: pytest.FixtureRequest) -> None:
    assert request.config.getini("timeout") == "120"
    assert request.config.pluginmanager.hasplugin("timeout")
