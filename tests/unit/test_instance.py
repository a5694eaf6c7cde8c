"""The single-instance locks (agent/daemon/instance.py) on real files."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from agent.daemon import instance
from agent.daemon.instance import AlreadyRunning, CannotLock, InstanceLock


@pytest.fixture(autouse=True)
def private_locks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(instance, "SYSTEM_LOCKS", tmp_path / "locks")
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path / "xdg"))


def test_second_holder_is_refused_with_the_owners_pid_and_the_path(tmp_path: Path) -> None:
    hosts = tmp_path / "hosts"
    first = InstanceLock(tmp_path / "a" / "control.sock", [hosts])
    first.acquire()
    try:
        second = InstanceLock(tmp_path / "b" / "control.sock", [tmp_path / "other", hosts])
        with pytest.raises(AlreadyRunning) as err:
            second.acquire()
        assert f"(pid {os.getpid()})" in str(err.value) and str(hosts) in str(err.value)
        # All or nothing: the lock it did get (for "other") was given back.
        third = InstanceLock(tmp_path / "c" / "control.sock", [tmp_path / "other"])
        third.acquire()
        third.release()
    finally:
        first.release()
    again = InstanceLock(tmp_path / "b" / "control.sock", [hosts])
    again.acquire()  # released: free for the next agent
    again.release()


def test_a_symlink_to_a_managed_file_is_the_same_file(tmp_path: Path) -> None:
    real = tmp_path / "hosts"
    real.write_text("")
    link = tmp_path / "hosts-link"
    link.symlink_to(real)
    first = InstanceLock(tmp_path / "a" / "control.sock", [real])
    first.acquire()
    try:
        with pytest.raises(AlreadyRunning):
            InstanceLock(tmp_path / "b" / "control.sock", [link]).acquire()
    finally:
        first.release()


def test_extend_takes_new_files_and_refuses_anothers(tmp_path: Path) -> None:
    mine = InstanceLock(tmp_path / "a" / "control.sock", [tmp_path / "x"])
    theirs = InstanceLock(tmp_path / "b" / "control.sock", [tmp_path / "y"])
    mine.acquire()
    theirs.acquire()
    try:
        mine.extend([tmp_path / "x", tmp_path / "z"])
        with pytest.raises(AlreadyRunning):
            mine.extend([tmp_path / "w", tmp_path / "y"])
        # "w" was given back with the refusal.
        other = InstanceLock(tmp_path / "c" / "control.sock", [tmp_path / "w"])
        other.acquire()
        other.release()
    finally:
        mine.release()
        theirs.release()


def test_unusable_lock_directory_is_a_clear_error(tmp_path: Path) -> None:
    not_a_dir = tmp_path / "file"
    not_a_dir.write_text("")
    with pytest.raises(CannotLock) as err:
        InstanceLock(not_a_dir / "control.sock", []).acquire()
    assert not isinstance(err.value, AlreadyRunning)
    assert "nothing was changed" in str(err.value)
