"""The planner keeps what one sync reuses from the last; records and tables stay plain values."""

from __future__ import annotations

import dataclasses
import ipaddress
import random

import pytest

from agent.config.load import parse_config
from agent.model.record import ObjectState, Provenance, Record, Rejection
from agent.plan.planner import Planner
from agent.plan.render import host_lines, render_addn_hosts
from agent.plan.table import Table, plan
from agent.state.store import StateStore

A = Provenance("podman:x", "a", "container", "a")
B = Provenance("podman:x", "b", "container", "b")


def rec(name: str, p: Provenance, *addrs: str) -> Record:
    return Record(name, tuple(ipaddress.ip_address(a) for a in addrs), p)


def test_values_hold_no_memo() -> None:
    assert [f.name for f in dataclasses.fields(Record)] == ["name", "addresses", "provenance"]
    assert [f.name for f in dataclasses.fields(Table)] == [
        "entries", "conflicts", "rejections", "lines"]
    r = rec("x.dns.test", A, "10.0.0.1")
    Planner().plan([r], [])
    assert not hasattr(r, "__dict__")  # slots: nothing can be stashed on it


def test_planned_table_equals_the_table_made_from_scratch() -> None:
    records = [rec("b.dns.test", A, "fd00::1", "10.0.0.2"), rec("a.dns.test", B, "10.0.0.1")]
    planner = Planner()
    planner.plan(records[:1], [])
    table = planner.plan(records, [])
    assert table == plan(records, [])
    assert host_lines(table) == [b"10.0.0.1 a.dns.test", b"10.0.0.2 b.dns.test",
                                 b"fd00::1 b.dns.test"]


def test_unchanged_entry_reuses_its_lines_changed_one_is_formatted_again() -> None:
    keep = rec("keep.dns.test", A, "10.0.0.1", "fd00::1")
    planner = Planner()
    first = planner.plan([keep, rec("move.dns.test", B, "10.0.0.2")], [])
    second = planner.plan([keep, rec("move.dns.test", B, "10.0.0.3")], [])
    assert second.lines[0] is first.lines[0]
    assert second.lines[1] == b"10.0.0.3 move.dns.test"
    assert host_lines(second) == [b"10.0.0.1 keep.dns.test", b"fd00::1 keep.dns.test",
                                  b"10.0.0.3 move.dns.test"]
    # An equal but distinct record is not trusted to be the same: formatted again.
    third = planner.plan([rec("keep.dns.test", A, "10.0.0.1", "fd00::1")], [])
    assert third.lines == first.lines[:1] and third.lines[0] is not first.lines[0]


def test_holder_keeps_a_contested_name_across_plans() -> None:
    planner = Planner()
    planner.plan([rec("n.dns.test", B, "10.0.0.2")], [])
    t = planner.plan([rec("n.dns.test", A, "10.0.0.1"), rec("n.dns.test", B, "10.0.0.2")], [])
    assert t.entries["n.dns.test"].provenance == B
    assert [c.losers for c in t.conflicts] == [(A,)]


def test_hand_made_table_renders_sorted() -> None:
    t = Table(entries={"z.dns.test": rec("z.dns.test", A, "10.0.0.9"),
                       "a.dns.test": rec("a.dns.test", B, "10.0.0.1")})
    assert list(t.entries) == ["a.dns.test", "z.dns.test"]
    assert render_addn_hosts(t).endswith(b"10.0.0.1 a.dns.test\n10.0.0.9 z.dns.test\n")


def test_store_replace_keeps_the_running_objects_that_did_not_change() -> None:
    store = StateStore(lambda: None)
    old = {"a": ObjectState((rec("a.dns.test", A, "10.0.0.1"),)),
           "b": ObjectState((rec("b.dns.test", B, "10.0.0.2"),))}
    store.replace("s", old)
    new = {"a": ObjectState((rec("a.dns.test", A, "10.0.0.1"),)),
           "b": ObjectState((rec("b.dns.test", B, "10.0.0.3"),))}
    store.replace("s", new)
    kept = list(store.records())
    assert kept[0] is old["a"].records[0]
    assert kept[1] is new["b"].records[0]


def test_reload_lends_the_running_configs_unchanged_entries() -> None:
    text = '[[static]]\nname = "a.dns.test"\naddresses = ["10.0.0.1"]\n' \
        '[[static]]\nname = "b.dns.test"\naddresses = ["10.0.0.2"]\n'
    running = parse_config(text, "x")
    new = parse_config(text.replace("10.0.0.2", "10.0.0.3"), "x", previous=running)
    assert new.static[0] is running.static[0]
    assert new.static[1] is not running.static[1]
    assert str(new.static[1].addresses[0]) == "10.0.0.3"


@pytest.mark.parametrize("seed", range(40))
def test_reused_lines_always_equal_lines_made_from_scratch(seed: int) -> None:
    rng = random.Random(seed)
    objs = [Provenance("s", f"o{i}", "container", "") for i in range(30)]

    def some(i: int) -> Record:
        addrs = [f"10.0.{rng.randrange(3)}.{i + 1}"] + (["fd00::%x" % (i + 1)] * rng.randrange(2))
        return rec(f"n{i:02d}.dns.test", objs[i], *addrs)

    current = {i: some(i) for i in rng.sample(range(30), 20)}
    planner = Planner()
    for _ in range(8):
        for i in rng.sample(range(30), rng.randrange(1, 6)):  # change, add or remove some
            if i in current and rng.random() < 0.3:
                del current[i]
            else:
                current[i] = some(i)
        table = planner.plan(list(current.values()), [])
        assert table.lines == Table(entries=dict(table.entries)).lines


def test_static_objects_are_the_snapshot_made_as_read() -> None:
    from agent.sources.static import StaticObjects, StaticSource

    cfg = parse_config('[[static]]\nname = "a.dns.test"\naddresses = ["10.0.0.1"]\n'
                       '[[static]]\nname = "b.dns.test"\naddresses = ["10.0.0.2"]\n', "x")
    lazy = StaticObjects("static", cfg.static)
    assert dict(lazy) == StaticSource(cfg.static).snapshot()
    assert list(lazy.values()) == list(StaticSource(cfg.static).snapshot().values())
    store = StateStore(lambda: None)
    store.replace("static", StaticSource(cfg.static).snapshot())
    running = list(store.records())
    store.replace("static", lazy)  # nothing changed: the running objects stay
    assert all(a is b for a, b in zip(store.records(), running, strict=True))


def test_select_keeps_the_lines_it_already_has() -> None:
    from agent.plan.table import select

    table = Planner().plan([rec("a.dns.test", A, "10.0.0.1", "fd00::1"),
                            rec("b.other.test", B, "10.0.0.2"),
                            rec("c.dns.test", B, "10.0.0.3")], [])
    part = select(table, lambda n: n.endswith(".dns.test"))
    assert list(part.entries) == ["a.dns.test", "c.dns.test"]
    assert part.lines == Table(entries=dict(part.entries)).lines
    assert all(any(line is old for old in table.lines) for line in part.lines)


def test_a_lease_refusal_is_moot_while_another_source_publishes_its_address() -> None:
    # The system agent's libvirt source cannot place a session VM's lease on a
    # system bridge; the user's agent publishes it through the peer socket.
    lease = Provenance("libvirt:qemu:///system", "lease:virbr0:52:54:00:00:00:01", "lease", "l")
    peer = Provenance("peer:1000", "vm1", "peer", "vm1")
    addr = ipaddress.ip_address("192.168.122.50")
    refusal = Rejection(lease, "52:54:00:00:00:01", "matches no domain: not published", addr)
    other = Rejection(lease, "52:54:00:00:00:02", "matches no domain: not published",
                      ipaddress.ip_address("192.168.122.51"))
    published = Planner().plan([rec("vm1.alice.dns.libvirt", peer, "192.168.122.50")],
                               [refusal, other])
    assert published.rejections == (other,)
    # Nobody else publishes it (or only the refusing source itself): the refusal stands.
    alone = Planner().plan([rec("x.dns.libvirt", lease, "192.168.122.50")], [refusal, other])
    assert set(alone.rejections) == {refusal, other}
    # One of the system's own sources holding it is a conflict to show, not moot.
    static = Provenance("static", "s", "static", "s")
    clash = Planner().plan([rec("s.dns.libvirt", static, "192.168.122.50")], [refusal])
    assert clash.rejections == (refusal,)
