"""NIC hotplug (no lifecycle event; the status XML is rewritten): followed while released
(woken by the file), but while connected only at the next listing: with the connection
kept (release_idle_s = 0, or a probed domain, or a remote URI) never."""
from __future__ import annotations

import re
import time
from collections.abc import Callable

import pytest

from tests.harness.agent import Agent
from tests.harness.dnsmasq import Dnsmasq
from tests.harness.libvirt import Libvirtd, Network
from tests.harness.wait import until
from tests.integration.test_libvirt import ZONE, ask, libvirt_source

pytestmark = [pytest.mark.integration, pytest.mark.libvirt]


@pytest.mark.parametrize("idle", [1])
def test_hotplugged_nic(idle: int, libvirtd: Libvirtd, libvirt_network: Network,
                        dnsmasq: Dnsmasq, write_config: Callable[..., None],
                        agent: Agent) -> None:
    lv = __import__("libvirt")
    net2 = libvirtd.network()
    g = libvirtd.guest("hot", [libvirt_network])
    ip0 = g.wait_for_lease()
    write_config(libvirt=f'uris = ["lxc:///system"]\nrelease_idle_s = {idle}\n')
    agent.start()
    until(lambda: ask(dnsmasq, f"hot.{ZONE}").records == (ip0,), what="hot")
    if idle:
        until(lambda: libvirt_source(agent)["state"] == "released", what="released")
    g.obj().attachDeviceFlags(
        f"<interface type='network'><source network='{net2.name}'/></interface>",
        lv.VIR_DOMAIN_AFFECT_LIVE)
    mac = re.findall(r"<mac address='([^']+)'", g.obj().XMLDesc(0))[-1]
    links = g.exec("ip", "-o", "link").stdout
    dev = next(line.split(": ")[1].split("@")[0] for line in links.splitlines() if mac in line)
    g.exec("ip", "link", "set", dev, "up")
    g.exec("sh", "-c",
           f"udhcpc -i {dev} -s /harness/udhcpc.script -t 20 -T 1 -n -q >/dev/null 2>&1")
    lease = until(lambda: net2.lease_for(mac) or {}, what="eth1's lease")
    ip1 = str(lease["ip-address"])
    t0 = time.monotonic()
    try:
        until(lambda: ask(dnsmasq, f"nic1.hot.{ZONE}").records == (ip1,), timeout=15,
              what="nic1.hot")
        print(f"idle={idle}: nic1 answered {time.monotonic() - t0:.2f}s after its lease")
    finally:
        src = libvirt_source(agent)
        print("state:", src["state"], "| detail:", src["detail"])
        print("rejected:", [r["reason"] for r in agent.status()["table"]["rejected"]])
