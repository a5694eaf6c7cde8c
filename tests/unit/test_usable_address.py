"""Which addresses a name may point at (agent/model/record.usable): one rule for what
Podman's source observes and what a user agent pushes, so the two cannot disagree."""

from __future__ import annotations

from ipaddress import ip_address

import pytest

from agent.model.record import usable
from agent.peer.policy import Scope, decode_push
from agent.sources.podman.view import ContainerView, NetworkView, object_state

UNUSABLE = [
    "127.0.0.1", "127.8.9.10", "::1",  # loopback: the resolver's own machine
    "169.254.1.1", "fe80::1",  # link-local: needs a zone index no hosts file can hold
    "0.0.0.0", "::",  # unspecified
    "224.0.0.251", "ff02::fb",  # multicast
    "240.0.0.1", "255.255.255.255", "100::1",  # reserved
    "::ffff:127.0.0.1", "::ffff:169.254.1.1",  # IPv4-mapped loopback/link-local (reserved)
]
USABLE = ["10.89.0.5", "192.168.122.7", "172.16.0.1", "100.64.0.1", "8.8.8.8",
          "fd00::5", "2001:db8::1", "2a00:1450:4001::1"]


@pytest.mark.parametrize(("text", "expected"),
                         [(a, False) for a in UNUSABLE] + [(a, True) for a in USABLE])
def test_usable(text: str, expected: bool) -> None:
    assert usable(ip_address(text)) is expected


@pytest.mark.parametrize("text", UNUSABLE + USABLE)
def test_podman_and_a_peer_push_agree(text: str) -> None:
    addr = ip_address(text)
    view = ContainerView("c" * 64, "web", (NetworkView("podman", (addr,)),))
    podman = object_state(view, source="podman:test", zone="dns.podman")
    push = decode_push({"records": [{"name": "web.alice.dns.podman", "addresses": [text]}]},
                       Scope("alice", ("dns.podman",), False), max_names=10)
    if usable(addr):
        assert [r.addresses for r in podman.records] == [(addr,)]
        assert [c.addresses for c in push.claims] == [(addr,)]
    else:
        assert podman.records == () and len(podman.rejections) == 1
        # parse_address already refuses some (unspecified, multicast) with its own reason
        assert push.claims == () and len(push.refused) == 1
