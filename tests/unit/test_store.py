"""StateStore: snapshots per source; only real changes wake the pipeline."""

from __future__ import annotations

import ipaddress

from agent.model.record import ObjectState, Provenance, Record, Rejection
from agent.state.store import StateStore

SRC = "podman:/run/podman/podman.sock"


def state(name: str, addr: str, oid: str = "c1", source: str = SRC) -> ObjectState:
    p = Provenance(source, oid, "container", name)
    return ObjectState(records=(Record(f"{name}.dns.podman", (ipaddress.ip_address(addr),), p),))


class Counter:
    def __init__(self) -> None:
        self.calls = 0

    def __call__(self) -> None:
        self.calls += 1


def names(store: StateStore) -> list[tuple[str, str]]:
    return sorted((r.name, str(r.addresses[0])) for r in store.records())


def test_replace_with_identical_content_does_not_notify() -> None:
    changed = Counter()
    store = StateStore(changed)
    store.replace(SRC, {"c1": state("web", "10.88.0.2")})
    assert changed.calls == 1
    # A resync after reconnect lists the same objects: equal, freshly built.
    store.replace(SRC, {"c1": state("web", "10.88.0.2")})
    assert changed.calls == 1
    store.replace(SRC, {"c1": state("web", "10.88.0.3")})
    assert changed.calls == 2
    assert names(store) == [("web.dns.podman", "10.88.0.3")]


def test_replace_drops_objects_that_are_gone() -> None:
    changed = Counter()
    store = StateStore(changed)
    store.replace(SRC, {"c1": state("web", "10.88.0.2"), "c2": state("db", "10.88.0.4", "c2")})
    store.replace(SRC, {"c2": state("db", "10.88.0.4", "c2")})
    assert changed.calls == 2
    assert names(store) == [("db.dns.podman", "10.88.0.4")]


def test_update_of_unchanged_object_does_not_notify() -> None:
    changed = Counter()
    store = StateStore(changed)
    store.update(SRC, "c1", state("web", "10.88.0.2"))
    assert changed.calls == 1
    store.update(SRC, "c1", state("web", "10.88.0.2"))
    assert changed.calls == 1
    store.update(SRC, "c1", state("web", "10.88.0.9"))
    assert changed.calls == 2
    assert names(store) == [("web.dns.podman", "10.88.0.9")]


def test_removing_an_object_notifies_once() -> None:
    changed = Counter()
    store = StateStore(changed)
    store.update(SRC, "c1", state("web", "10.88.0.2"))
    store.update(SRC, "c1", None)
    assert changed.calls == 2
    assert names(store) == []
    store.update(SRC, "c1", None)
    store.update(SRC, "never-seen", ObjectState())
    assert changed.calls == 2


def test_rejections_alone_are_kept() -> None:
    changed = Counter()
    store = StateStore(changed)
    p = Provenance(SRC, "c9", "container", "bad")
    bad = ObjectState(rejections=(Rejection(p, "bad\nname", "contains control character"),))
    store.update(SRC, "c9", bad)
    assert changed.calls == 1
    assert list(store.rejections()) == list(bad.rejections)


def test_drop_removes_the_sources_records() -> None:
    changed = Counter()
    store = StateStore(changed)
    other = "libvirt:qemu:///system"
    store.replace(SRC, {"c1": state("web", "10.88.0.2")})
    store.replace(other, {"d1": state("vm", "192.168.122.5", "d1", other)})
    store.drop(SRC)
    assert changed.calls == 3
    assert names(store) == [("vm.dns.podman", "192.168.122.5")]
    assert store.sources() == [other]
    store.drop(SRC)  # already gone: nothing changed
    assert changed.calls == 3
