"""A directory of parsed files (agent/sources/parsed_dir.py): real inotify on a temp dir."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from agent.sources.parsed_dir import DirView, FileFormat, Incomplete, ParsedDir


def key(name: str) -> str | None:
    return name.removesuffix(".num") if name.endswith(".num") else None


def parse(_key: str, data: bytes) -> int:
    text = data.decode()
    if text.endswith("..."):
        raise Incomplete()
    if not text.strip().isdigit():
        raise ValueError(f"not a number: {text[:10]!r}")
    return int(text)


def write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")  # not ours: ignored
    tmp.write_text(text)
    os.rename(tmp, path)


async def until(probe: Callable[[], object], what: str) -> None:
    deadline = time.monotonic() + 5
    while not probe():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.002)


def run_with(directory: Path, keep_last_good: bool,
             body: Callable[[ParsedDir[int], list[DirView[int]]], object]) -> None:
    async def main() -> None:
        seen: list[DirView[int]] = []
        watched = ParsedDir(directory, FileFormat(key=key, parse=parse, max_bytes=64,
                                                  keep_last_good=keep_last_good),
                            lambda new, old: seen.append(new))
        task = asyncio.create_task(watched.run())
        await asyncio.wait_for(watched.read.wait(), 5)
        await body(watched, seen)  # type: ignore[misc]
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(main())


def test_follows_into_existence_keeps_the_last_good_value_and_reports_refusals(
        tmp_path: Path) -> None:
    directory = tmp_path / "lib" / "state"

    async def body(w: ParsedDir[int], seen: list[DirView[int]]) -> None:
        assert w.view == DirView() and w.watching == tmp_path
        directory.mkdir(parents=True)
        write(directory / "a.num", "1")
        (directory / "other.txt").write_text("x")  # not ours
        await until(lambda: w.view.files == {"a": 1}, "a read")
        assert w.view.present
        write(directory / "a.num", "garbage")
        await until(lambda: w.view.refused, "a refused")
        assert w.view.files == {"a": 1}  # the last good value stays
        assert w.view.refused == {"a": "not a number: 'garbage'"}
        write(directory / "a.num", "2...")  # caught mid-write: neither value nor refusal
        write(directory / "b.num", "7")
        await until(lambda: "b" in w.view.files, "b read")
        assert w.view.files == {"a": 1, "b": 7}
        assert w.view.refused == {"a": "not a number: 'garbage'"}
        write(directory / "a.num", "3")
        await until(lambda: w.view.files.get("a") == 3, "a fixed")
        assert w.view.refused == {}
        (directory / "b.num").write_text("x" * 100)  # in place, and too large
        await until(lambda: w.view.refused.get("b") == "more than 64 bytes", "b too large")
        (directory / "b.num").unlink()
        await until(lambda: "b" not in w.view.files and not w.view.refused, "b gone")
        n = len(seen)
        os.utime(directory / "a.num")  # no content change: no callback
        write(directory / "a.num", "3")
        await asyncio.sleep(0.05)
        assert len(seen) == n

    run_with(directory, True, body)


def test_a_refused_file_may_lose_its_value_and_a_removed_directory_empties_the_view(
        tmp_path: Path) -> None:
    async def body(w: ParsedDir[int], seen: list[DirView[int]]) -> None:
        write(tmp_path / "a.num", "1")
        await until(lambda: w.view.files == {"a": 1}, "a read")
        write(tmp_path / "a.num", "?")
        await until(lambda: w.view.refused, "a refused")
        assert w.view.files == {}

    run_with(tmp_path, False, body)

    directory = tmp_path / "d"
    directory.mkdir()
    write(directory / "x.num", "5")

    async def gone(w: ParsedDir[int], seen: list[DirView[int]]) -> None:
        assert w.view.files == {"x": 5}  # read before ``read`` was set
        for p in directory.iterdir():
            p.unlink()
        directory.rmdir()
        await until(lambda: w.view == DirView(), "emptied")

    run_with(directory, True, gone)


@pytest.mark.parametrize("free", [True, False])
def test_a_small_file_under_a_free_lock_is_read_on_the_loop_else_in_a_thread(
        tmp_path: Path, free: bool) -> None:
    """netavark's commit lock is nearly always free when its file's close wakes us: the
    read then skips two thread hops. Held, the read waits for it in a worker thread."""
    import contextlib
    import threading
    from collections.abc import Iterator

    readers: list[int] = []
    locked: list[str] = []

    def parse_where(k: str, data: bytes) -> int:
        readers.append(threading.get_ident())
        return parse(k, data)

    @contextlib.contextmanager
    def lock(_d: Path) -> Iterator[None]:
        locked.append("waited")
        yield

    @contextlib.contextmanager
    def lock_now(_d: Path) -> Iterator[bool]:
        locked.append("tried")
        yield free

    async def main() -> None:
        loop_thread = threading.get_ident()
        seen: list[DirView[int]] = []
        fmt = FileFormat(key=key, parse=parse_where, max_bytes=64, read_lock=lock,
                         read_lock_now=lock_now)
        watched = ParsedDir(tmp_path, fmt, lambda new, old: seen.append(new))
        task = asyncio.create_task(watched.run())
        await asyncio.wait_for(watched.read.wait(), 5)
        readers.clear()
        locked.clear()
        write(tmp_path / "a.num", "7")
        await until(lambda: watched.view.files.get("a") == 7, "a = 7")
        # (the temp file's own events may bring a read of nothing of ours first)
        assert readers
        if free:
            assert set(readers) == {loop_thread} and set(locked) == {"tried"}
        else:
            assert loop_thread not in readers
            assert locked[-2:] == ["tried", "waited"]
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(main())
