"""What a peer may publish (agent/peer/policy.py): sub-zones, trust, bad input, quotas."""

from __future__ import annotations

import ipaddress

import pytest

from agent.model.record import Provenance, Record, Rejection
from agent.peer.policy import PushRefused, Scope, TokenBucket, decode_push
from agent.peer.wire import VIA_HOST, push_params
from agent.plan.table import plan

ZONES = ("dns.podman", "dns.libvirt")
USERS = {"alice", "bob", "postgres"}


def scope(trusted: bool = False) -> Scope:
    return Scope("alice", ZONES, trusted, USERS)


def rec(name: str, *addrs: str) -> dict[str, object]:
    return {"name": name, "addresses": list(addrs), "what": "t"}


@pytest.mark.parametrize(("name", "trusted", "why"), [
    ("web.alice.dns.podman", False, None),
    ("nic0.vm1.alice.dns.libvirt", False, None),
    ("alice.dns.podman", False, "outside"),  # the sub-zone's apex is not inside it
    ("web.dns.podman", False, "outside"),
    ("web.dns.podman", True, None),
    ("postgres.dns.podman", True, None),  # a container named like a system account
    ("web.bob.dns.podman", True, "another user's sub-zone"),
    ("web.bob.dns.podman", False, "another user's sub-zone"),
    ("host.dns.host", True, "outside"),
    ("dns.podman", True, "outside"),
    ("web.alice.dns.podman.evil", False, "outside"),
    ("xalice.dns.podman", False, "outside"),
])
def test_confinement(name: str, trusted: bool, why: str | None) -> None:
    got = scope(trusted).confine(name)
    if why is None:
        assert got is None
    else:
        assert got is not None and why in got


def test_bad_records_are_refused_one_by_one_and_never_raise() -> None:
    push = decode_push({"records": [
        rec("ok.alice.dns.podman", "10.0.0.1", "fd00::1"),
        rec("Ok.Alice.dns.podman.", "10.0.0.2"),  # the same name again, spelled otherwise
        rec("bad_name.alice.dns.podman", "10.0.0.1"),
        rec("lo.alice.dns.podman", "127.0.0.1"),
        rec("ll.alice.dns.podman", "fe80::1"),
        rec("none.alice.dns.podman"),
        rec("junk.alice.dns.podman", "10.0.0.1/24"),
        {"name": 5}, "text", {"name": "x" * 5000, "addresses": ["10.0.0.1"]},
        {"name": "h.alice.dns.podman", "via": "host", "what": "ctr"},
    ]}, scope(), max_names=100)
    assert [(c.name, c.via_host) for c in push.claims] == [
        ("ok.alice.dns.podman", False), ("h.alice.dns.podman", True)]
    assert push.claims[0].addresses == (ipaddress.ip_address("10.0.0.1"),
                                        ipaddress.ip_address("fd00::1"))
    reasons = [r.reason for r in push.refused]
    assert len(reasons) == 9
    assert "listed twice in one push" in reasons
    assert all(len(r.value) <= 300 for r in push.refused)


@pytest.mark.parametrize("params", [
    {"records": [rec(f"n{i}.alice.dns.podman", "10.0.0.1") for i in range(11)]},
    {"rejected": [{"value": "x", "reason": "y"}] * 11},
])
def test_over_quota_is_refused_whole(params: dict[str, object]) -> None:
    with pytest.raises(PushRefused) as e:
        decode_push(params, scope(), max_names=10)
    assert e.value.code == "quota" and "the limit per user is 10" in e.value.reason


def test_not_a_list_is_a_bad_request() -> None:
    with pytest.raises(PushRefused) as e:
        decode_push({"records": {"a": 1}}, scope(), max_names=10)
    assert e.value.code == "bad_request"


def test_token_bucket_burst_then_rate() -> None:
    now = [0.0]
    bucket = TokenBucket(rate=2, burst=3, clock=lambda: now[0])
    assert [bucket.take() for _ in range(3)] == [0, 0, 0]
    assert bucket.take() == pytest.approx(0.5)
    now[0] += 0.5
    assert bucket.take() == 0


def test_push_params_say_via_host_for_rootless_records() -> None:
    prov = Provenance("podman:x", "id1", VIA_HOST, "container web (rootless; ports ...)")
    other = Provenance("podman:x", "id2", "container", "container db")
    table = plan([Record("web.alice.dns.podman", (), prov),
                  Record("db.alice.dns.podman", (ipaddress.ip_address("10.0.0.9"),), other)],
                 [Rejection(other, "noport", "no published port")])
    params = push_params(table)
    assert params["records"] == [
        {"name": "db.alice.dns.podman", "addresses": ["10.0.0.9"], "what": "container db"},
        {"name": "web.alice.dns.podman", "via": "host",
         "what": "container web (rootless; ports ...)"}]
    assert params["rejected"] == [{"value": "noport", "reason": "no published port",
                                   "what": "container db"}]
    # What the user agent pushes is what the system agent accepts back.
    push = decode_push(params, scope(), max_names=10)
    assert [c.name for c in push.claims] == ["db.alice.dns.podman", "web.alice.dns.podman"]


def test_the_peer_source_runs_in_the_system_agent_only() -> None:
    from dataclasses import replace

    from agent.config.schema import Config, PeersConfig
    from agent.sources.peers import PeerSource

    [src] = PeerSource.from_config(Config())
    assert src.zones == ("dns.podman", "dns.libvirt")
    assert PeerSource.from_config(replace(Config(), mode="user")) == []
    assert PeerSource.from_config(replace(Config(), peers=PeersConfig(enabled=False))) == []


def test_a_peers_refusals_are_bounded_in_the_table() -> None:
    """Every local user can push refusals: each one's share of status is bounded."""
    import asyncio
    from collections.abc import Mapping

    from agent.config.schema import Config
    from agent.control.server import Peer
    from agent.model.record import ObjectState
    from agent.sources.peers import MAX_REFUSALS_KEPT, PeerSource

    class Store:
        def __init__(self) -> None:
            self.snapshots: dict[str, dict[str, ObjectState]] = {}

        def replace(self, source: str, objects: Mapping[str, ObjectState]) -> None:
            self.snapshots[source] = dict(objects)

        def update(self, source: str, object_id: str, state: ObjectState | None) -> None:
            raise AssertionError("peers replace whole snapshots")

    async def main() -> None:
        [src] = PeerSource.from_config(Config())
        assert isinstance(src, PeerSource)
        store = Store()
        src._store = store
        root = Peer(pid=1, uid=0, gid=0)  # uid 0 is "root": its sub-zone is root.<zone>
        assert await src._look_up(root) is None  # what the server does at accept
        src._opened(root)
        bad = [rec(f"n{i}.dns.podman", "10.0.0.1") for i in range(100)]
        reply = await src._h_push(root, {"records": [rec("ok.root.dns.podman", "10.0.0.1"),
                                                     *bad]})
        assert reply["accepted"] == 1 and len(reply["refused"]) == 100
        snap = store.snapshots["peer:0"]
        rejections = [r for s in snap.values() for r in s.rejections]
        assert len(rejections) == MAX_REFUSALS_KEPT + 1
        more = 100 - MAX_REFUSALS_KEPT
        assert rejections[-1].reason == f"{more} more refusals of this push not shown"
        assert [r.name for s in snap.values() for r in s.records] == ["ok.root.dns.podman"]

    asyncio.run(main())


def test_a_uid_that_connects_and_publishes_nothing_leaves_no_state() -> None:
    """A user can connect from each of its 65,536 subordinate uids: connections that
    never published must not pile up in root's memory and in status."""
    import asyncio

    from agent.config.schema import Config
    from agent.control.server import Peer
    from agent.sources.peers import PeerSource

    async def main() -> None:
        [src] = PeerSource.from_config(Config())
        assert isinstance(src, PeerSource)
        for uid in range(100_000, 100_000 + 500):
            peer = Peer(pid=1, uid=uid, gid=uid)
            src._opened(peer)
            src._closed(peer)
        assert src.status_extra()["peers"] == []

    asyncio.run(main())


def test_a_push_with_more_addresses_than_the_quota_is_refused_whole() -> None:
    many = [f"10.0.{i // 250}.{i % 250 + 1}" for i in range(64)]
    records = [rec(f"n{i}.alice.dns.podman", *many) for i in range(40)]  # 2,560 lines
    with pytest.raises(PushRefused) as e:
        decode_push({"records": records}, scope(), max_names=100, max_addresses=2048)
    assert e.value.code == "quota" and e.value.reason.startswith("2560 addresses")
    ok = decode_push({"records": records[:32]}, scope(), max_names=100, max_addresses=2048)
    assert len(ok.claims) == 32  # 2,048: at the limit


def test_a_via_host_name_bound_to_some_host_addresses_answers_only_those() -> None:
    """A rootless `-p 192.0.2.7:8080:80` (or a VM's hostfwd=tcp:192.0.2.7:...): the
    port is not on the host's other addresses, so the name must not answer them."""
    from agent.config.schema import HostConfig, PeersConfig
    from agent.peer.identity import Identity
    from agent.sources.peers import PeerSource, PeerState

    a, b = ipaddress.ip_address("192.0.2.7"), ipaddress.ip_address("2001:db8::7")
    prov = Provenance("podman:x", "id1", VIA_HOST, "container web")
    table = plan([Record("web.alice.dns.podman", (a,), prov),
                  Record("all.alice.dns.podman", (), prov),
                  Record("gone.alice.dns.podman", (ipaddress.ip_address("198.51.100.1"),),
                         prov)], [])
    params = push_params(table)
    assert params["records"][2] == {"name": "web.alice.dns.podman", "via": "host",
                                    "only": ["192.0.2.7"], "what": "container web"}
    push = decode_push(params, scope(), max_names=10)
    src = PeerSource(PeersConfig(), ZONES, HostConfig())
    src._host.addresses = (a, b)
    state = PeerState(ident=Identity(1000, "alice", "alice"), push=push)
    objects = src._objects(state)
    assert objects["web.alice.dns.podman"].records[0].addresses == (a,)
    assert objects["all.alice.dns.podman"].records[0].addresses == (a, b)
    [gone] = objects["gone.alice.dns.podman"].rejections
    assert "bound to 198.51.100.1, none of the host's addresses" in gone.reason


@pytest.mark.parametrize(("only", "why"), [
    (["127.0.0.1"], "not reachable"), (["nope"], "address nope"), ("x", "expected a list")])
def test_a_via_host_narrowing_that_is_no_usable_address_is_refused(only: object,
                                                                   why: str) -> None:
    push = decode_push({"records": [{"name": "w.alice.dns.podman", "via": "host",
                                     "only": only}]}, scope(), max_names=10)
    assert push.claims == () and why in push.refused[0].reason
