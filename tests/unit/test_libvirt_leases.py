"""libvirt lease files: parsed defensively, expired and superseded leases dropped."""

from __future__ import annotations

import contextlib
import ipaddress
import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agent.sources.libvirt.leases import (
    Lease,
    LeaseFile,
    LeaseFileError,
    bridge_of,
    current,
    from_dhcp_leases,
    parse_status,
)

NOW = 1_800_000_000


def entry(ip: str, mac: str = "52:54:00:00:00:01", expiry: int = NOW + 3600,
          hostname: str | None = "guest") -> dict[str, object]:
    e: dict[str, object] = {"ip-address": ip, "mac-address": mac, "expiry-time": expiry}
    if hostname is not None:
        e["hostname"] = hostname
    return e


def test_parses_what_libvirt_writes() -> None:
    data = json.dumps([entry("192.168.122.10"), entry("fd00::10", mac="52:54:00:00:00:02",
                                                      hostname=None)]).encode()
    parsed = parse_status("virbr0", data)
    assert parsed.skipped == 0
    assert parsed.leases == (
        Lease("virbr0", "52:54:00:00:00:01", ipaddress.ip_address("192.168.122.10"), "guest",
              NOW + 3600),
        Lease("virbr0", "52:54:00:00:00:02", ipaddress.ip_address("fd00::10"), None, NOW + 3600),
    )


@pytest.mark.parametrize("data", [b"", b"   \n"])
def test_an_empty_file_means_no_leases(data: bytes) -> None:
    # libvirt creates <bridge>.status with 0 bytes when the network starts.
    assert parse_status("virbr0", data) == LeaseFile("virbr0", (), 0)


@pytest.mark.parametrize("data, why", [
    (b'[{"ip-address": "192.168.122.10", "mac-a', "not JSON"),
    (b'{"ip-address": "192.168.122.10"}', "expected a JSON list, got dict"),
    (b"\xff\xfe[]", "not JSON"),
])
def test_refuses_a_file_that_is_not_a_lease_list(data: bytes, why: str) -> None:
    with pytest.raises(LeaseFileError, match=why):
        parse_status("virbr0", data)


def test_an_entry_that_makes_no_sense_is_skipped_and_counted() -> None:
    data = json.dumps([
        entry("192.168.122.10"),
        entry("192.168.122.300"),  # not an address
        entry("192.168.122.11", mac="not-a-mac"),
        entry("192.168.122.12", expiry=-1),
        {"ip-address": "fd00::1", "iaid": "1", "client-duid": "00:01"},  # DHCPv6, no MAC
        "a string",
        entry("192.168.122.13", hostname=None) | {"hostname": ["x"]},
    ]).encode()
    parsed = parse_status("virbr0", data)
    assert [str(x.address) for x in parsed.leases] == ["192.168.122.10", "192.168.122.13"]
    assert parsed.leases[1].hostname is None
    assert parsed.skipped == 5


@given(st.binary(max_size=300))
def test_no_input_breaks_the_parser(data: bytes) -> None:
    with contextlib.suppress(LeaseFileError):
        parse_status("virbr0", data)


@given(st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=20),
                    lambda inner: st.lists(inner, max_size=4)
                    | st.dictionaries(st.sampled_from(["ip-address", "mac-address", "hostname",
                                                       "expiry-time", "x"]), inner, max_size=5),
                    max_leaves=20))
def test_no_json_shape_breaks_the_parser(doc: object) -> None:
    with contextlib.suppress(LeaseFileError):
        parse_status("virbr0", json.dumps(doc).encode())


def test_bridge_of_names_only_status_files() -> None:
    assert bridge_of("virbr0.status") == "virbr0"
    assert bridge_of("default.conf") is None
    assert bridge_of("default.hostsfile") is None
    assert bridge_of(".status") is None
    assert bridge_of(".virbr0.status.new") is None


def test_current_drops_expired_and_keeps_the_newest_per_family() -> None:
    mac = "52:54:00:00:00:01"
    old = Lease("virbr0", mac, ipaddress.ip_address("192.168.122.10"), None, NOW + 100)
    new = Lease("virbr0", mac, ipaddress.ip_address("192.168.122.20"), None, NOW + 3600)
    v6 = Lease("virbr0", mac, ipaddress.ip_address("fd00::20"), None, NOW + 50)
    dead = Lease("virbr0", "52:54:00:00:00:02", ipaddress.ip_address("192.168.122.30"), None,
                 NOW - 1)
    forever = Lease("virbr1", mac, ipaddress.ip_address("10.0.0.5"), None, 0)
    live = current([old, new, v6, dead, forever], NOW)
    assert live == {("virbr0", mac): [new, v6], ("virbr1", mac): [forever]}


def test_dhcp_leases_api_entries_grouped_by_bridge() -> None:
    api = [
        {"iface": "virbr0", "expirytime": NOW + 10, "type": 0, "mac": "52:54:00:AA:BB:CC",
         "iaid": None, "ipaddr": "192.168.122.7", "prefix": 24, "hostname": "vm",
         "clientid": "01:52:54:00:aa:bb:cc"},
        {"iface": "virbr1", "expirytime": NOW + 10, "type": 1, "mac": None, "iaid": "7",
         "ipaddr": "fd00::7", "prefix": 64, "hostname": None, "clientid": "00:04"},
    ]
    assert from_dhcp_leases(api) == {"virbr0": [
        Lease("virbr0", "52:54:00:aa:bb:cc", ipaddress.ip_address("192.168.122.7"), "vm",
              NOW + 10)]}
