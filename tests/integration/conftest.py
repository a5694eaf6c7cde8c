"""Fixtures shared by the integration tests: a real dnsmasq plus a real agent process."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.harness.agent import Agent, toml_config
from tests.harness.dnsmasq import Dnsmasq
from tests.harness.libvirt import Libvirtd, Network

WriteConfig = Callable[..., None]


@pytest.fixture
def write_config(agent: Agent, dnsmasq: Dnsmasq, public_tmp: Path) -> WriteConfig:
    """Write the agent's config: dnsmasq sink on the test dnsmasq, hosts file in public_tmp."""

    def write(static: dict[str, list[str]] | None = None, *, hosts_file: bool = True,
              pid_file: Path | None = None, **kw: object) -> None:
        agent.set_config(toml_config(
            socket=agent.socket,
            addn_hosts=dnsmasq.addn_hosts,
            pid_file=pid_file or dnsmasq.pid_file,
            hosts_file=(public_tmp / "hosts") if hosts_file else None,
            static=static,
            **kw,  # type: ignore[arg-type]
        ))

    return write


# --- libvirt (tests/harness/libvirt.py) ---------------------------------------------


@pytest.fixture(scope="session")
def libvirtd_session(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Libvirtd]:
    """One private libvirtd + virtlogd for the whole session (0.15 s to start, 0.3 s to
    tear down). Use ``libvirtd``, which cleans up after each test."""
    daemon = Libvirtd(tmp_path_factory.mktemp("libvirt")).start()
    yield daemon
    daemon.teardown()


@pytest.fixture
def libvirtd(libvirtd_session: Libvirtd) -> Iterator[Libvirtd]:
    """The session's libvirtd, running. After the test every domain and network is gone
    (with their processes and lease files) and libvirtd runs again, even if the test
    stopped, killed or tore it down."""
    libvirtd_session.ensure_running()
    yield libvirtd_session
    libvirtd_session.cleanup()


@pytest.fixture
def libvirt_network(libvirtd: Libvirtd) -> Network:
    """A started NAT network with DHCP (unique name, bridge and 10.213.N.0/24)."""
    return libvirtd.network()
