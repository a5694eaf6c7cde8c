"""The system agent's peer source on a real socket, in this process: what a push costs.

In-process so that the costs can be counted (passwd lookups, JSON parses);
tests/integration/test_user_session.py runs the same socket in a real agent
with real users.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import pwd
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from agent.config.schema import Config, PeersConfig
from agent.control import protocol
from agent.sources.peers import PeerSource

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def sock_dir() -> Iterator[Path]:
    d = Path(tempfile.mkdtemp(prefix="namesync-peers-"))
    yield d
    shutil.rmtree(d, ignore_errors=True)


def counting(monkeypatch: pytest.MonkeyPatch, module: Any, name: str) -> list[object]:
    calls: list[object] = []
    real: Callable[..., Any] = getattr(module, name)

    def wrapper(*args: Any) -> Any:
        calls.append(args)
        return real(*args)

    monkeypatch.setattr(module, name, wrapper)
    return calls


async def exchange(path: Path, lines: list[bytes]) -> list[dict[str, Any]]:
    """Send every line at once, then read one reply per line."""
    reader, writer = await asyncio.open_unix_connection(str(path), limit=4 << 20)
    try:
        writer.write(b"".join(lines))
        await writer.drain()
        return [json.loads(await asyncio.wait_for(reader.readline(), 20)) for _ in lines]
    finally:
        writer.close()


def request(method: str, params: dict[str, Any], n: int = 1) -> bytes:
    return json.dumps({"v": 1, "id": n, "method": method, "params": params}).encode() + b"\n"


def source(sock_dir: Path, **peers: Any) -> PeerSource:
    cfg = Config(peers=PeersConfig(socket=sock_dir / "peer.sock", **peers))
    [src] = PeerSource.from_config(cfg)
    assert isinstance(src, PeerSource)
    return src


def test_a_push_costs_no_passwd_lookup_per_name(
        sock_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """500 names that each look like another user's sub-zone, from an untrusted peer:
    refused from what is known of the uid side, never by asking passwd about a label."""
    calls = [counting(monkeypatch, pwd, f) for f in ("getpwnam", "getpwuid", "getpwall")]
    src = source(sock_dir, max_names=1000)

    async def main() -> list[dict[str, Any]]:
        server = await src.connect()
        try:
            names = [{"name": f"n{i}.u{i}.dns.podman", "addresses": ["10.0.0.1"]}
                     for i in range(500)]
            return await exchange(src.config.socket, [
                request("hello", {}), request("push", {"records": names}, 2)])
        finally:
            await server.close()

    hello, pushed = asyncio.run(main())
    assert hello["result"]["user"] == "root"
    assert pushed["result"]["accepted"] == 0 and len(pushed["result"]["refused"]) == 500
    getpwnam, getpwuid, getpwall = map(len, calls)
    assert getpwnam == 0  # root's login is its label: no same-spelling lookup either
    assert (getpwuid, getpwall) == (1, 1)  # once for the connection


def test_the_rate_limit_applies_before_parsing_and_survives_a_reconnect(
        sock_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    parses = counting(monkeypatch, protocol, "decode_request")
    src = source(sock_dir, push_rate=20, push_burst=5)
    big = request("push", {"records": "x" * 200_000})  # refused whole: bad_request

    async def main() -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        server = await src.connect()
        try:
            first = await exchange(src.config.socket, [big] * 7)
            # A fresh connection of the same uid: the bucket is the uid's, not the
            # connection's (the push refused whole left no peer state to hang it on).
            again = await exchange(src.config.socket, [big])
            return first, again
        finally:
            await server.close()

    first, again = asyncio.run(main())
    codes = [r.get("error", {}).get("code") for r in first + again]
    # The burst, then one refused; the connection is not read again until a token is
    # due, so the next line is served; the reconnect finds the bucket empty again.
    assert codes == ["bad_request"] * 5 + ["rate_limited", "bad_request", "rate_limited"]
    assert len(parses) == 6
    assert "push_rate" in first[5]["error"]["message"]


def test_a_flood_of_lines_is_not_read_faster_than_the_push_rate(sock_dir: Path) -> None:
    """Sixteen million empty lines on one connection: after a refusal nothing is read
    until a token is due, so the sender is stopped by the socket's backpressure
    instead of getting (and costing) ~20,000 error replies a second."""
    src = source(sock_dir, push_rate=10, push_burst=1)

    async def main() -> tuple[int, bool]:
        server = await src.connect()
        reader, writer = await asyncio.open_unix_connection(str(src.config.socket))
        try:
            writer.write(b"\n" * 16_000_000)  # more than any buffer on the way
            drained = asyncio.ensure_future(writer.drain())
            replies = 0
            loop = asyncio.get_running_loop()
            end = loop.time() + 1.0
            with contextlib.suppress(TimeoutError):
                while True:
                    await asyncio.wait_for(reader.readline(), max(end - loop.time(), 0))
                    replies += 1
            stopped = not drained.done()
            drained.cancel()
            return replies, stopped
        finally:
            writer.transport.abort()
            await server.close()

    replies, stopped = asyncio.run(main())
    assert replies <= 40  # about two a token (the refusal, the next line), 10 tokens/s
    assert stopped  # the sender is held up, not served


def test_eight_refusals_in_a_row_close_the_connection(
        sock_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Connections of one uid share its bucket: one that only ever finds it emptied
    by the others (here: a bucket that is always empty) is closed, not kept waiting."""
    from agent.peer.policy import TokenBucket

    src = source(sock_dir)
    monkeypatch.setattr(TokenBucket, "take", lambda self: 0.001)

    async def main() -> list[dict[str, Any]]:
        server = await src.connect()
        reader, writer = await asyncio.open_unix_connection(str(src.config.socket))
        try:
            writer.write(request("hello", {}) * 20)
            replies = []
            while line := await asyncio.wait_for(reader.readline(), 10):
                replies.append(json.loads(line))
            return replies
        finally:
            writer.close()
            await server.close()

    replies = asyncio.run(main())
    from agent.control.server import MAX_REFUSED_IN_A_ROW
    assert [r["error"]["code"] for r in replies] == ["rate_limited"] * MAX_REFUSED_IN_A_ROW


def test_a_known_uid_is_decided_at_accept_while_its_lookup_is_renewed_behind_it(
        sock_dir: Path) -> None:
    """A flood of never-seen uids may fill the lookups; a user that connected before
    is admitted from its last known login, without waiting in that queue."""
    from agent.control.server import Peer
    from agent.peer.identity import LISTING_TTL_S, LOGIN_TTL_S, Directory

    now = [0.0]
    src = source(sock_dir)
    src._dir = Directory(clock=lambda: now[0])
    root = Peer(pid=1, uid=0, gid=0)

    async def main() -> None:
        first = src._identify(root)
        assert asyncio.iscoroutine(first)  # never seen: looked up before anything is read
        assert await first is None
        assert src._identify(root) is None  # fresh: decided at once
        now[0] += max(LOGIN_TTL_S, LISTING_TTL_S) + 1
        assert src._identify(root) is None  # due again, but known: decided at once...
        assert list(src._refreshing) == [0]  # ...and looked up behind the connection
        await asyncio.gather(*src._refreshing.values())
        assert not src._dir.needs_lookup(0)

    asyncio.run(main())


class _Store:
    def __init__(self) -> None:
        self.snapshots: dict[str, dict[str, Any]] = {}

    def replace(self, source: str, objects: Any) -> None:
        self.snapshots[source] = dict(objects)

    def update(self, source: str, object_id: str, state: Any) -> None:
        raise AssertionError("peers replace whole snapshots")


def names_of(store: _Store, key: str) -> set[str]:
    return {r.name for s in store.snapshots.get(key, {}).values() for r in s.records}


def test_a_sub_zone_that_appears_later_takes_back_what_a_trusted_user_published_there(
        sock_dir: Path) -> None:
    """In a directory that does not enumerate, user "newbie" is unknown until its uid
    connects: a trusted user's x.newbie.<zone> is withdrawn then, and a uid whose login
    collides with a publishing user's loses the sub-zone for both."""
    from agent.control.server import Peer

    from .helpers import Passwd

    pw = Passwd({0: "root", 2001: "newbie", 2002: "j.smith", 2003: "j_smith"}, listed={0})
    src = source(sock_dir, trusted_users=("0",))  # trusted by uid
    src._dir = pw.directory()
    store = _Store()
    src._store = store
    root, newbie = Peer(1, 0, 0), Peer(2, 2001, 2001)
    smith, smith2 = Peer(3, 2002, 2002), Peer(4, 2003, 2003)

    async def connect(peer: Peer) -> None:
        verdict = src._identify(peer)
        assert (await verdict if asyncio.iscoroutine(verdict) else verdict) is None
        src._opened(peer)

    def rec(name: str) -> dict[str, Any]:
        return {"name": name, "addresses": ["10.0.0.9"]}

    async def main() -> None:
        await connect(root)
        reply = await src._h_push(root, {"records": [rec("x.newbie.dns.podman"),
                                                     rec("web.dns.podman")]})
        assert reply["accepted"] == 2  # trusted (by uid "0"), and newbie is not known yet
        await connect(newbie)
        assert names_of(store, "peer:0") == {"web.dns.podman"}
        [shown] = next(r for r in src.status_extra()["peers"] if r["uid"] == 0)["refused_names"]
        assert shown == {"name": "x.newbie.dns.podman",
                         "reason": "newbie.dns.podman is another user's sub-zone"}

        await connect(smith)
        await src._h_push(smith, {"records": [rec("web.j-smith.dns.podman")]})
        assert names_of(store, "peer:2002") == {"web.j-smith.dns.podman"}
        await connect(smith2)  # j_smith spells j-smith too: neither keeps it
        assert names_of(store, "peer:2002") == set()
        hello = await src._h_hello(smith, {})
        assert hello["user"] is None and "(uid 2003)" in hello["refused"]

    asyncio.run(main())


def test_a_flood_of_subordinate_and_unknown_uids_turns_no_user_away(
        sock_dir: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """A rootless user connecting from each of its subordinate uids (and root from
    uids passwd cannot answer for): those are refused, and users in the listing,
    seen before or not, still get in while the lookups are full.

    Real sockets in this process; the uid each connection has is handed to the
    server in connect order (making 60 uids needs root and seteuid per connect:
    review-repro/flood.py does that against a running agent)."""
    import socket
    import threading

    from agent.control import server as server_module
    from agent.control.server import Peer
    from agent.peer.identity import Directory

    from .helpers import Passwd

    subuid = tmp_path / "subuid"
    subuid.write_text("alice:200000:65536\n")
    pw = Passwd({0: "root", 1000: "alice"})
    stuck = threading.Event()  # a directory that never answers for these uids

    def getpwuid(uid: int) -> Any:
        if uid >= 300_000:
            stuck.wait(30)
        return pw.getpwuid(uid)

    src = source(sock_dir)
    src._dir = Directory(getpwuid=getpwuid, getpwall=pw.getpwall, getpwnam=pw.getpwnam,
                         subuid=subuid)
    uids: list[int] = []
    monkeypatch.setattr(server_module, "peer_credentials",
                        lambda conn: Peer(1, uids.pop(0), 0))

    async def hello(uid: int) -> dict[str, Any]:
        uids.append(uid)
        loop = asyncio.get_running_loop()
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.setblocking(False)
            await loop.sock_connect(sock, str(src.config.socket))
            with contextlib.suppress(ConnectionError):  # turned away: its line came first
                await loop.sock_sendall(sock, request("hello", {}))
            got = b""
            while not got.endswith(b"\n"):
                chunk = await asyncio.wait_for(loop.sock_recv(sock, 65536), 20)
                assert chunk, got
                got += chunk
            return dict(json.loads(got))

    async def main() -> None:
        server = await src.connect()
        held = []
        try:
            assert (await hello(1000))["result"]["user"] == "alice"
            lookups = src._dir.lookups
            for i in range(40):
                refused = await hello(200_000 + i * 1000)
                assert "subordinate" in refused["error"]["message"]
            assert src._dir.lookups == lookups  # not one lookup for them
            for i in range(20):  # unknown, and passwd hangs: the lookups fill up
                uids.append(300_000 + i)
                held.append(await asyncio.open_unix_connection(str(src.config.socket)))
            for _ in range(100):
                if not uids and server._identifying == 16:
                    break
                await asyncio.sleep(0.01)
            assert server._identifying == 16
            reply = await hello(1000)  # seen before
            assert reply["result"]["user"] == "alice"
            reply = await hello(0)  # listed, never connected
            assert reply["result"]["user"] == "root"
            turned_away = [json.loads(await asyncio.wait_for(r.readline(), 5))
                           for r, _ in held[16:]]
            assert {e["error"]["code"] for e in turned_away} == {"too_many_connections"}
        finally:
            stuck.set()
            for _, w in held:
                w.close()
            await server.close()

    asyncio.run(main())


def test_a_user_removed_while_listed_loses_its_names_at_the_next_lookup(
        sock_dir: Path) -> None:
    """userdel bob while its agent runs: the listing (fresh for a while yet) still
    shows bob, so which labels are whose did not change, but bob's uid has no login:
    its names go and its pushes are refused, without waiting for the listing."""
    from agent.control.server import Peer
    from agent.peer.identity import LOGIN_TTL_S

    from .helpers import Passwd

    pw = Passwd({0: "root", 2001: "bob"})
    now = [0.0]
    src = source(sock_dir)
    src._dir = pw.directory(now)
    store = _Store()
    src._store = store
    bob = Peer(5, 2001, 2001)

    async def main() -> None:
        verdict = src._identify(bob)
        assert (await verdict if asyncio.iscoroutine(verdict) else verdict) is None
        src._opened(bob)
        await src._h_push(bob, {"records": [{"name": "web.bob.dns.podman",
                                             "addresses": ["10.0.0.9"]}]})
        assert names_of(store, "peer:2001") == {"web.bob.dns.podman"}
        del pw.known[2001]
        now[0] += LOGIN_TTL_S + 1  # the login is due, the listing is not
        assert src._identify(bob) is None  # a second connection: decided on the old login
        await asyncio.gather(*src._refreshing.values())  # ...and looked up behind it
        assert names_of(store, "peer:2001") == set()
        with pytest.raises(protocol.ProtocolError) as refused:
            await src._h_push(bob, {"records": []})
        assert refused.value.code == "permission_denied"

    asyncio.run(main())


def test_a_connection_closed_before_its_task_ran_leaves_no_lookup_counted(
        sock_dir: Path) -> None:
    import gc
    import socket
    import warnings

    src = source(sock_dir)

    async def main() -> int:
        server = await src.connect()
        a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            server._admit(a)  # root, never seen: a lookup, in a task not started yet
            assert server._identifying == 1
            await server.close()
            for _ in range(100):
                if not server._identifying:
                    break
                await asyncio.sleep(0.01)
            return server._identifying
        finally:
            b.close()

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert asyncio.run(main()) == 0
        gc.collect()
    assert not [w for w in caught if "never awaited" in str(w.message)]
