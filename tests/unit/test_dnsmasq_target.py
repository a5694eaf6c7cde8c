"""Signal only the right process: a pid is proven to be NM's dnsmasq before SIGHUP."""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from agent.resolvers.view import DnsmasqTarget, ResolverView
from agent.sinks.dnsmasq_target import (
    Candidate,
    NetworkManagerLocator,
    PidFileLocator,
    reload_dnsmasq,
    why_not_dnsmasq,
)
from tests.harness.proc import state as proc_state

from .helpers import SignalRecorder, signal_recorder, until

NM_CMDLINE = (
    b"/usr/sbin/dnsmasq\0--no-resolv\0--keep-in-foreground\0--no-hosts\0--bind-interfaces\0"
    b"--pid-file=/run/NetworkManager/dnsmasq.pid\0--listen-address=127.0.0.1\0"
    b"--cache-size=400\0--clear-on-reload\0--conf-file=/dev/null\0"
    b"--enable-dbus=org.freedesktop.NetworkManager.dnsmasq\0"
    b"--conf-dir=/etc/NetworkManager/dnsmasq.d\0"
)
LIBVIRT_CMDLINE = (
    b"/usr/sbin/dnsmasq\0--conf-file=/var/lib/libvirt/dnsmasq/default.conf\0--leasefile-ro\0"
    b"--dhcp-script=/usr/libexec/libvirt_leaseshelper\0"
)


def fake_proc(root: Path, pid: int, comm: str, state: str, cmdline: bytes) -> Path:
    """A /proc look-alike holding one process entry."""
    d = root / "proc" / str(pid)
    d.mkdir(parents=True)
    (d / "comm").write_text(comm + "\n")
    (d / "stat").write_text(f"{pid} ({comm}) {state} 1 {pid} {pid} 0 -1 4194560 100 0 0 0\n")
    (d / "cmdline").write_bytes(cmdline)
    # /proc/PID/exe names the binary: the installed dnsmasq.
    (d / "exe").symlink_to(shutil.which("dnsmasq", path="/usr/sbin:/sbin") or "/usr/sbin/dnsmasq")
    return root / "proc"


@dataclass(frozen=True)
class FixedLocator:
    pid: int

    def candidates(self) -> list[Candidate]:
        return [Candidate(self.pid, "test")]


def pid_file(tmp_path: Path, content: bytes) -> PidFileLocator:
    p = tmp_path / "dnsmasq.pid"
    p.write_bytes(content)
    return PidFileLocator(p)


# --- PidFileLocator ---------------------------------------------------------


def test_missing_pid_file(tmp_path: Path) -> None:
    c = PidFileLocator(tmp_path / "dnsmasq.pid").locate()
    assert c.pid is None
    assert str(tmp_path / "dnsmasq.pid") in (c.problem or "")
    assert "does not exist" in (c.problem or "")


@pytest.mark.parametrize(
    "content", [b"", b"garbage\n", b"1\n", b"0", b"-42\n", b"12 34\n", b"0x1f\n", b"\xff\xfe"]
)
def test_pid_file_without_a_usable_pid(tmp_path: Path, content: bytes) -> None:
    loc = pid_file(tmp_path, content)
    c = loc.locate()
    assert c.pid is None
    assert "not a pid" in (c.problem or "")
    result = reload_dnsmasq(loc)
    assert result.sent is False
    assert result.reason == c.problem


def test_valid_pid_file(tmp_path: Path) -> None:
    c = pid_file(tmp_path, b"  4242\n").locate()
    assert c.pid == 4242
    assert c.problem is None
    assert str(tmp_path / "dnsmasq.pid") in c.via


def test_absurd_pid_is_refused_not_a_crash(tmp_path: Path) -> None:
    result = reload_dnsmasq(pid_file(tmp_path, b"99999999999999999999\n"))
    assert result.sent is False
    assert result.reason


# --- why_not_dnsmasq on real processes ---------------------------------------


@pytest.fixture
def recorder(tmp_path: Path) -> Iterator[SignalRecorder]:
    with signal_recorder(tmp_path) as r:
        yield r


def test_live_process_that_is_not_dnsmasq() -> None:
    sleeper = subprocess.Popen(["sleep", "30"])
    try:
        until(
            lambda: Path(f"/proc/{sleeper.pid}/comm").read_text().strip() == "sleep",
            what="sleep to exec",
        )
        why = why_not_dnsmasq(sleeper.pid)
        assert why is not None
        assert str(sleeper.pid) in why and "'sleep'" in why
    finally:
        sleeper.kill()
        sleeper.wait()


def test_dead_pid(tmp_path: Path) -> None:
    child = subprocess.Popen(["true"])
    child.wait()  # exited and reaped: the pid is gone
    why = why_not_dnsmasq(child.pid)
    assert why is not None
    assert str(child.pid) in why and "not running" in why
    result = reload_dnsmasq(pid_file(tmp_path, f"{child.pid}\n".encode()))
    assert result.sent is False
    assert result.pid == child.pid
    assert "not running" in (result.reason or "")


def test_zombie(tmp_path: Path) -> None:
    child = subprocess.Popen(["true"])
    try:
        until(lambda: proc_state(child.pid) == "Z", what="child to become a zombie")
        why = why_not_dnsmasq(child.pid)
        assert why is not None and str(child.pid) in why
        result = reload_dnsmasq(pid_file(tmp_path, f"{child.pid}\n".encode()))
        assert result.sent is False
        assert result.reason == why
    finally:
        child.wait()


# --- reload_dnsmasq never signals anything but NM's dnsmasq -------------------


def test_pid_file_pointing_at_another_process_gets_no_signal(
    tmp_path: Path, recorder: SignalRecorder
) -> None:
    result = reload_dnsmasq(pid_file(tmp_path, f"{recorder.pid}\n".encode()))
    assert result.sent is False
    assert result.pid == recorder.pid
    assert "not dnsmasq" in (result.reason or "")
    assert recorder.sync() == ["USR1"]  # no HUP before the sync signal


def test_verified_dnsmasq_gets_exactly_one_sighup(tmp_path: Path, recorder: SignalRecorder) -> None:
    # The positive control for the test above: the recorder does record a
    # SIGHUP when /proc says it is NetworkManager's dnsmasq.
    proc = fake_proc(tmp_path, recorder.pid, "dnsmasq", "S", NM_CMDLINE)
    assert why_not_dnsmasq(recorder.pid, proc) is None
    result = reload_dnsmasq(pid_file(tmp_path, f"{recorder.pid}\n".encode()), proc)
    assert (result.sent, result.pid, result.reason) == (True, recorder.pid, None)
    assert recorder.sync() == ["HUP", "USR1"]


def test_libvirt_dnsmasq_is_never_signalled(tmp_path: Path, recorder: SignalRecorder) -> None:
    proc = fake_proc(tmp_path, recorder.pid, "dnsmasq", "S", LIBVIRT_CMDLINE)
    why = why_not_dnsmasq(recorder.pid, proc)
    assert why is not None and "libvirt" in why
    result = reload_dnsmasq(FixedLocator(recorder.pid), proc)
    assert result.sent is False
    assert result.reason == why
    assert recorder.sync() == ["USR1"]


def test_dnsmasq_zombie_is_never_signalled(tmp_path: Path, recorder: SignalRecorder) -> None:
    proc = fake_proc(tmp_path, recorder.pid, "dnsmasq", "Z", b"")
    why = why_not_dnsmasq(recorder.pid, proc)
    assert why is not None and "zombie" in why
    result = reload_dnsmasq(FixedLocator(recorder.pid), proc)
    assert result.sent is False
    assert recorder.sync() == ["USR1"]


def test_process_named_like_dnsmasq_with_parenthesis_in_stat(tmp_path: Path) -> None:
    # comm may contain ") Z (": the state is read after the *last* parenthesis.
    d = tmp_path / "proc" / "77"
    d.mkdir(parents=True)
    (d / "comm").write_text("dnsmasq\n")
    (d / "stat").write_text("77 (dnsmasq) S 1 77 77 0 -1\n")
    (d / "cmdline").write_bytes(NM_CMDLINE)
    (d / "exe").symlink_to(shutil.which("dnsmasq", path="/usr/sbin:/sbin") or "/usr/sbin/dnsmasq")
    assert why_not_dnsmasq(77, tmp_path / "proc") is None
    (d / "stat").write_text("77 (dnsmasq) Z 1 77 77 0 -1\n")
    assert "zombie" in (why_not_dnsmasq(77, tmp_path / "proc") or "")


@dataclass(frozen=True)
class Watched:
    """What the NetworkManager watcher would hold; the locator only reads ``view``."""

    view: ResolverView


def test_bus_candidate_first_then_pid_file_when_bus_pid_is_gone(
        tmp_path: Path, recorder: SignalRecorder) -> None:
    """NM replaced its dnsmasq: a stale bus pid is skipped, never signalled, and the
    next candidate is tried; every refusal is reported."""
    gone = subprocess.Popen(["true"])
    gone.wait()
    fallback = pid_file(tmp_path, f"{recorder.pid}\n".encode())
    via = "D-Bus name org.freedesktop.NetworkManager.dnsmasq"
    seen = ResolverView("networkmanager", True, True, "dnsmasq", DnsmasqTarget(gone.pid, via))
    locator = NetworkManagerLocator(Watched(seen), fallback)
    result = reload_dnsmasq(locator)
    assert not result.sent
    assert result.via == "D-Bus name org.freedesktop.NetworkManager.dnsmasq"
    assert result.reason is not None
    assert result.reason.startswith(f"pid {gone.pid} is not running; pid {recorder.pid} is ")
    assert recorder.sync() == ["USR1"]  # no HUP before the sync signal


def test_renamed_process_is_refused_by_its_executable(
        tmp_path: Path, recorder: SignalRecorder) -> None:
    """comm, argv and everything else say dnsmasq; /proc/PID/exe says otherwise."""
    proc = fake_proc(tmp_path, recorder.pid, "dnsmasq", "S", NM_CMDLINE)
    exe = proc / str(recorder.pid) / "exe"
    exe.unlink()
    exe.symlink_to(sys.executable)
    why = why_not_dnsmasq(recorder.pid, proc)
    assert why is not None and "not a dnsmasq binary" in why
    assert reload_dnsmasq(FixedLocator(recorder.pid), proc).sent is False
    assert recorder.sync() == ["USR1"]


def test_upgraded_binary_still_counts(tmp_path: Path, recorder: SignalRecorder) -> None:
    """After a package upgrade the running dnsmasq's exe reads 'PATH (deleted)'."""
    proc = fake_proc(tmp_path, recorder.pid, "dnsmasq", "S", NM_CMDLINE)
    real = shutil.which("dnsmasq", path="/usr/sbin:/sbin") or "/usr/sbin/dnsmasq"
    gone = tmp_path / "gone"
    gone.write_bytes(b"old binary")
    exe = proc / str(recorder.pid) / "exe"
    exe.unlink()
    exe.symlink_to(gone)  # stat: another inode, like the deleted old binary
    assert "not a dnsmasq binary" in (why_not_dnsmasq(recorder.pid, proc) or "")
    exe.unlink()
    exe.symlink_to(f"{real} (deleted)")  # readlink of an upgraded binary; stat fails
    assert why_not_dnsmasq(recorder.pid, proc) is None
