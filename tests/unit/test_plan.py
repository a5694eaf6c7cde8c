"""The desired table and its rendering: deterministic winners, no flapping, pure output."""

from __future__ import annotations

import ipaddress
import random

from hypothesis import given
from hypothesis import strategies as st

from agent.model.record import Provenance, Record, Rejection
from agent.plan.render import render_addn_hosts
from agent.plan.table import Conflict, plan

NAME = "web.dns.podman"


def ip(*addrs: str) -> tuple[ipaddress.IPv4Address | ipaddress.IPv6Address, ...]:
    return tuple(ipaddress.ip_address(a) for a in addrs)


def rec(name: str, p: Provenance, *addrs: str) -> Record:
    return Record(name, ip(*addrs), p)


STATIC = Provenance("static", "config", "static", "config.toml")
VM_A = Provenance("libvirt:qemu:///system", "aaaa-uuid", "domain", "vm a")
VM_B = Provenance("libvirt:qemu:///system", "bbbb-uuid", "domain", "vm b")
CTR = Provenance("podman:/run/podman/podman.sock", "0123abcd", "container", "web")


def test_static_wins_without_history_even_with_a_larger_source_name() -> None:
    # "libvirt..." < "podman..." < "static": only the kind rule lets static win.
    t = plan(
        [rec(NAME, VM_A, "10.0.0.1"), rec(NAME, CTR, "10.0.0.2"), rec(NAME, STATIC, "10.0.0.3")], []
    )
    assert t.entries[NAME].provenance == STATIC
    assert t.entries[NAME].addresses == ip("10.0.0.3")


def test_smallest_source_and_object_id_wins_without_history() -> None:
    t = plan(
        [rec(NAME, CTR, "10.0.0.2"), rec(NAME, VM_B, "10.0.0.3"), rec(NAME, VM_A, "10.0.0.1")], []
    )
    assert t.entries[NAME].provenance == VM_A


@given(st.permutations([(VM_B, "10.0.0.2"), (CTR, "10.0.0.3"), (VM_A, "10.0.0.1")]))
def test_winner_does_not_depend_on_input_order(claims: list[tuple[Provenance, str]]) -> None:
    t = plan([rec(NAME, p, a) for p, a in claims], [])
    assert t.entries[NAME].provenance == VM_A
    assert render_addn_hosts(t).endswith(b"10.0.0.1 web.dns.podman\n")


def test_previous_holder_keeps_the_name_against_a_better_ranked_newcomer() -> None:
    first = plan([rec(NAME, VM_B, "10.0.0.2")], [])
    second = plan(
        [rec(NAME, VM_B, "10.0.0.2"), rec(NAME, VM_A, "10.0.0.1")], [], previous=first.holders()
    )
    assert second.entries[NAME].provenance == VM_B
    assert second.conflicts == (Conflict(NAME, VM_B, (VM_A,)),)


def test_previous_holder_keeps_the_name_even_against_static() -> None:
    first = plan([rec(NAME, CTR, "10.0.0.2")], [])
    second = plan(
        [rec(NAME, STATIC, "10.9.9.9"), rec(NAME, CTR, "10.0.0.2")], [], previous=first.holders()
    )
    assert second.entries[NAME].provenance == CTR


def test_holder_keeps_its_name_over_50_rounds_of_address_changes() -> None:
    table = plan([rec(NAME, VM_B, "10.0.0.2")], [])
    a_addr, b_addr = 1, 2
    for round_no in range(50):
        # Both objects change address, alternately, every round.
        if round_no % 2:
            a_addr += 1
        else:
            b_addr += 1
        b_ip = f"10.0.{b_addr // 250}.{b_addr % 250 + 1}"
        a_ip = f"fd00::{a_addr:x}"
        records = [rec(NAME, VM_A, a_ip), rec(NAME, VM_B, b_ip)]
        if round_no % 3 == 0:
            records.reverse()
        table = plan(records, [], previous=table.holders())
        assert table.entries[NAME].provenance == VM_B, f"flapped in round {round_no}"
        assert table.entries[NAME].addresses == ip(b_ip)
        assert table.conflicts == (Conflict(NAME, VM_B, (VM_A,)),)


def test_other_claimant_takes_over_when_the_holder_stops_and_keeps_it_after() -> None:
    t1 = plan(
        [rec(NAME, VM_B, "10.0.0.2"), rec(NAME, VM_A, "10.0.0.1")],
        [],
        previous={NAME: (VM_B.source, VM_B.object_id)},
    )
    assert t1.entries[NAME].provenance == VM_B
    t2 = plan([rec(NAME, VM_A, "10.0.0.1")], [], previous=t1.holders())
    assert t2.entries[NAME].provenance == VM_A
    assert t2.conflicts == ()
    # The old holder comes back: the name stays with the new holder.
    t3 = plan([rec(NAME, VM_B, "10.0.0.2"), rec(NAME, VM_A, "10.0.0.1")], [], previous=t2.holders())
    assert t3.entries[NAME].provenance == VM_A
    assert t3.conflicts == (Conflict(NAME, VM_A, (VM_B,)),)


def test_conflict_lists_winner_and_every_loser_sorted() -> None:
    t = plan(
        [
            rec(NAME, CTR, "10.0.0.3"),
            rec(NAME, VM_B, "10.0.0.2"),
            rec(NAME, STATIC, "10.0.0.9"),
            rec(NAME, VM_A, "10.0.0.1"),
            rec("other.dns.host", VM_A, "10.0.0.1"),
        ],
        [],
    )
    assert t.conflicts == (Conflict(NAME, STATIC, (VM_A, VM_B, CTR)),)


def test_one_object_claiming_a_name_twice_merges_addresses() -> None:
    nic0 = Provenance(VM_A.source, VM_A.object_id, "domain", "nic0")
    nic1 = Provenance(VM_A.source, VM_A.object_id, "domain", "nic1")
    t = plan(
        [rec(NAME, nic0, "fd00::1", "10.0.0.10"), rec(NAME, nic1, "10.0.0.9", "10.0.0.10")], []
    )
    assert t.entries[NAME].addresses == ip("10.0.0.9", "10.0.0.10", "fd00::1")
    assert t.conflicts == ()


def test_rejections_are_passed_through_sorted_and_deduplicated() -> None:
    r1 = Rejection(VM_B, "bad\nname", "contains control character U+000A")
    r2 = Rejection(VM_A, "zz", "x")
    r3 = Rejection(VM_A, "aa", "y")
    t = plan([], [r1, r2, r3, r1])
    assert t.rejections == (r3, r2, r1)
    assert t.entries == {}


def test_render_exact_bytes_sorted_by_name_ipv4_first_numerically() -> None:
    t = plan(
        [
            rec("web.dns.podman", CTR, "fd00::2", "10.0.0.10", "10.0.0.9"),
            rec("db.dns.host", STATIC, "192.168.122.10"),
            rec("a.dns.libvirt", VM_A, "2001:db8::1", "192.168.122.2"),
        ],
        [],
    )
    out = render_addn_hosts(t)
    header, _, body = out.partition(b"\n")
    assert header.startswith(b"#")
    assert body == (
        b"192.168.122.2 a.dns.libvirt\n"
        b"2001:db8::1 a.dns.libvirt\n"
        b"192.168.122.10 db.dns.host\n"
        b"10.0.0.9 web.dns.podman\n"
        b"10.0.0.10 web.dns.podman\n"
        b"fd00::2 web.dns.podman\n"
    )


def test_render_publishes_only_the_winners_addresses() -> None:
    t = plan([rec(NAME, VM_A, "10.0.0.1"), rec(NAME, CTR, "10.6.6.6")], [])
    assert b"10.6.6.6" not in render_addn_hosts(t)


labels = st.sampled_from(["a", "b", "web", "db", "x-1"])
zones = st.sampled_from(["dns.podman", "dns.libvirt", "dns.host"])
provs = st.sampled_from([STATIC, VM_A, VM_B, CTR])
v4 = st.integers(0x0A000001, 0x0AFFFFFE).map(ipaddress.IPv4Address)
v6 = st.integers(1, 2**32).map(lambda n: ipaddress.IPv6Address(0xFD00 << 112 | n))
records = st.lists(
    st.builds(
        lambda label, zone, p, addrs: Record(f"{label}.{zone}", tuple(addrs), p),
        labels,
        zones,
        provs,
        st.lists(st.one_of(v4, v6), min_size=1, max_size=3),
    ),
    max_size=12,
)


@given(records, st.randoms(use_true_random=False))
def test_render_is_a_pure_function_of_the_claims(recs: list[Record], rnd: random.Random) -> None:
    shuffled = list(recs)
    rnd.shuffle(shuffled)
    a = render_addn_hosts(plan(recs, []))
    b = render_addn_hosts(plan(shuffled, []))
    assert a == b
    lines = a.splitlines()[1:]
    keys = []
    for line in lines:
        addr, name = line.decode().split(" ")
        parsed = ipaddress.ip_address(addr)
        keys.append((name, parsed.version, int(parsed)))
    assert keys == sorted(keys)
    assert len(set(lines)) == len(lines)
