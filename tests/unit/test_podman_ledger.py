"""The merge rules between inspect (authoritative) and aardvark's files (the fast path)."""

from __future__ import annotations

from ipaddress import ip_address

from agent.model.record import ObjectState
from agent.sources.podman.inspect import Down, Live
from agent.sources.podman.ledger import TOMBSTONE_S, Ledger
from agent.sources.podman.view import ContainerView, NetworkView, object_state

A = "a" * 64
B = "b" * 64


def view(cid: str, name: str, addr: str) -> ContainerView:
    return ContainerView(cid, name, (NetworkView("n", (ip_address(addr),), (cid[:12],)),))


def build(v: ContainerView) -> ObjectState:
    return object_state(v, source="podman:test", zone="dns.podman")


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def names(state: ObjectState | None) -> dict[str, str] | None:
    if state is None:
        return None
    return {r.name: ",".join(map(str, r.addresses)) for r in state.records}


def test_fast_path_adds_then_inspect_confirms_without_a_change() -> None:
    ledger = Ledger(build)
    changed, hints = ledger.set_provisional({A: view(A, "web", "10.0.0.2")})
    assert (changed, hints) == ({A}, {A})
    assert names(ledger.published(A)) == {"web.dns.podman": "10.0.0.2"}
    # inspect agrees: nothing to publish again
    assert ledger.set_verdict(A, Live(view(A, "web", "10.0.0.2"))) is False


def test_inspect_overrides_what_the_files_say() -> None:
    ledger = Ledger(build)
    ledger.set_provisional({A: view(A, "web", "10.0.0.2")})
    # a network only inspect sees (no DNS there) adds an address
    assert ledger.set_verdict(A, Live(view(A, "web", "10.0.9.9"))) is True
    assert names(ledger.published(A)) == {"web.dns.podman": "10.0.9.9"}
    # the files changing again changes nothing while inspect has the word
    changed, hints = ledger.set_provisional({A: view(A, "web", "10.0.0.7")})
    assert (changed, hints) == (set(), {A})  # ... but it is a hint to inspect again
    assert names(ledger.published(A)) == {"web.dns.podman": "10.0.9.9"}


def test_a_stopped_container_is_not_resurrected_by_a_lingering_line() -> None:
    ledger = Ledger(build)
    ledger.set_provisional({A: view(A, "web", "10.0.0.2")})
    ledger.set_verdict(A, Live(view(A, "web", "10.0.0.2")))
    assert ledger.set_verdict(A, Down()) is True
    assert ledger.published(A) is None
    # the line is still (or again) in the file: nothing comes back
    changed, _ = ledger.set_provisional({A: view(A, "web", "10.0.0.2")})
    assert changed == set() and ledger.published(A) is None
    ledger.set_provisional({})
    changed, hints = ledger.set_provisional({A: view(A, "web", "10.0.0.3")})
    assert changed == set() and hints == {A} and ledger.published(A) is None
    # only inspect brings it back (a restart, on a new address)
    assert ledger.set_verdict(A, Live(view(A, "web", "10.0.0.3"))) is True
    assert names(ledger.published(A)) == {"web.dns.podman": "10.0.0.3"}


def test_files_alone_publish_and_unpublish_what_inspect_never_saw() -> None:
    ledger = Ledger(build)
    ledger.set_provisional({A: view(A, "web", "10.0.0.2"), B: view(B, "db", "10.0.0.3")})
    changed, _ = ledger.set_provisional({B: view(B, "db", "10.0.0.3")})
    assert changed == {A}
    assert ledger.published(A) is None
    assert set(ledger.snapshot()) == {B}


def test_removed_container_tombstone_outlives_its_line_then_is_forgotten() -> None:
    clock = Clock()
    ledger = Ledger(build, clock)
    ledger.set_provisional({A: view(A, "web", "10.0.0.2")})
    ledger.set_verdict(A, Down(gone=True))
    clock.now += TOMBSTONE_S * 2
    ledger.set_provisional({A: view(A, "web", "10.0.0.2")})  # still listed: kept
    assert ledger.verdict(A) == Down(gone=True)
    ledger.set_provisional({})
    clock.now += TOMBSTONE_S - 1
    ledger.set_provisional({})
    assert ledger.verdict(A) == Down(gone=True)  # not long enough unlisted
    clock.now += 2
    ledger.set_provisional({})
    assert ledger.verdict(A) is None


def test_resync_replaces_verdicts_but_keeps_listed_tombstones() -> None:
    ledger = Ledger(build)
    ledger.set_provisional({A: view(A, "web", "10.0.0.2")})
    ledger.set_verdict(A, Down(gone=True))
    ledger.set_verdict(B, Live(view(B, "db", "10.0.0.3")))
    ledger.resync({})
    assert ledger.verdict(A) == Down(gone=True)  # its line lingers: still blocked
    assert ledger.verdict(B) is None
    assert ledger.snapshot() == {}


def test_names_map_for_renames() -> None:
    ledger = Ledger(build)
    ledger.set_verdict(A, Live(view(A, "web", "10.0.0.2")))
    ledger.set_verdict(A, Live(view(A, "web2", "10.0.0.2")))
    assert ledger.names() == {A: "web2"}
    assert names(ledger.published(A)) == {"web2.dns.podman": "10.0.0.2"}


def test_service_down_lines_vanishing_from_every_file_unpublish_the_container() -> None:
    ledger = Ledger(build)
    ledger.set_verdict(A, Live(view(A, "web", "10.0.0.2")))
    ledger.set_verdict(B, Live(view(B, "db", "10.0.0.3")))
    ledger.set_provisional({A: view(A, "web", "10.0.0.2")}, frozenset({A}))
    # Service up: a vanished line is only a hint (inspect decides).
    changed, hints = ledger.set_provisional({}, frozenset())
    assert (changed, hints) == (set(), {A})
    assert names(ledger.published(A)) == {"web.dns.podman": "10.0.0.2"}
    ledger.set_provisional({A: view(A, "web", "10.0.0.2")}, frozenset({A}))
    # Service down: the files are the only witness; B never had a line and stays.
    changed, _ = ledger.set_provisional({}, frozenset(), files_alone=True)
    assert changed == {A}
    assert ledger.published(A) is None and ledger.verdict(A) is None
    assert names(ledger.published(B)) == {"db.dns.podman": "10.0.0.3"}
    # Started again through the CLI: its new line publishes it.
    changed, _ = ledger.set_provisional({A: view(A, "web", "10.0.0.9")}, frozenset({A}),
                                        files_alone=True)
    assert changed == {A}
    assert names(ledger.published(A)) == {"web.dns.podman": "10.0.0.9"}


def test_refused_lines_are_published_as_refusals_under_their_own_keys() -> None:
    ledger = Ledger(build)
    state = ObjectState()
    assert ledger.set_refused({"aardvark:n:x": state}) == {"aardvark:n:x"}
    assert ledger.published("aardvark:n:x") is state
    assert ledger.snapshot() == {"aardvark:n:x": state}
    assert ledger.set_refused({"aardvark:n:x": state}) == set()
    assert ledger.set_refused({}) == {"aardvark:n:x"}
    assert ledger.published("aardvark:n:x") is None
