"""Failures for a passing reason (out of descriptors) are retried, not lost (defect 2).

EMFILE cannot be produced on demand in one spot of a real daemon without
starving everything else in it, so these tests make the one call fail the
way the kernel does (OSError(EMFILE)) and check what happens next.
"""

from __future__ import annotations

import asyncio
import errno
import os
from pathlib import Path
from typing import Any

import pytest

from agent.config.load import parse_config
from agent.daemon import app
from agent.plan.table import Table
from agent.sinks import addn_hosts
from agent.sinks.addn_hosts import AddnHostsSink
from agent.sinks.dnsmasq_target import Candidate, SignalResult, reload_dnsmasq


class Fixed:
    def __init__(self, pid: int) -> None:
        self.pid = pid

    def candidates(self) -> list[Candidate]:
        return [Candidate(self.pid, "test")]


def test_pidfd_emfile_is_reported_as_transient(monkeypatch: pytest.MonkeyPatch) -> None:
    def emfile(pid: int) -> int:
        raise OSError(errno.EMFILE, os.strerror(errno.EMFILE))

    monkeypatch.setattr(os, "pidfd_open", emfile)
    result = reload_dnsmasq(Fixed(os.getpid()))
    assert result.sent is False and result.transient is True
    assert "Too many open files" in (result.reason or "")


def test_owed_signal_is_sent_on_the_retry_even_though_the_file_is_unchanged(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    results = [
        SignalResult(7, "test", False, "cannot open pid 7: Too many open files", True),
        SignalResult(7, "test", True, None),
    ]
    calls: list[Any] = []

    def fake_reload(locator: Any, **kw: Any) -> SignalResult:
        calls.append(locator)
        return results[len(calls) - 1]

    monkeypatch.setattr(addn_hosts, "reload_dnsmasq", fake_reload)
    sink = AddnHostsSink(tmp_path / "addn-hosts", Fixed(7))
    table = Table()
    assert sink.apply(table, 0.0) is False  # written, not signalled: the pipeline retries
    assert sink.status.error_active
    assert sink.apply(table, 0.0) is True  # same bytes, but the signal was still owed
    assert len(calls) == 2
    assert sink.status.last_reload is not None and sink.status.last_reload.sent
    assert not sink.status.error_active and sink.status.recovered_at is not None
    assert sink.apply(table, 0.0) is True
    assert len(calls) == 2  # nothing owed any more: no third signal


def test_config_reload_retries_emfile(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = parse_config("[daemon]\ncoalesce_ms = 20\n", "t")
    failures = [OSError(errno.EMFILE, "Too many open files")] * 2

    def flaky_load(path: Path | None, **kw: Any) -> Any:
        if failures:
            raise failures.pop()
        return config

    monkeypatch.setattr(app, "load_config", flaky_load)
    monkeypatch.setattr(app, "RELOAD_RETRY_S", (0.01, 0.01, 0.01))

    async def main() -> Any:
        daemon = app.Daemon(config, tmp_path / "config.toml")
        return await daemon._read_config()

    assert asyncio.run(main()) is config
    assert failures == []
