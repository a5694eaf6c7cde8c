"""tests/system: the package as built from the spec, and its units under a real systemd.

One RPM build per session (~3 s) serves the packaging checks and the
container the units run in.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.harness import rpm


@pytest.fixture(scope="session")
def rpm_build(tmp_path_factory: pytest.TempPathFactory) -> Iterator[rpm.Build]:
    yield rpm.build(tmp_path_factory.mktemp("rpmbuild"))


@pytest.fixture(scope="session")
def rpm_root(rpm_build: rpm.Build, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The main package's payload, unpacked as rpm lays it out."""
    root = tmp_path_factory.mktemp("payload")
    rpm.extract(rpm_build.rpms["namesync"], root)
    return root


@pytest.fixture(scope="session")
def dependency_rpms(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """python3-structlog and python3-asyncinotify built from packaging/deps/."""
    out: dict[str, Path] = {}
    for spec in sorted(rpm.DEPS_DIR.glob("*.spec")):
        out.update(rpm.build_dependency(spec, tmp_path_factory.mktemp(spec.stem)).rpms)
    return out
