"""A hung libvirtd (alive, its socket open, not answering) is detected and said.

A real libvirtd with busybox LXC guests (tests/harness/libvirt), SIGSTOPped while
namesync's call is in flight, the real agent with ``call_timeout_s = 2``, answers
checked with dig at the test dnsmasq. SIGSTOP is how a hang is made on demand (a
deadlock or a dead NFS mount look the same from the client: no answer). Every test
SIGCONTs libvirtd in ``finally``: the session's libvirtd must not stay stopped.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.harness.agent import Agent, agentctl
from tests.harness.dnsmasq import Dnsmasq
from tests.harness.libvirt import Libvirtd, Network
from tests.harness.wait import until
from tests.integration.test_libvirt import (
    ZONE,
    answers,
    ask,
    libvirt_source,
    nxdomain,
    stays_and_goes,
)

pytestmark = [pytest.mark.integration, pytest.mark.libvirt, pytest.mark.timeout(150)]

BOUND_S = 2
# A file in a directory the released source watches (release.py): waking it makes it
# connect, and the connect is what then hangs. The directory is the test's own
# (tmpfs /run in the private namespace); the file is removed afterwards.
WAKER = Path("/run/libvirt/lxc/namesync-test-wake.xml")  # only <name>.xml wakes it


@contextlib.contextmanager
def stopped(libvirtd: Libvirtd) -> Iterator[None]:
    """libvirtd SIGSTOPped for the block, continued whatever happens in it."""
    pid = libvirtd.pid
    os.kill(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(pid, signal.SIGCONT)


def source(agent: Agent) -> dict[str, Any]:
    return libvirt_source(agent)


def stalled(agent: Agent, call: str) -> dict[str, Any]:
    """Until status says libvirtd is not answering ``call``; returns the source's status."""
    def probe() -> dict[str, Any] | None:
        src = source(agent)
        detail = src["detail"] or ""
        return src if (src["state"] == "disconnected"
                       and f"libvirtd not answering: {call} waiting" in detail) else None
    # The bound, then the status poll: generous for a loaded machine, still bounded.
    return until(probe, timeout=BOUND_S + 15, interval=0.1, what=f"{call} reported stuck")


def recovered(agent: Agent) -> dict[str, Any]:
    def probe() -> dict[str, Any] | None:
        src = source(agent)
        ok = (src["state"] in ("connected", "released") and not src["error_active"]
              and "not answering" not in (src["detail"] or ""))
        return src if ok else None
    return until(probe, timeout=30, interval=0.1, what="the source recovered")


def ended(agent: Agent) -> list[dict[str, Any]]:
    """The log's "stuck libvirtd call ended" events."""
    out = []
    for line in agent.log.read_text().splitlines():
        if '"stuck libvirtd call ended"' in line:
            out.append(json.loads(line[line.index("{"):]))
    return out


def kill_controller(guest: Any) -> None:
    """The guest dies while libvirtd is stopped: only a resync can learn it."""
    controller = guest.controller_pid
    assert controller is not None
    os.kill(controller, signal.SIGKILL)
    until(lambda: not os.path.exists(f"/proc/{controller}"), interval=0.05,
          what="controller gone")


@pytest.fixture
def configure(write_config: Callable[..., None]) -> Callable[[int], None]:
    def write(release_idle_s: int) -> None:
        write_config(libvirt=('uris = ["lxc:///system"]\n'
                              f"release_idle_s = {release_idle_s}\n"
                              f"call_timeout_s = {BOUND_S}\n"))
    return write


def test_a_libvirtd_stopped_mid_call_is_reported_keeps_the_names_and_resyncs_when_continued(
        libvirtd: Libvirtd, libvirt_network: Network, dnsmasq: Dnsmasq, agent: Agent,
        configure: Callable[[int], None]) -> None:
    # The call in flight: the listing the source makes after 3 s without events, just
    # before it would release the connection (a connected source, mid-call).
    configure(3)
    agent.start()
    ip_stays, ip_goes, goes = stays_and_goes(libvirtd, libvirt_network, dnsmasq)
    assert source(agent)["state"] == "connected"

    with stopped(libvirtd):
        src = stalled(agent, "listAllDomains")
        assert src["last_error"].startswith(
            "lxc:///system: libvirtd not answering: listAllDomains "
            f"(no answer within {BOUND_S} s)"), src
        assert src["detail"].startswith("libvirtd not answering: listAllDomains waiting "), src
        run = agentctl("--socket", str(agent.socket), "status", check=False)
        assert run.returncode == 1, run.stdout  # degraded
        assert "libvirtd not answering: listAllDomains" in run.stdout, run.stdout
        # What it published stays: nothing is known to have changed.
        assert ask(dnsmasq, f"stays.{ZONE}").records == (ip_stays,)
        assert ask(dnsmasq, f"goes.{ZONE}").records == (ip_goes,)
        # A guest dies meanwhile; the reconnect's own open hangs too, and then the
        # source waits for a stuck call to return rather than pile up threads.
        kill_controller(goes)
        src = until(lambda: (s := source(agent))["detail"] and
                    "reconnecting when it answers" in s["detail"] and s,
                    timeout=BOUND_S * 3 + 15, interval=0.1, what="waiting for an answer")
        assert src["detail"].count(" waiting ") <= 2, src
        assert ask(dnsmasq, f"goes.{ZONE}").records == (ip_goes,)
        # libvirt's keepalive, armed on the abandoned connection, closes it while
        # libvirtd stays stopped: the stuck listing fails and its thread ends.
        until(lambda: any(e.get("call") == "listAllDomains"
                          and e.get("outcome", "").startswith("failed: ")
                          for e in ended(agent)),
              timeout=20, interval=0.2, what="the abandoned connection closed by keepalive")

    # Continued: the stuck calls return, the source reconnects and resyncs.
    recovered(agent)
    nxdomain(dnsmasq, f"goes.{ZONE}", timeout=20)
    assert ask(dnsmasq, f"stays.{ZONE}").records == (ip_stays,)
    late = libvirtd.guest("late", [libvirt_network])
    answers(dnsmasq, f"late.{ZONE}", late.wait_for_lease())
    log = agent.log.read_text()
    assert log.count("libvirtd not answering: listAllDomains") == 1, log  # said once
    assert '"event": "libvirt recovered"' in log


def test_a_libvirtd_stopped_while_released_hangs_the_reconnect_which_is_reported(
        libvirtd: Libvirtd, libvirt_network: Network, dnsmasq: Dnsmasq, agent: Agent,
        configure: Callable[[int], None]) -> None:
    configure(1)
    agent.start()
    ip_stays, ip_goes, goes = stays_and_goes(libvirtd, libvirt_network, dnsmasq)
    until(lambda: source(agent)["state"] == "released", timeout=15, interval=0.1,
          what="released")

    try:
        with stopped(libvirtd):
            WAKER.write_text("")  # wakes the released source: it connects, and hangs
            src = stalled(agent, "openReadOnly")
            assert "not answering: openReadOnly" in src["last_error"], src
            assert ask(dnsmasq, f"stays.{ZONE}").records == (ip_stays,)
            assert ask(dnsmasq, f"goes.{ZONE}").records == (ip_goes,)
            kill_controller(goes)
    finally:
        WAKER.unlink(missing_ok=True)

    recovered(agent)
    nxdomain(dnsmasq, f"goes.{ZONE}", timeout=20)
    assert ask(dnsmasq, f"stays.{ZONE}").records == (ip_stays,)
    late = libvirtd.guest("late", [libvirt_network])
    answers(dnsmasq, f"late.{ZONE}", late.wait_for_lease())
