"""Session setup: private namespaces for everything the integration tests start."""

from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.harness.agent import Agent
from tests.harness.dnsmasq import Dnsmasq
from tests.harness.isolation import enter_private_namespaces
from tests.harness.users import User, ensure_user, remove

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
    for item in items:
        if item.get_closest_marker("timeout") is None and any(
                marker in item.keywords for marker in _SLOW_MARKERS):
            item.add_marker(pytest.mark.timeout(SLOW_TIMEOUT))
    for marker, needs in _COMPONENT_TOOLS.items():
        why = _missing(needs)
        if why:
            skip_it = pytest.mark.skip(reason=why)
            for item in items:
                if marker in item.keywords:
                    item.add_marker(skip_it)


# Tests that start a whole daemon stack get longer than pyproject's default
# `timeout` (120 s): the first test of a session also pays for the session's
# fixtures (libvirtd, a cold rootfs build for tests/system), on a shared 2-CPU
# machine. An explicit @pytest.mark.timeout(N) on a test wins.
SLOW_TIMEOUT = 600
_SLOW_MARKERS = ("libvirt", "podman", "networkmanager", "systemd", "resolved")

# What each component marker needs: executables, and ("py", module) for Python modules.
_COMPONENT_TOOLS: dict[str, tuple[str, ...]] = {
    "networkmanager": ("NetworkManager", "dbus-daemon", "nsenter"),
    "libvirt": ("libvirtd", "virtlogd", "busybox", "py:libvirt"),
    "podman": ("podman", "runc", "conmon", "busybox"),
    "rpm": ("rpmbuild", "rpmlint", "rpm2cpio", "cpio", "checkmodule", "semodule_package", "make",
            "bzip2", "git", "man", "groff"),
    "systemd": ("systemd-nspawn", "mmdebstrap", "nsenter", "rpmbuild", "rpm2cpio", "git"),
    "resolved": ("mmdebstrap", "dbus-daemon", "nsenter", "busctl", "chroot"),
}


def _missing(needs: tuple[str, ...]) -> str | None:
    missing = []
    for need in needs:
        if need.startswith("py:"):
            if importlib.util.find_spec(need[3:]) is None:
                missing.append(f"Python module {need[3:]}")
        elif shutil.which(need) is None:
            missing.append(need)
    return f"missing {', '.join(missing)}" if missing else None


@pytest.fixture
def public_tmp() -> Iterator[Path]:
    """A tmp dir dnsmasq's unprivileged user can traverse (pytest's tmp_path is 0700)."""
    path = Path(tempfile.mkdtemp(prefix="namesync-test-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def dnsmasq(public_tmp: Path) -> Iterator[Dnsmasq]:
    zones = ("dns.test", "dns.host", "dns.libvirt", "dns.podman")
    d = Dnsmasq(public_tmp / "dnsmasq", zones=zones).start()
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


@pytest.fixture(scope="session")
def unix_user() -> Iterator[Callable[[str], User]]:
    """``unix_user("alice")``: a real unprivileged user unique to this run (created once
    per tag, needs root); every one made is deleted at the end of the session."""
    if os.geteuid() != 0:
        pytest.skip("creating users needs root")
    made: dict[str, User] = {}

    def make(tag: str) -> User:
        if tag not in made:
            made[tag] = ensure_user(tag)
        return made[tag]

    yield make
    for user in made.values():
        remove(user)
