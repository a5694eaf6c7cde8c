"""Atomic replacement: never a partial file, metadata kept, nothing left behind."""

from __future__ import annotations

import errno
import os
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.sinks import atomic
from agent.sinks.atomic import ConcurrentEdit, cleanup_stale_temps, read_snapshot, replace_file

from .helpers import NOBODY, needs_root


def temps(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if ".namesync-" in p.name)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_replaces_content_and_leaves_no_temp_file(tmp_path: Path) -> None:
    f = tmp_path / "hosts"
    f.write_bytes(b"old\n")
    assert replace_file(f, b"new\r\n\xff") == "rename"
    assert f.read_bytes() == b"new\r\n\xff"
    assert temps(tmp_path) == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hosts"]


def test_reader_holding_the_old_file_never_sees_a_partial_one(tmp_path: Path) -> None:
    f = tmp_path / "hosts"
    f.write_bytes(b"A" * 100_000)
    with f.open("rb") as reader:
        replace_file(f, b"B" * 10)
        assert reader.read() == b"A" * 100_000  # the old inode is intact, not truncated
    assert f.read_bytes() == b"B" * 10


def test_existing_mode_is_kept(tmp_path: Path) -> None:
    f = tmp_path / "hosts"
    f.write_bytes(b"old\n")
    f.chmod(0o600)
    replace_file(f, b"new\n")
    assert mode(f) == 0o600
    f.chmod(0o640)
    replace_file(f, b"newer\n")
    assert mode(f) == 0o640


def test_forced_mode_is_applied(tmp_path: Path) -> None:
    f = tmp_path / "addn-hosts"
    f.write_bytes(b"old\n")
    f.chmod(0o600)
    replace_file(f, b"new\n", mode=0o644)
    assert mode(f) == 0o644


def test_new_file_is_0644_whatever_the_umask(tmp_path: Path) -> None:
    f = tmp_path / "addn-hosts"
    old = os.umask(0o077)
    try:
        replace_file(f, b"10.0.0.1 a.dns.host\n")
    finally:
        os.umask(old)
    assert f.read_bytes() == b"10.0.0.1 a.dns.host\n"
    assert mode(f) == 0o644


def test_owner_is_kept(tmp_path: Path) -> None:
    needs_root()
    f = tmp_path / "hosts"
    f.write_bytes(b"old\n")
    os.chown(f, NOBODY, NOBODY)
    f.chmod(0o644)
    replace_file(f, b"new\n")
    st = f.stat()
    assert (st.st_uid, st.st_gid) == (NOBODY, NOBODY)
    assert mode(f) == 0o644
    assert f.read_bytes() == b"new\n"


def test_symlinked_target_is_replaced_at_its_real_path(tmp_path: Path) -> None:
    real_dir = tmp_path / "real"
    real_dir.mkdir()
    real = real_dir / "hosts.real"
    real.write_bytes(b"old\n")
    real.chmod(0o600)
    link = tmp_path / "hosts"
    link.symlink_to(real)
    replace_file(link, b"new\n")
    assert link.is_symlink()
    assert os.readlink(link) == str(real)
    assert real.read_bytes() == b"new\n"
    assert mode(real) == 0o600
    assert temps(tmp_path) == [] and temps(real_dir) == []


def test_concurrent_edit_is_detected_and_the_file_left_alone(tmp_path: Path) -> None:
    f = tmp_path / "hosts"
    f.write_bytes(b"what we read\n")
    snap = read_snapshot(f)
    f.write_bytes(b"edited by the user meanwhile\n")  # in place, same inode
    with pytest.raises(ConcurrentEdit):
        replace_file(f, b"ours\n", expect=snap)
    assert f.read_bytes() == b"edited by the user meanwhile\n"
    assert temps(tmp_path) == []


def test_concurrent_rename_over_the_file_is_detected(tmp_path: Path) -> None:
    f = tmp_path / "hosts"
    f.write_bytes(b"what we read\n")
    snap = read_snapshot(f)
    edited = tmp_path / "edited"
    edited.write_bytes(b"what we read\n")  # same bytes, another inode: an editor's save
    edited.rename(f)
    with pytest.raises(ConcurrentEdit):
        replace_file(f, b"ours\n", expect=snap)
    assert f.read_bytes() == b"what we read\n"
    assert temps(tmp_path) == []


def test_rename_between_check_and_exchange_is_given_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The last instant: an editor renames its file right after the identity check."""
    f = tmp_path / "hosts"
    f.write_bytes(b"what we read\n")
    snap = read_snapshot(f)
    real_check = atomic._same_file
    calls = []

    def check_then_editor_saves(
        path: Path, expect: atomic.Snapshot, *, renamed: bool = False
    ) -> bool:
        ok = real_check(path, expect, renamed=renamed)
        if not calls:
            editor = tmp_path / "editor-save"
            editor.write_bytes(b"what we read\nthe editor's line\n")
            editor.rename(f)
        calls.append(renamed)
        return ok

    monkeypatch.setattr(atomic, "_same_file", check_then_editor_saves)
    with pytest.raises(ConcurrentEdit):
        replace_file(f, b"ours\n", expect=snap)
    assert f.read_bytes() == b"what we read\nthe editor's line\n"
    assert temps(tmp_path) == []
    assert calls == [False, True]


def test_concurrent_creation_is_detected(tmp_path: Path) -> None:
    f = tmp_path / "hosts"
    snap = read_snapshot(f)
    f.write_bytes(b"appeared after our read\n")
    with pytest.raises(ConcurrentEdit):
        replace_file(f, b"ours\n", expect=snap)
    assert f.read_bytes() == b"appeared after our read\n"
    assert temps(tmp_path) == []


def test_matching_expectation_replaces(tmp_path: Path) -> None:
    f = tmp_path / "hosts"
    f.write_bytes(b"as read\n")
    replace_file(f, b"ours\n", expect=read_snapshot(f))
    assert f.read_bytes() == b"ours\n"
    g = tmp_path / "new"
    replace_file(g, b"ours\n", expect=read_snapshot(g))
    assert g.read_bytes() == b"ours\n"
    assert temps(tmp_path) == []


def test_failed_write_keeps_the_original_and_removes_the_temp(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    f = tmp_path / "hosts"
    f.write_bytes(b"precious\n")

    def full_disk(fd: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(atomic.os, "fsync", full_disk)
    with pytest.raises(OSError):
        replace_file(f, b"new\n")
    monkeypatch.undo()
    assert f.read_bytes() == b"precious\n"
    assert temps(tmp_path) == []


# A writer killed between writing its temp file and renaming it.
_KILLED_WRITER = r"""
import os, sys
from pathlib import Path
import agent.sinks.atomic as atomic
atomic.os.rename = lambda *a, **k: os._exit(0)
atomic.replace_file(Path(sys.argv[1]), b"half done\n")
os._exit(1)
"""


def killed_writer(path: Path) -> None:
    subprocess.run([sys.executable, "-c", _KILLED_WRITER, str(path)], check=True, timeout=60)


def test_cleanup_removes_what_a_killed_writer_left(tmp_path: Path) -> None:
    f = tmp_path / "hosts"
    f.write_bytes(b"keep\n")
    unrelated = [".hosts.bak", "hosts.namesync-1", ".other.namesync-1", ".hostsx.namesync-1"]
    for name in unrelated:
        (tmp_path / name).write_bytes(b"")
    killed_writer(f)
    killed_writer(f)
    left = [p for p in tmp_path.iterdir() if p.name.startswith(".hosts.namesync-")]
    assert len(left) == 2
    removed = cleanup_stale_temps(f)
    assert sorted(removed) == sorted(left)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["hosts", *unrelated])
    assert f.read_bytes() == b"keep\n"


def test_cleanup_finds_leftovers_of_a_symlinked_target(tmp_path: Path) -> None:
    real_dir = tmp_path / "real"
    real_dir.mkdir()
    real = real_dir / "hosts.real"
    real.write_bytes(b"keep\n")
    link = tmp_path / "hosts"
    link.symlink_to(real)
    killed_writer(link)
    assert temps(real_dir), "the killed writer should have left a temp file"
    cleanup_stale_temps(link)
    assert temps(real_dir) == []


@pytest.fixture
def full_tmpfs(tmp_path: Path) -> Iterator[Path]:
    """A real 64 KiB tmpfs (needs root; the session runs in a private mount namespace)."""
    needs_root()
    mnt = tmp_path / "small"
    mnt.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "namesync-unit", str(mnt)],
                          capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs: {done.stderr.decode().strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def _fill(directory: Path) -> None:
    with (directory / "filler").open("wb", buffering=0) as f:
        for size in (4096, 1):
            try:
                while True:
                    f.write(b"\0" * size)
            except OSError as e:
                assert e.errno == errno.ENOSPC


@pytest.mark.parametrize("reserve", ["fallocate", "no-fallocate"])
def test_in_place_rewrite_on_a_full_disk_leaves_the_old_bytes(
    full_tmpfs: Path, monkeypatch: pytest.MonkeyPatch, reserve: str
) -> None:
    """With fallocate the write is refused before a byte changes; without it (a
    filesystem that cannot reserve) the old bytes are written back."""
    f = full_tmpfs / "hosts"
    old = b"".join(b"10.0.%d.%d host-%d\n" % (i // 250, i % 250, i) for i in range(180))
    assert 3000 < len(old) < 4096
    f.write_bytes(old)
    _fill(full_tmpfs)
    if reserve == "no-fallocate":
        monkeypatch.setattr(atomic, "_reserve", lambda fd, size: None)
    with pytest.raises(OSError) as err:
        atomic._rewrite_in_place(f, b"#" * 100 + old + b"x" * 9000, read_snapshot(f))
    assert err.value.errno == errno.ENOSPC
    assert f.read_bytes() == old


def test_read_bytes_reads_only_regular_files_of_a_bounded_size(tmp_path: Path) -> None:
    from agent.sinks.atomic import NOT_A_FILE, read_bytes
    assert read_bytes(tmp_path / "none") is None
    (tmp_path / "f").write_bytes(b"abc")
    assert read_bytes(tmp_path / "f") == b"abc"
    assert read_bytes(tmp_path / "f", max_bytes=2) == NOT_A_FILE
    os.mkfifo(tmp_path / "fifo")  # no writer: a blocking open would hang
    (tmp_path / "link").symlink_to(tmp_path / "f")
    assert read_bytes(tmp_path / "fifo") == NOT_A_FILE
    assert read_bytes(tmp_path / "link") == b"abc"  # as replace_file writes through it
    assert read_bytes(tmp_path / "link", follow=False) == NOT_A_FILE


def test_a_symlinked_addn_hosts_that_holds_the_bytes_is_not_written_or_signalled_again(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from agent.plan.table import Table
    from agent.sinks import addn_hosts
    from agent.sinks.addn_hosts import AddnHostsSink
    from agent.sinks.dnsmasq_target import Candidate, SignalResult

    class Fixed:
        def candidates(self) -> list[Candidate]:
            return [Candidate(7, "test")]

    signals: list[object] = []
    monkeypatch.setattr(addn_hosts, "reload_dnsmasq",
                        lambda locator, **kw: signals.append(locator) or SignalResult(
                            7, "test", True, None))
    real, link = tmp_path / "real", tmp_path / "addn-hosts"
    link.symlink_to(real)
    sink = AddnHostsSink(link, Fixed())
    assert sink.apply(Table(), 0.0) and len(signals) == 1
    ino = real.stat().st_ino
    assert sink.apply(Table(), 0.0) and len(signals) == 1  # the same bytes: nothing to do
    assert link.is_symlink() and real.stat().st_ino == ino and sink.status.unchanged == 1


def test_writing_without_follow_never_goes_through_a_symlinked_directory(
        tmp_path: Path) -> None:
    # What a directory swapped for a symlink after every check (a race) meets.
    from agent.sinks.atomic import remove_in_directory, replace_file
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "f.rr").write_bytes(b"theirs\n")
    (tmp_path / "static.d").symlink_to(elsewhere)
    with pytest.raises(OSError):
        replace_file(tmp_path / "static.d" / "f.rr", b"ours\n", mode=0o644, follow=False)
    with pytest.raises(OSError):
        remove_in_directory(tmp_path / "static.d" / "f.rr")
    assert [p.name for p in elsewhere.iterdir()] == ["f.rr"]
    assert (elsewhere / "f.rr").read_bytes() == b"theirs\n"
