"""The synthetic name table every bench measurement uses, so all paths write the same bytes.

N names ``hNNNNN.dns.test``, each with its own IPv4 address and every fourth
also an IPv6 one (so multi-address records and the IPv4-before-IPv6 order
are exercised). The name in the middle is the one that changes; it
alternates between two addresses so every round is a real change.
"""

from __future__ import annotations

import ipaddress
from pathlib import Path

from agent.plan.render import ADDN_HOSTS_HEADER
from tests.harness.agent import toml_config

ZONE = "dns.test"
# A path under test flips the name between A and B; the floor rounds, which
# alternate with them, write C. So every round of either is a real change.
ADDR_A = "10.255.0.1"
ADDR_B = "10.255.0.2"
ADDR_C = "10.255.0.3"


def other(addr: str) -> str:
    """The next address for a path under test: whichever of A and B it is not at."""
    return ADDR_B if addr == ADDR_A else ADDR_A


def target_index(n: int) -> int:
    return n // 2


def name(i: int) -> str:
    return f"h{i:05d}.{ZONE}"


def target_name(n: int) -> str:
    return name(target_index(n))


def addresses(n: int, target_addr: str) -> dict[str, list[str]]:
    """name -> addresses (already in file order), the target holding ``target_addr``."""
    table: dict[str, list[str]] = {}
    t = target_index(n)
    for i in range(n):
        if i == t:
            table[name(i)] = [target_addr]
            continue
        v4 = str(ipaddress.IPv4Address(0x0A000000 + i + 1))
        # Not "fd00::{i + 1:x}": one hex group holds only 65,535 names.
        v6 = str(ipaddress.IPv6Address((0xFD00 << 112) + i + 1))
        table[name(i)] = [v4, v6] if i % 4 == 0 else [v4]
    return table


def hosts_bytes(n: int, target_addr: str) -> bytes:
    """Exactly what namesync renders for this table (checked by the bench at run time)."""
    lines = [ADDN_HOSTS_HEADER]
    for host, addrs in addresses(n, target_addr).items():  # zero-padded: already sorted
        lines.extend(f"{a} {host}\n".encode("ascii") for a in addrs)
    return b"".join(lines)


def config_text(n: int, target_addr: str, *, socket: Path, addn_hosts: Path, pid_file: Path,
                coalesce_ms: int) -> str:
    text = toml_config(socket=socket, addn_hosts=addn_hosts, pid_file=pid_file, hosts_file=None,
                       static=addresses(n, target_addr), coalesce_ms=coalesce_ms)
    # The harness logs at debug for tests; measure what a user runs.
    return text.replace('log_level = "debug"', 'log_level = "info"')
