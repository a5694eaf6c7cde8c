"""What a guest's DHCP flood costs the libvirt source with the DHCPACK trigger on.

Run from the repo root (no root needed, nothing is started):
    .venv/bin/python bench/libvirt_ack_flood.py

A guest can have libvirt's dnsmasq ACK any number of made-up MACs (a DHCPREQUEST
each, then a RELEASE so the pool never runs out): every ACK passes every check,
since the host really sent it. This drives the real LibvirtSource methods with
such ACKs (no sink: the pipeline's own cost comes on top), as the security
review of the trigger did (issue 11, finding F4):

1. one publish (every lease-file change, every ACK of ours, every withdrawal)
   with 4096 foreign ACKs just handled, per number of domains;
2. a steady flood of foreign ACKs and no other event: publishes the withdrawal
   timer causes.
"""

from __future__ import annotations

import asyncio
import logging
import tempfile
import time
from collections.abc import Callable
from ipaddress import IPv4Address
from pathlib import Path

import structlog

from agent.config.schema import LibvirtConfig
from agent.sources.libvirt.dhcp_ack import Ack, Pool
from agent.sources.libvirt.domain_xml import Domain, Nic
from agent.sources.libvirt.source import ApiView, LibvirtSource

POOL = Pool(((IPv4Address("192.168.122.2"), IPv4Address("192.168.122.254")),))


def domains(n: int) -> dict[str, Domain]:
    out = {}
    for i in range(n):
        nic = Nic(0, f"52:54:00:aa:{i >> 8:02x}:{i & 255:02x}", "network", "default", None, None)
        out[f"uuid-{i}"] = Domain(f"uuid-{i}", f"vm{i}", True, (nic,))
    return out


def foreign(k: int) -> Ack:
    mac = f"02:00:{k >> 16 & 255:02x}:{k >> 8 & 255:02x}:{k & 255:02x}:01"
    return Ack(mac, IPv4Address("192.168.122.10") + (k % 200), 3600)


def source(ndom: int, tmp: Path) -> LibvirtSource:
    src = LibvirtSource("qemu:///system", LibvirtConfig(
        uris=("qemu:///system",), lease_dir=tmp, dhcp_trigger=True))
    src._api = ApiView(domains(ndom), {"default": "virbr0"}, {}, {})
    src._pools = {"virbr0": POOL}
    return src


def stop(src: LibvirtSource) -> None:
    for h in (src._withdraw, src._expiry, src._soon):
        if h is not None:
            h.cancel()


def best_ms(fn: Callable[[], None], n: int = 5) -> float:
    best = 1e9
    for _ in range(n):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best * 1000


async def main() -> None:
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.INFO))
    tmp = Path(tempfile.mkdtemp())
    print("1. one publish, ms (best of 5)")
    for ndom in (10, 100, 500, 2000):
        src = source(ndom, tmp)
        src._publish()
        base = best_ms(src._publish)
        for k in range(4096):
            src._on_ack("virbr0", foreign(k))
        full = best_ms(src._publish)
        print(f"  {ndom:5d} domains: {base:6.1f} with none waiting, {full:6.1f} after 4096 "
              f"foreign ACKs ({src._provisional.foreign()} kept)")
        stop(src)

    rate, seconds = 1000, 12.0
    src = source(100, tmp)
    count = 0
    publish = src._publish

    def counting() -> None:
        nonlocal count
        count += 1
        publish()

    src._publish = counting  # type: ignore[method-assign]
    src._on_ack("virbr0", foreign(0))
    src._publish()  # any publish (a lease file, an ACK of ours) would arm the timer
    count, k, t0 = 0, 1, time.monotonic()
    while (elapsed := time.monotonic() - t0) < seconds:
        while k < elapsed * rate:
            src._on_ack("virbr0", foreign(k))
            k += 1
        await asyncio.sleep(0.002)
    print(f"2. {rate} foreign ACKs/s for {seconds:.0f} s: {count} publishes by the "
          f"withdrawal timer, {k} ACKs handled")
    stop(src)


if __name__ == "__main__":
    asyncio.run(main())
