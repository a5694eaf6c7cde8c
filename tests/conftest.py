"""Session setup: private namespaces for everything the integration tests start."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.harness.agent import Agent
from tests.harness.dnsmasq import Dnsmasq
from tests.harness.isolation import enter_private_namespaces

_NOT_ISOLATED: list[str] = []


def pytest_configure(config: pytest.Config) -> None:
    why = enter_private_namespaces()
    if why:
        _NOT_ISOLATED.append(why)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    missing = [tool for tool in ("dnsmasq", "dig", "ip") if shutil.which(tool) is None]
    reason = _NOT_ISOLATED[0] if _NOT_ISOLATED else (
        f"missing tools: {', '.join(missing)}" if missing else None)
    if reason is not None:
        skip = pytest.mark.skip(reason=reason)
        for item in items:
            if "integration" in item.keywords:
                item.add_marker(skip)
    nm_tools = ("NetworkManager", "dbus-daemon", "nsenter")
    nm_missing = [t for t in nm_tools if shutil.which(t) is None]
    if nm_missing:
        skip_nm = pytest.mark.skip(reason=f"missing {', '.join(nm_missing)}")
        for item in items:
            if "networkmanager" in item.keywords:
                item.add_marker(skip_nm)


@pytest.fixture
def public_tmp() -> Iterator[Path]:
    """A tmp dir dnsmasq's unprivileged user can traverse (pytest's tmp_path is 0700)."""
    path = Path(tempfile.mkdtemp(prefix="namesync-test-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def dnsmasq(public_tmp: Path) -> Iterator[Dnsmasq]:
    d = Dnsmasq(public_tmp / "dnsmasq", zones=("dns.test", "dns.host")).start()
    yield d
    d.stop()


@pytest.fixture
def agent_dir(tmp_path: Path) -> Path:
    return tmp_path / "agent"


@pytest.fixture
def agent(agent_dir: Path) -> Iterator[Agent]:
    a = Agent(agent_dir)
    yield a
    a.stop()
