"""aardvark-dns files: the parser (real files, newer formats, garbage) and the directory watcher.

The watcher tests use a real directory and real inotify; the files in them are written by
the test the way netavark writes them (append a line, rewrite in place, remove the last),
since netavark itself only runs under Podman: the integration tests cover the real writer.
"""

from __future__ import annotations

import asyncio
import shutil
import string
from collections.abc import Awaitable, Callable
from ipaddress import IPv4Address, IPv6Address, ip_address
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agent.sources.podman.aardvark import (
    AardvarkFormatError,
    AardvarkWatcher,
    Entry,
    Incomplete,
    NetworkFile,
    Snapshot,
    container_views,
    parse_network_file,
    vet,
)
from agent.sources.podman.view import NetworkView

DATA = Path(__file__).parent / "data" / "podman"
A = "a" * 64
B = "b" * 64
C = "c" * 64


def test_real_files_from_netavark_1_4() -> None:
    web = parse_network_file("web-net", (DATA / "aardvark_web-net").read_bytes())
    assert web.gateways == (ip_address("10.89.90.1"), ip_address("fd00:90::1"))
    first = web.entries[0]
    assert first.ipv4 == (IPv4Address("10.89.90.2"),)
    assert first.ipv6 == (IPv6Address("fd00:90::2"),)
    assert first.names == ("web_1", "www", "web_1", first.container_id[:12])
    db = parse_network_file("db_net", (DATA / "aardvark_db_net").read_bytes())
    assert db.entries[0].ipv6 == ()  # an empty field: no IPv6 on that network


def test_newer_format_with_dns_servers_and_several_addresses() -> None:
    text = (f"10.0.0.1,fd00::1 1.1.1.1,9.9.9.9\n"
            f"{A} 10.0.0.2,10.0.1.2 fd00::2 web,alias,{A[:12]} 8.8.8.8\n"
            f"{B}  fd00::3 six\n")
    f = parse_network_file("n", text.encode())
    assert f.entries == (
        Entry(A, (IPv4Address("10.0.0.2"), IPv4Address("10.0.1.2")), (IPv6Address("fd00::2"),),
              ("web", "alias", A[:12])),
        Entry(B, (), (IPv6Address("fd00::3"),), ("six",)),
    )


def test_container_views_join_networks_in_inspect_terms() -> None:
    files = [NetworkFile("n2", (ip_address("10.0.2.1"),),
                         (Entry(A, (IPv4Address("10.0.2.5"),), (), ("web", A[:12])),)),
             NetworkFile("n1", (ip_address("10.0.1.1"),),
                         (Entry(A, (IPv4Address("10.0.1.5"),), (), ("web", "www", A[:12])),))]
    (v,) = container_views(files).values()
    assert (v.id, v.name) == (A, "web")
    assert v.networks == (NetworkView("n1", (ip_address("10.0.1.5"),), ("www", A[:12])),
                          NetworkView("n2", (ip_address("10.0.2.5"),), (A[:12],)))


@pytest.mark.parametrize("data", [b"", b"10.0.0.1", f"10.0.0.1\n{A} 10.0.0.2  web".encode()])
def test_file_being_written_is_incomplete_not_an_error(data: bytes) -> None:
    with pytest.raises(Incomplete):
        parse_network_file("n", data)


@pytest.mark.parametrize(("data", "match"), [
    (b"\n", "line 1"),
    (b"not-an-ip\n", "line 1: gateway"),
    (b"10.0.0.1 x y\n", "line 1: expected GATEWAYS"),
    (f"10.0.0.1\n{A[:-1]} 10.0.0.2  web\n".encode(), "line 2: not a container id"),
    (f"10.0.0.1\n{A.upper()} 10.0.0.2  web\n".encode(), "line 2: not a container id"),
    (f"10.0.0.1\n{A} 10.0.0.2 web\n".encode(), "line 2: expected ID"),
    (f"10.0.0.1\n{A} fd00::2  web\n".encode(), "IPv6 address fd00::2 in the IPv4 field"),
    (f"10.0.0.1\n{A}  10.0.0.2 web\n".encode(), "IPv4 address 10.0.0.2 in the IPv6 field"),
    (f"10.0.0.1\n{A} 10.0.0.2  web,,x\n".encode(), "line 2: empty name"),
    (f"10.0.0.1\n{A} 10.0.0.2  \n".encode(), "line 2: empty name"),
    (f"10.0.0.1\n{A} 10.0.0.256  web\n".encode(), "line 2: IPv4"),
    (f"10.0.0.1\n{A} fe80::1%eth0  web\n".encode(), "line 2"),
    (f"10.0.0.1\n{A} 10.0.0.2  we\tb\n".encode(), "line 2: control character"),
    (f"10.0.0.1\n{A} 10.0.0.2  we\x00b\n".encode(), "line 2: control character"),
    (b"10.0.0.1\n\xff\xfe\n", "line 2: not UTF-8"),
    (b"10.0.0.1\n" + b"x" * (5 << 20) + b"\n", "bytes, more than"),
])
def test_garbage_is_a_format_error_naming_the_line(data: bytes, match: str) -> None:
    with pytest.raises(AardvarkFormatError, match=match):
        parse_network_file("n", data)


@given(st.binary(max_size=300))
def test_arbitrary_bytes_parse_or_fail_cleanly(data: bytes) -> None:
    try:
        f = parse_network_file("n", data)
    except (AardvarkFormatError, Incomplete):
        return
    for e in f.entries:
        assert len(e.container_id) == 64
        assert all(n for n in e.names)


name = st.text(alphabet=string.ascii_letters + string.digits + "_.-", min_size=1, max_size=20)
entries = st.lists(st.tuples(
    st.text(alphabet="0123456789abcdef", min_size=64, max_size=64),
    st.lists(st.ip_addresses(v=4).filter(lambda a: not (a.is_unspecified or a.is_multicast)),
             max_size=2),
    st.lists(st.ip_addresses(v=6).filter(lambda a: not (a.is_unspecified or a.is_multicast)),
             max_size=2),
    st.lists(name, min_size=1, max_size=3),
), max_size=5, unique_by=lambda t: t[0])


Item = tuple[str, list[IPv4Address], list[IPv6Address], list[str]]


@given(entries)
def test_what_netavark_writes_is_what_is_read(items: list[Item]) -> None:
    lines = ["10.89.0.1"]
    for cid, v4, v6, names in items:
        lines.append(f"{cid} {','.join(map(str, v4))} {','.join(map(str, v6))} {','.join(names)}")
    f = parse_network_file("n", ("\n".join(lines) + "\n").encode())
    assert [(e.container_id, list(e.ipv4), list(e.ipv6), list(e.names)) for e in f.entries] == [
        (cid, v4, v6, names) for cid, v4, v6, names in items]


# --- the watcher, on a real directory with real inotify --------------------------------


class Recorder:
    def __init__(self) -> None:
        self.snapshots: list[Snapshot] = []
        self.changed = asyncio.Event()

    def __call__(self, snap: Snapshot) -> None:
        self.snapshots.append(snap)
        self.changed.set()

    @property
    def last(self) -> Snapshot:
        return self.snapshots[-1] if self.snapshots else Snapshot()

    async def until(self, probe: Callable[[Snapshot], bool], what: str) -> Snapshot:
        async def wait() -> Snapshot:
            while not probe(self.last):
                self.changed.clear()
                await self.changed.wait()
            return self.last
        try:
            return await asyncio.wait_for(wait(), 5)
        except TimeoutError:
            raise AssertionError(f"timed out waiting for {what}; last {self.last}") from None


async def until(probe: Callable[[], bool], what: str) -> None:
    """Yield to the watcher until ``probe()`` holds (its state changes only on the loop)."""
    for _ in range(5000):
        if probe():
            return
        await asyncio.sleep(0.001)
    raise AssertionError(f"timed out waiting for {what}")


def run_watcher(directory: Path, body: Callable[[AardvarkWatcher, Recorder], Awaitable[None]]
                ) -> None:
    async def main() -> None:
        rec = Recorder()
        watcher = AardvarkWatcher(directory, rec)
        task = asyncio.create_task(watcher.run())
        try:
            await body(watcher, rec)
        finally:
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
    asyncio.run(main())


def append(path: Path, line: str) -> None:
    if not path.exists():
        path.write_text("10.89.0.1\n")
    with path.open("a") as f:
        f.write(line + "\n")


def line(cid: str, addr: str, *names: str) -> str:
    return f"{cid} {addr}  {','.join((*names, cid[:12]))}"


def test_watcher_follows_a_directory_that_appears_changes_and_goes(tmp_path: Path) -> None:
    directory = tmp_path / "containers" / "networks" / "aardvark-dns"

    async def body(watcher: AardvarkWatcher, rec: Recorder) -> None:
        await until(lambda: watcher.watching == tmp_path, "waiting on the nearest ancestor")
        assert not watcher.present
        directory.mkdir(parents=True)
        (directory / "aardvark.pid").write_text("123")  # never a network file
        append(directory / "net1", line(A, "10.89.0.2", "web", "www"))
        snap = await rec.until(lambda s: A in s.views, "web in net1")
        assert watcher.present
        v = snap.views[A]
        assert (v.name, v.networks[0].aliases) == ("web", ("www", A[:12]))

        append(directory / "net1", line(B, "10.89.0.3", "db"))
        await rec.until(lambda s: B in s.views, "db appended")

        # netavark's removal: rewrite the file in place without the line
        (directory / "net1").write_text(f"10.89.0.1\n{line(B, '10.89.0.3', 'db')}\n")
        snap = await rec.until(lambda s: A not in s.views, "web removed")
        assert set(snap.views) == {B}
        (directory / "net1").unlink()
        await rec.until(lambda s: not s.views, "last container gone")

        shutil.rmtree(tmp_path / "containers")
        await until(lambda: watcher.watching == tmp_path, "back to the ancestor")
        directory.mkdir(parents=True)
        append(directory / "net2", line(A, "10.89.1.2", "again"))
        snap = await rec.until(lambda s: A in s.views, "directory made again")
        assert snap.views[A].name == "again"

    run_watcher(directory, body)


def test_watcher_reports_garbage_and_recovers(tmp_path: Path) -> None:
    async def body(watcher: AardvarkWatcher, rec: Recorder) -> None:
        append(tmp_path / "good", line(A, "10.89.0.2", "web"))
        await rec.until(lambda s: A in s.views, "good file")
        (tmp_path / "bad").write_text("this is not netavark\n")
        snap = await rec.until(lambda s: "bad" in s.problems, "problem reported")
        assert snap.problems["bad"].startswith("line 1: expected GATEWAYS")
        assert A in snap.views  # one bad file does not take the others down
        (tmp_path / "bad").write_text(f"10.89.5.1\n{line(B, '10.89.5.2', 'db')}\n")
        snap = await rec.until(lambda s: not s.problems and B in s.views, "fixed")

    run_watcher(tmp_path, body)


def test_watcher_waits_for_a_half_written_line(tmp_path: Path) -> None:
    async def body(watcher: AardvarkWatcher, rec: Recorder) -> None:
        append(tmp_path / "n", line(A, "10.89.0.2", "web"))
        await rec.until(lambda s: A in s.views, "first line")
        with (tmp_path / "n").open("a") as f:
            f.write(line(B, "10.89.0.3", "db"))  # closed with no newline yet
        # Inotify events arrive in order: once a later file is seen, the half-written
        # one has been read too, and left as it was.
        append(tmp_path / "later", line(C, "10.89.1.2", "later"))
        snap = await rec.until(lambda s: C in s.views, "the later file")
        assert B not in snap.views and A in snap.views and not snap.problems
        with (tmp_path / "n").open("a") as f:
            f.write("\n")
        await rec.until(lambda s: B in s.views, "line completed")
        assert not rec.last.problems

    run_watcher(tmp_path, body)


def test_watcher_starts_with_what_is_already_there(tmp_path: Path) -> None:
    append(tmp_path / "n", line(A, "10.89.0.2", "web"))

    async def body(watcher: AardvarkWatcher, rec: Recorder) -> None:
        await rec.until(lambda s: A in s.views, "initial scan")

    run_watcher(tmp_path, body)


# --- vetting: a line stands for one real container, or it is refused -------------------


def reasons(data: bytes) -> list[tuple[int, str, str]]:
    return [(r.entry.line, r.entry.container_id[:4], r.reason.split(":")[0].split(" (")[0])
            for r in vet(parse_network_file("n", data))]


def test_alias_with_a_newline_as_netavark_wrote_it_is_refused_both_halves() -> None:
    """Recorded from netavark 1.4: a container created through the REST API with the alias
    "x\\n<64 x ab> 10.66.6.250  forged"; its short id ends what follows the newline."""
    assert reasons((DATA / "aardvark_forged").read_bytes()) == [
        (3, "71e1", "its short id ends line 4"),
        (4, "abab", "names 71e1756863f4, the short id of another container in this file"),
    ]


def test_the_forged_line_left_behind_alone_is_still_refused() -> None:
    # netavark removes a container's lines by its id: the forged one outlives its writer.
    forged = (DATA / "aardvark_forged").read_bytes().split(b"\n")
    assert reasons(b"\n".join((forged[0], forged[3], b""))) == [
        (2, "abab", "ends with the short id 71e1756863f4 of another container")]


def test_clean_files_are_not_refused() -> None:
    for f in ("aardvark_web-net", "aardvark_db_net"):
        assert vet(parse_network_file(f, (DATA / f).read_bytes())) == ()
    # A writer that adds no short ids at all (an older or newer netavark) is not refused.
    assert reasons(f"10.0.0.1\n{A} 10.0.0.2  web\n{B} 10.0.0.3  db\n".encode()) == []


def test_two_lines_for_one_id_are_both_refused() -> None:
    text = f"10.0.0.1\n{line(A, '10.0.0.2', 'web')}\n{line(A, '10.66.6.250', 'forged')}\n"
    assert [(n, why[:7]) for n, _, why in reasons(text.encode())] == [(2, "2 lines"),
                                                                     (3, "2 lines")]


def test_a_line_carrying_another_containers_short_id_is_refused() -> None:
    # What follows the newline can end on any names the forger likes, but not past the
    # short id Podman appends: it names the writer, not the claimed id.
    text = (f"10.0.0.1\n{A} 10.0.0.2  web,x\n{B} 10.66.6.250  forged,{B[:12]},{A[:12]}\n"
            f"{line(C, '10.0.0.4', 'db')}\n")
    assert [(n, cid) for n, cid, _ in reasons(text.encode())] == [(2, "aaaa"), (3, "bbbb")]
    # Alone in its file, the writer's own line is still shown as the forger.
    text = f"10.0.0.1\n{A} 10.0.0.2  web,x\n{B} 10.66.6.250  forged,{B[:12]},{A[:12]}\n"
    assert reasons(text.encode()) == [
        (2, "aaaa", "its short id ends line 3"),
        (3, "bbbb", f"names {A[:12]}, the short id of another container in this file")]


def test_a_forged_line_borrowing_its_writers_short_id_as_its_own_is_refused() -> None:
    # The alias "<short>\n<short + 52 hex> 10.0.0.9  victim": the writer's line then ends
    # with its own short id, and the forged id starts with it, so the short id netavark
    # appends after "victim" looks like the forged line's own.
    forged_id = A[:12] + "c" * 52
    text = (f"10.0.0.1\n{A} 10.0.0.2  web,{A[:12]}\n"
            f"{forged_id} 10.0.0.9  victim,{A[:12]}\n{line(C, '10.0.0.4', 'db')}\n")
    refused = vet(parse_network_file("n", text.encode()))
    assert sorted(r.entry.line for r in refused) == [2, 3]
    assert all("also starts with" in r.reason for r in refused)


def test_watcher_publishes_nothing_from_a_file_with_a_forged_line(tmp_path: Path) -> None:
    forged = (DATA / "aardvark_forged").read_bytes()

    async def body(watcher: AardvarkWatcher, rec: Recorder) -> None:
        append(tmp_path / "other", line(C, "10.89.1.2", "fine"))
        (tmp_path / "n1").write_bytes(forged)
        snap = await rec.until(lambda s: "n1" in s.problems, "the forged file refused")
        assert set(snap.views) == {C}  # another network's file is still believed
        assert snap.problems["n1"].startswith("line 3 refused: its short id ends line 4")
        assert snap.problems["n1"].endswith("(and 1 more)")
        assert [r.entry.line for r in snap.refused] == [3, 4]
        assert "ab" * 32 in snap.present and C in snap.present
        (tmp_path / "n1").write_bytes(forged.split(b"\n")[0] + b"\n")
        await rec.until(lambda s: not s.problems and not s.refused, "the forgery gone")

    run_watcher(tmp_path, body)
