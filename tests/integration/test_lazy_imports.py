"""A source that is off, or whose service is absent, does not load its library (issue 11).

A laptop without libvirtd or Podman should not pay for libvirt-python or
podman-py and requests (10-12 MB of RSS each), nor for the D-Bus library while
there is no system bus; pyroute2 is loaded as its rtnetlink socket only, never
its whole package (NDB, IPDB, ...: 6 MB more). The real agent process is asked
which libraries it has loaded (``daemon.libraries`` in its status, read from its
own ``sys.modules``).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.harness.agent import Agent, toml_config
from tests.harness.wait import until

pytestmark = pytest.mark.integration


def _config(agent: Agent, absent: Path, *, host: bool) -> str:
    return toml_config(
        socket=agent.socket, addn_hosts=agent.dir / "addn-hosts", pid_file=absent / "dnsmasq.pid",
        hosts_file=None,
        static={"web.dns.test": ["10.1.0.1"]},
        host='enabled = true\ninterfaces = ["virbr0"]' if host else None,
        networkmanager="enabled = true",
        libvirt=f'enabled = true\nuris = ["qemu:///system?socket={absent}/libvirt-sock-ro"]',
        podman=f'enabled = true\nsocket = "{absent}/podman.sock"\n'
               f'aardvark_dir = "{absent}/aardvark-dns"',
    )


def _waiting(agent: Agent) -> dict[str, str]:
    """Each service source's detail, once all of them say they wait for their service."""
    sources = {s["kind"]: s for s in agent.status()["sources"]}
    details = {k: sources[k]["detail"] or "" for k in ("libvirt", "podman")}
    if all(sources[k]["state"] == "disconnected" for k in details):
        return details
    return {}


@pytest.mark.parametrize("host", [True, False], ids=["host-on", "host-off"])
def test_absent_services_load_no_library(tmp_path: Path, host: bool) -> None:
    absent = tmp_path / "absent"  # never created: no libvirtd, Podman or system bus here
    agent = Agent(tmp_path / "agent",
                  env={"DBUS_SYSTEM_BUS_ADDRESS": f"unix:path={absent}/system_bus_socket"})
    agent.set_config(_config(agent, absent, host=host))
    try:
        agent.start()
        details = until(lambda: _waiting(agent), what="libvirt and Podman waiting")
        assert all("waiting for" in d for d in details.values()), details
        nm = agent.status()["networkmanager"]
        assert nm["bus"] == "unavailable" and "does not exist" in nm["bus_error"], nm
        loaded = agent.status()["daemon"]["libraries"]
        # The host source follows netlink: the rtnetlink socket alone, not the package.
        assert loaded == (["pyroute2"] if host else []), loaded
    finally:
        agent.stop()
