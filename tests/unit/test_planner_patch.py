"""A patched table is the table planned from every snapshot: whatever changes, in any order.

The planner patches its last table with the objects the store lists as changed
(model/change.py). Each test drives a real StateStore the way sources do
(update, replace, drop), plans each batch as the pipeline does, and compares
the patched table with one planned from scratch from the same snapshots and
the same previous holders: entries, holders, lines (exact bytes), conflicts,
refusals.
"""

from __future__ import annotations

import ipaddress
import random

import pytest

from agent.daemon.history import NameHistory
from agent.model.record import PEER_KIND, ObjectState, Provenance, Record, Rejection
from agent.plan.planner import Planner
from agent.plan.render import render_addn_hosts
from agent.plan.table import Table, plan
from agent.state.store import MAX_LISTED, StateStore

SOURCES = ("static", "podman:x", "libvirt:y", "peer:1000")
KIND = {"static": "static", "podman:x": "container", "libvirt:y": "lease", "peer:1000": PEER_KIND}


def _addr(rng: random.Random) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    if rng.random() < 0.2:
        return ipaddress.ip_address(f"fd00::{rng.randrange(1, 40):x}")
    return ipaddress.ip_address(f"10.0.0.{rng.randrange(1, 40)}")


def _state(rng: random.Random, source: str, oid: str, names: list[str]) -> ObjectState:
    prov = Provenance(source, oid, KIND[source], f"label {oid}")
    records = tuple(Record(name, tuple({_addr(rng) for _ in range(rng.randrange(1, 3))}), prov)
                    for name in rng.sample(names, rng.choice((1, 1, 1, 2))))
    rejections: tuple[Rejection, ...] = ()
    if rng.random() < 0.15:  # a refusal, some about an address a peer may publish
        address = _addr(rng) if rng.random() < 0.6 else None
        rejections = (Rejection(prov, f"v{rng.randrange(5)}", "refused", address),)
    if rng.random() < 0.05:
        return ObjectState(rejections=rejections)
    return ObjectState(records, rejections)


def _view(t: Table) -> tuple[object, ...]:
    entries = {n: (e.addresses, e.provenance.source, e.provenance.object_id)
               for n, e in t.entries.items()}
    conflicts = [(c.name, c.winner, c.losers) for c in t.conflicts]
    return (list(t.entries), entries, t.lines, conflicts, t.rejections, render_addn_hosts(t))


class Driver:
    """A store and its planner, planned the way the pipeline plans."""

    def __init__(self, seed: int, names: int) -> None:
        self.rng = random.Random(seed)
        self.names = [f"n{i:03d}.dns.test" for i in range(names)]
        self.store = StateStore(lambda: None)
        self.planner = Planner()
        self.history = NameHistory(clock=lambda: 0.0)
        self.whole = NameHistory(clock=lambda: 0.0)  # told nothing of what changed
        self.patched = 0

    def step(self) -> None:
        rng, store = self.rng, self.store
        for _ in range(rng.randrange(1, 6)):
            source = rng.choice(SOURCES)
            oid = f"o{rng.randrange(12)}"
            roll = rng.random()
            if roll < 0.6:
                store.update(source, oid, _state(rng, source, oid, self.names))
            elif roll < 0.8:
                store.update(source, oid, None)
            elif roll < 0.95:
                keep = {f"o{i}": _state(rng, source, f"o{i}", self.names)
                        for i in rng.sample(range(12), rng.randrange(0, 6))}
                store.replace(source, keep)
            else:
                store.drop(source)

    def sync(self) -> Table:
        old = self.planner.table
        previous = old.holders()
        changes = self.store.take_batch()
        table = self.planner.plan(self.store.records(), self.store.rejections(), changes)
        self.patched += self.planner.changed is not None
        scratch = plan(self.store.records(), self.store.rejections(), previous)
        assert _view(table) == _view(scratch)
        self.history.observe(old, table, self.planner.changed)
        self.whole.observe(old, table)
        assert self.history.since._later == self.whole.since._later
        assert list(self.history.gone.items()) == list(self.whole.gone.items())
        return table


@pytest.mark.parametrize("seed", range(60))
def test_patched_tables_equal_tables_planned_from_scratch(seed: int) -> None:
    d = Driver(seed, names=rng_names(seed))
    for _ in range(40):
        d.step()
        d.sync()
    assert d.patched > 10  # the patch, not the fallback, was what got compared


def rng_names(seed: int) -> int:
    return (8, 30, 200)[seed % 3]  # crowded names (conflicts) to sparse ones


def test_unchanged_entries_stay_the_same_objects_and_lines() -> None:
    d = Driver(1, names=500)
    for i, name in enumerate(d.names):
        prov = Provenance("static", name, "static")
        d.store.update("static", name, ObjectState(
            (Record(name, (ipaddress.ip_address(f"10.1.{i // 256}.{i % 256}"),), prov),)))
    first = d.sync()
    prov = Provenance("podman:x", "c1", "container", "c1")
    d.store.update("podman:x", "c1", ObjectState(
        (Record("new.dns.test", (ipaddress.ip_address("10.88.0.2"),), prov),)))
    second = d.sync()
    assert d.planner.changed == ("new.dns.test",)
    assert all(second.entries[n] is e for n, e in first.entries.items())
    kept = {id(line) for line in first.lines}
    assert sum(id(line) not in kept for line in second.lines) == 1  # only the new name's line


def test_a_batch_too_big_to_list_is_planned_from_every_snapshot() -> None:
    d = Driver(2, names=10)
    d.sync()
    for i in range(MAX_LISTED + 1):
        name = f"s{i}.dns.test"
        prov = Provenance("static", name, "static")
        d.store.update("static", name, ObjectState(
            (Record(name, (ipaddress.ip_address("10.2.0.1"),), prov),)))
    changes = d.store.take_batch()
    assert changes.objects is None
    table = d.planner.plan(d.store.records(), d.store.rejections(), changes)
    assert d.planner.changed is None and len(table.entries) == MAX_LISTED + 1


def test_a_batch_not_planned_makes_the_next_plan_start_from_scratch() -> None:
    d = Driver(3, names=10)
    d.step()
    d.sync()
    d.step()
    d.store.take_batch()  # taken, never planned (a sync that failed before its plan)
    d.step()
    d.sync()  # compared with the table from scratch: the lost batch is not lost
    assert d.planner.changed is None
