"""The machine-wide build cache (tests/harness/cache.py) with real processes: concurrent
runs build a key once, and what a killed or failed build left is never used.

Each test has a cache directory of its own (``cache=tmp_path``); the builders are
forked processes that say where they are through files, and are stopped by pid."""

from __future__ import annotations

import multiprocessing
import os
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.harness import proc
from tests.harness.cache import COMPLETE, cached_build
from tests.harness.wait import until

NAME = "thing-0123456789abcdef"
FORK = multiprocessing.get_context("fork")


def _lines(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


def _waiting_for(lock: Path) -> list[int]:
    """Pids blocked in flock on ``lock`` (/proc/locks lists a waiter as ``-> FLOCK``)."""
    st = os.stat(lock)
    inode = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}"
    with open("/proc/locks") as f:
        return [int(w[5]) for w in (line.split() for line in f)
                if w[1:3] == ["->", "FLOCK"] and w[6] == inode]


def _recording_build(log: Path, go: Path | None = None) -> Callable[[Path], None]:
    """A build that logs each run (pid and ``out``), makes ``out``, and waits for ``go``."""
    def build(out: Path) -> None:
        out.mkdir()
        (out / "by").write_text(f"{os.getpid()}\n")
        with open(log, "a") as f:
            f.write(f"{os.getpid()} {out}\n")
        if go is not None:
            until(go.exists, timeout=60, what=f"{go} to exist")
    return build


def _child(cache: Path, log: Path, go: Path, result: Path) -> None:
    got = cached_build(NAME, _recording_build(log, go), cache=cache)
    result.write_text(f"{got}\n")


class Started:
    """What a test started, stopped at its end: forked builders (still our children, so
    their pids cannot have been reused) and strays, killed only while their pid still
    runs the command they were started with."""

    def __init__(self) -> None:
        self.builders: list[multiprocessing.process.BaseProcess] = []
        self.strays: list[tuple[int, list[str]]] = []

    def builder(self, target: Callable[..., None], *args: object) -> int:
        p = FORK.Process(target=target, args=args)
        p.start()
        self.builders.append(p)
        assert p.pid is not None
        return p.pid

    def kill(self, pid: int) -> None:
        [p] = [b for b in self.builders if b.pid == pid]
        p.kill()
        p.join(30)

    def join(self, pid: int) -> int | None:
        [p] = [b for b in self.builders if b.pid == pid]
        p.join(30)
        return p.exitcode

    def stop(self) -> None:
        for p in self.builders:
            if p.is_alive():
                p.kill()
            p.join(30)
        proc.kill_and_reap([pid for pid, argv in self.strays if proc.cmdline(pid) == argv])


@pytest.fixture
def started() -> Iterator[Started]:
    s = Started()
    yield s
    s.stop()


def test_a_build_is_made_once_then_reused(tmp_path: Path) -> None:
    log = tmp_path / "log"
    cache = tmp_path / "cache"
    first = cached_build(NAME, _recording_build(log), cache=cache, note="what went in")
    assert first == cache / NAME
    assert (first / COMPLETE).read_text() == "what went in\n"
    assert cached_build(NAME, _recording_build(log), cache=cache) == first
    assert len(_lines(log)) == 1
    # Only the tree and its lock, which stays (a removed lock lets two runs build).
    assert sorted(p.name for p in cache.iterdir()) == [NAME, f"{NAME}.lock"]
    assert (first / "by").stat().st_mode & 0o777 == 0o644


def test_two_processes_asking_at_once_build_once(tmp_path: Path, started: Started) -> None:
    cache, log, go = tmp_path / "cache", tmp_path / "log", tmp_path / "go"
    a = started.builder(_child, cache, log, go, tmp_path / "a")
    until(lambda: _lines(log), timeout=30, what="the first process to be building")
    b = started.builder(_child, cache, log, go, tmp_path / "b")
    until(lambda: b in _waiting_for(cache / f"{NAME}.lock"), timeout=30,
          what="the second process to wait for the lock")
    go.touch()
    assert (started.join(a), started.join(b)) == (0, 0)
    assert (tmp_path / "a").read_text() == (tmp_path / "b").read_text() == f"{cache / NAME}\n"
    assert [line.split()[0] for line in _lines(log)] == [str(a)]
    assert (cache / NAME / "by").read_text() == f"{a}\n"


def test_a_killed_build_is_not_used_and_its_leftovers_go(tmp_path: Path,
                                                         started: Started) -> None:
    cache, log = tmp_path / "cache", tmp_path / "log"
    killed = started.builder(_child, cache, log, tmp_path / "never", tmp_path / "r")
    until(lambda: _lines(log), timeout=30, what="the build to be under way")
    started.kill(killed)
    assert not (cache / NAME).exists()
    [partial] = cache.glob(f"{NAME}.building-*")  # what the kill left
    assert (partial / NAME / "by").exists()

    got = cached_build(NAME, _recording_build(log), cache=cache)
    assert (got / "by").read_text() == f"{os.getpid()}\n"
    assert len(_lines(log)) == 2
    assert sorted(p.name for p in cache.iterdir()) == [NAME, f"{NAME}.lock"]


_STRAY = """\
until [ -e "$1" ]; do sleep 0.01; done
mkdir -p "$2" && echo stray > "$2/stray"
"""


def _stray_argv(go: Path, out: Path) -> list[str]:
    return ["sh", "-c", _STRAY, "stray", str(go), str(out)]


def _child_with_a_stray(cache: Path, log: Path, go: Path, stray_pid: Path) -> None:
    """A build whose child outlives it and writes into its ``out`` later (mmdebstrap's
    dpkg after mmdebstrap was killed)."""
    def build(out: Path) -> None:
        stray = subprocess.Popen(_stray_argv(go, out), start_new_session=True)
        stray_pid.write_text(f"{stray.pid}\n")
        _recording_build(log, cache.parent / "never")(out)
    cached_build(NAME, build, cache=cache)


def test_a_stray_writer_of_a_killed_build_never_lands_in_the_next(tmp_path: Path,
                                                                  started: Started) -> None:
    """With one fixed temporary name the stray's file would be in the new tree."""
    cache, log, go, stray_pid = (tmp_path / n for n in ("cache", "log", "go", "stray_pid"))
    killed = started.builder(_child_with_a_stray, cache, log, go, stray_pid)
    until(lambda: _lines(log), timeout=30, what="the build to be under way")
    old_out = Path(_lines(log)[0].split()[1])
    started.strays.append((int(stray_pid.read_text()), _stray_argv(go, old_out)))
    started.kill(killed)

    def build(out: Path) -> None:
        _recording_build(log)(out)
        go.touch()  # the stray writes while this build runs
        until((old_out / "stray").exists, timeout=30, what="the stray to write")

    got = cached_build(NAME, build, cache=cache)
    assert sorted(p.name for p in got.iterdir()) == [COMPLETE, "by"]
    assert (got / "by").read_text() == f"{os.getpid()}\n"


def test_a_failed_build_leaves_nothing_and_is_tried_again(tmp_path: Path) -> None:
    cache, log = tmp_path / "cache", tmp_path / "log"

    def failing(out: Path) -> None:
        _recording_build(log)(out)
        raise RuntimeError("mmdebstrap failed")

    with pytest.raises(RuntimeError, match="mmdebstrap failed"):
        cached_build(NAME, failing, cache=cache)
    assert sorted(p.name for p in cache.iterdir()) == [f"{NAME}.lock"]
    with pytest.raises(RuntimeError, match="made no directory"):
        cached_build(NAME, lambda out: None, cache=cache)
    got = cached_build(NAME, _recording_build(log), cache=cache)
    assert (got / COMPLETE).exists() and len(_lines(log)) == 2


def test_in_place_builds_where_it_is_used_and_an_unfinished_one_is_built_again(
        tmp_path: Path) -> None:
    cache, log = tmp_path / "cache", tmp_path / "log"
    # What a crash in the middle of an in-place build (or a pre-marker cache) leaves.
    (cache / NAME).mkdir(parents=True)
    (cache / NAME / "half").write_text("")
    got = cached_build(NAME, _recording_build(log), cache=cache, in_place=True)
    assert _lines(log) == [f"{os.getpid()} {cache / NAME}"]  # built at its final path
    assert sorted(p.name for p in got.iterdir()) == [COMPLETE, "by"]
    assert (got / COMPLETE).read_text() == f"{NAME}\n"


@pytest.mark.parametrize("name", ["", "../x", "a/b", ".lock", "x*"])
def test_a_name_is_one_plain_path_component(tmp_path: Path, name: str) -> None:
    with pytest.raises(ValueError, match="one path component"):
        cached_build(name, _recording_build(tmp_path / "log"), cache=tmp_path)
