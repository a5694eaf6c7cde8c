"""The static records sink: the exact .rr bytes, when it writes, removes and signals.

Real systemd-resolved 262 reading these files is tests/system/test_static_records.py;
here the sink's decisions are checked with a recorded signal function (a unit: no
resolved can be made to refuse a signal or vanish on demand).
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import pytest

from agent.config.schema import Config, DnsmasqConfig
from agent.model.record import Provenance, Record, parse_address
from agent.plan.table import Table
from agent.resolvers.path import DnsPath, StaticRecordsProbe, choose_path
from agent.resolvers.resolved import ResolvedState
from agent.resolvers.resolved_version import parse_version, resolved_version
from agent.sinks.static_rr import StaticRecordsSink, render_rr, why_not_resolved

P = Provenance("static", "x", "static")


def table(**names: list[str]) -> Table:
    return Table(entries={n.replace("_", "."): Record(n.replace("_", "."),
                                                      tuple(parse_address(a) for a in addrs), P)
                          for n, addrs in names.items()})


def test_render_is_systemd_rr_json_one_object_per_address() -> None:
    data = render_rr(table(web_dns_test=["10.1.0.1", "fd00::1"], a_dns_test=["192.0.2.1"]))
    assert data == (
        b'[\n{"key":{"name":"a.dns.test","type":1},"address":[192,0,2,1]},\n'
        b'{"key":{"name":"web.dns.test","type":1},"address":[10,1,0,1]},\n'
        b'{"key":{"name":"web.dns.test","type":28},"address":'
        b'[253,0,0,0,0,0,0,0,0,0,0,0,0,0,0,1]}\n]\n')
    assert len(json.loads(data)) == 3
    assert render_rr(Table()) == b"[]\n"


class Target:
    def __init__(self) -> None:
        self.serving = True
        self.pid: int | None = 4242

    def static_records_serving(self) -> bool:
        return self.serving

    def resolved_pid(self) -> int | None:
        return self.pid


def test_sink_writes_signals_skips_unchanged_and_removes_when_not_serving(tmp_path: Path) -> None:
    sent: list[int | None] = []

    def record(pid: int | None) -> tuple[bool, str | None, bool]:
        sent.append(pid)
        return True, None, False

    target = Target()
    path = tmp_path / "static.d" / "namesync.rr"
    sink = StaticRecordsSink(path, target, record)
    t = table(web_dns_test=["10.1.0.1"])
    assert sink.apply(t, 0.0)
    assert path.read_bytes() == render_rr(t) and sent == [4242]
    assert os.stat(path).st_mode & 0o777 == 0o644
    assert sink.apply(t, 0.0) and sent == [4242]  # same bytes: no write, no signal
    assert sink.status.unchanged == 1
    target.serving = False
    assert sink.apply(t, 0.0)
    assert not path.exists() and sent == [4242, 4242]
    assert sink.apply(t, 0.0) and sent == [4242, 4242]  # nothing there, nothing to do


def test_a_transient_signal_failure_is_retried_until_sent(tmp_path: Path) -> None:
    results = [(False, "cannot open pid 4242: Too many open files", True), (True, None, False)]
    sink = StaticRecordsSink(tmp_path / "namesync.rr", Target(), lambda pid: results.pop(0))
    t = table(web_dns_test=["10.1.0.1"])
    assert not sink.apply(t, 0.0) and sink.status.error_active
    assert sink.apply(t, 0.0) and not sink.status.error_active  # owed signal, same bytes
    assert results == []


def test_only_systemd_resolved_is_signalled(tmp_path: Path) -> None:
    def fake(pid: int, comm: str, uid: int, state: str = "S") -> None:
        d = tmp_path / str(pid)
        d.mkdir()
        (d / "comm").write_text(comm + "\n")
        (d / "stat").write_text(f"{pid} ({comm}) {state} 1 1")
        (d / "status").write_text(f"Name:\t{comm}\nUid:\t{uid}\t{uid}\t{uid}\t{uid}\n")

    fake(10, "systemd-resolve", 0)
    fake(11, "dnsmasq", 0)
    fake(12, "systemd-resolve", 4321)  # a user's process named like resolved
    fake(13, "systemd-resolve", 0, "Z")
    assert why_not_resolved(10, tmp_path) is None
    assert "not systemd-resolved" in (why_not_resolved(11, tmp_path) or "")
    assert "runs as uid" in (why_not_resolved(12, tmp_path) or "")
    assert "zombie" in (why_not_resolved(13, tmp_path) or "")
    assert "not running" in (why_not_resolved(14, tmp_path) or "")


def test_version_probe(tmp_path: Path) -> None:
    assert parse_version(b"systemd 262 (262.1-1)\n+PAM +AUDIT") == 262
    assert parse_version(b"systemd 252 (252.39-1~deb12u2)\n") == 252
    assert parse_version(b"garbage") is None
    fake = tmp_path / "systemd-resolved"
    fake.write_text("#!/bin/sh\necho 'systemd 261 (261)'\n")
    fake.chmod(0o755)
    assert resolved_version((str(tmp_path / "absent"), str(fake)))[0] == 261
    assert resolved_version((str(tmp_path / "absent"),))[0] is None


UP = ResolvedState(bus="connected", running=True, owner=":1.7")
V262 = StaticRecordsProbe(262, "test", 22, ":1.7")
V252 = StaticRecordsProbe(252, "test", 22, ":1.7")


NO_DNSMASQ = Config(dnsmasq=DnsmasqConfig(enabled=False))


def resolved_keys(config: Config = Config(), **keys: object) -> Config:  # noqa: B008
    return dataclasses.replace(config, resolved=dataclasses.replace(config.resolved, **keys))


@pytest.mark.parametrize(("config", "probe", "want"), [
    # the routing path stays the default: static records answer only what is in them
    (Config(), V262, DnsPath.RESOLVED),
    (NO_DNSMASQ, V262, DnsPath.STATIC_RECORDS),
    (NO_DNSMASQ, V252, DnsPath.HOSTS),
    (resolved_keys(static_records="prefer"), V262, DnsPath.STATIC_RECORDS),
    (resolved_keys(static_records="prefer"), V252, DnsPath.RESOLVED),
    (resolved_keys(NO_DNSMASQ, static_records="no"), V262, DnsPath.HOSTS),
    # enabled = false: hands off resolved (the quick start relies on it)
    (resolved_keys(NO_DNSMASQ, enabled=False), V262, DnsPath.HOSTS),
    (resolved_keys(enabled=False, static_records="prefer"), V262, DnsPath.HOSTS),
])
def test_static_records_chosen_only_where_available_and_the_route_is_off(
        config: Config, probe: StaticRecordsProbe, want: DnsPath) -> None:
    choice = choose_path(config, None, UP, probe)
    assert choice.path == want, choice
    assert choose_path(config, None, ResolvedState(bus="connected"), probe).path != (
        DnsPath.STATIC_RECORDS)  # resolved not on the bus


@pytest.mark.timeout(10)  # the old read opened a FIFO for blocking and hung here
@pytest.mark.parametrize("kind", ["fifo", "symlink", "directory-symlink"])
def test_something_else_at_the_path_is_replaced_never_followed_or_opened(
        tmp_path: Path, kind: str) -> None:
    path = tmp_path / "static.d" / "namesync.rr"
    path.parent.mkdir()
    victim = tmp_path / "victim"
    if kind == "fifo":
        os.mkfifo(path)
    elif kind == "symlink":
        victim.write_bytes(b"precious\n")
        path.symlink_to(victim)
    else:
        victim.mkdir()
        path.symlink_to(victim)
    sink = StaticRecordsSink(path, Target(), lambda pid: (True, None, False))
    t = table(web_dns_test=["10.1.0.1"])
    assert sink.apply(t, 0.0)
    assert not path.is_symlink() and path.read_bytes() == render_rr(t)
    if kind == "symlink":
        assert victim.read_bytes() == b"precious\n"


def test_a_symlinked_static_d_is_refused_and_nothing_written_through_it(tmp_path: Path) -> None:
    elsewhere = tmp_path / "etc"
    elsewhere.mkdir()
    (tmp_path / "static.d").symlink_to(elsewhere)
    path = tmp_path / "static.d" / "namesync.rr"
    sink = StaticRecordsSink(path, Target(), lambda pid: (True, None, False))
    assert not sink.apply(table(web_dns_test=["10.1.0.1"]), 0.0)
    assert list(elsewhere.iterdir()) == []
    assert "symlink" in (sink.status.last_error or "")
