"""Fixtures shared by the integration tests: a real dnsmasq plus a real agent process."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from tests.harness.agent import Agent, toml_config
from tests.harness.dnsmasq import Dnsmasq

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
