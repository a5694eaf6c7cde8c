"""The system agent's peer source on a real socket, in this process: what a push costs.

In-process so that the costs can be counted (passwd lookups, JSON parses);
tests/integration/test_user_session.py runs the same socket in a real agent
with real users.
"""

from __future__ import annotations

import asyncio
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
    src = source(sock_dir, push_rate=1, push_burst=5)
    big = request("push", {"records": "x" * 200_000})  # refused whole: bad_request

    async def main() -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        server = await src.connect()
        try:
            first = await exchange(src.config.socket, [big] * 30)
            # A fresh connection of the same uid: the bucket is the uid's, not the
            # connection's (the push refused whole left no peer state to hang it on).
            again = await exchange(src.config.socket, [big] * 10)
            return first, again
        finally:
            await server.close()

    first, again = asyncio.run(main())
    codes = [r.get("error", {}).get("code") for r in first + again]
    assert codes[:5] == ["bad_request"] * 5
    assert codes.count("rate_limited") >= 30
    assert len(parses) <= 8  # the burst and what refilled meanwhile, not all 40
    assert "push_rate" in first[-1]["error"]["message"]


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
