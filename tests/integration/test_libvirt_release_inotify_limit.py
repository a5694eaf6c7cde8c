"""A release watch that cannot be armed (inotify limits, made to fail by the launcher):
the source stays connected, says why in status, and does not try again at every quiet
spell (each try was a timer wakeup and a log line every release_idle_s, for ever)."""
from __future__ import annotations

import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.harness.agent import Agent
from tests.harness.libvirt import Libvirtd, Network
from tests.harness.wait import until
from tests.integration.test_libvirt import libvirt_source

pytestmark = [pytest.mark.integration, pytest.mark.libvirt]


@pytest.mark.timeout(120)
def test_release_watch_refused(libvirtd: Libvirtd, libvirt_network: Network,
                               write_config: Callable[..., None], agent: Agent) -> None:
    launcher = Path(__file__).resolve().parent.parent / "harness" / "enospc_launcher.py"
    agent.wrap = (sys.executable, str(launcher))
    write_config(libvirt='uris = ["lxc:///system"]\nrelease_idle_s = 1\n')
    agent.start()
    until(lambda: "cannot watch" in (libvirt_source(agent)["detail"] or ""), timeout=30,
          what="status saying why the connection is kept")
    # An absence over a span (no further tries), not a sync point: 8 quiet spells.
    time.sleep(8)
    tries = agent.log.read_text().count('"event": "libvirt kept connected while idle"')
    src = libvirt_source(agent)
    assert src["state"] == "connected", src
    assert tries == 1, f"{tries} release attempts"
