"""libvirtd SIGKILLed while released: nothing in the watched dirs changes, so status keeps
saying 'released' (healthy, "reconnects when ... change") with no libvirtd at all;
connected, the same crash is reported at once ("connection lost", degraded)."""
from __future__ import annotations

import time
from collections.abc import Callable

import pytest

from tests.harness.agent import Agent, agentctl
from tests.harness.libvirt import Libvirtd, Network
from tests.harness.wait import until
from tests.integration.test_libvirt import libvirt_source

pytestmark = [pytest.mark.integration, pytest.mark.libvirt]


@pytest.mark.parametrize("idle", [1, 0])
def test_killed_while_released(idle: int, libvirtd: Libvirtd, libvirt_network: Network,
                               write_config: Callable[..., None], agent: Agent) -> None:
    write_config(libvirt=f'uris = ["lxc:///system"]\nrelease_idle_s = {idle}\n')
    agent.start()
    until(lambda: libvirt_source(agent)["state"] == ("released" if idle else "connected"),
          timeout=15, what="settled")
    time.sleep(1.5)
    libvirtd.kill()
    time.sleep(5)
    src = libvirt_source(agent)
    run = agentctl("--socket", str(agent.socket), "status", check=False)
    print(f"idle={idle}: state={src['state']} rc={run.returncode} detail={src['detail']}")
    assert src["state"] == "disconnected" and run.returncode == 1, src
