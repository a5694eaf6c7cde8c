"""The version the daemon and agentctl report is the one the package is built with."""

from __future__ import annotations

import tomllib
from importlib import metadata
from pathlib import Path

from agent import version

REPO = Path(__file__).resolve().parents[2]


def test_version_is_pyprojects_and_the_installed_one() -> None:
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    assert version() == pyproject["project"]["version"]
    assert version() == metadata.version("namesync")
