"""systemd-resolved's static records (static.d/*.rr) under a real systemd 262 (Debian sid).

One container for the module: the sid rootfs (tests/harness/rootfs.SID_IMAGE,
cached; systemd >= 258 needs the unified cgroup hierarchy), booted with
systemd-nspawn, namesync installed from the RPM built here
(tests/harness/installed.py) and run by its unit, with the routing path off
(a host without dnsmasq: ``[dnsmasq] enabled = false``), so the static records
are the path. What a
user relies on, asked the way a user asks (``resolvectl query``, which goes
through resolved's varlink API like nss-resolve): a published name answers,
a changed name answers its new address on the first query after
``systemctl reload namesync`` returns (well inside resolved's own 2 s
re-check: namesync's SIGHUP makes it re-read at once), a removed name is
gone at once, AAAA of an IPv4-only name is NODATA, and stopping namesync
takes the file away and puts the names back into /etc/hosts.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.harness import installed, nspawn, rootfs
from tests.harness import rpm as rpmh
from tests.harness.wait import until

pytestmark = [pytest.mark.integration, pytest.mark.systemd]

RR_FILE = "/run/systemd/resolve/static.d/namesync.rr"
# A host with systemd-resolved and no dnsmasq, NetworkManager, libvirt or Podman:
# no routing path possible, what makes namesync choose the static records.
CONFIG = """\
[daemon]
log_level = "debug"
[dnsmasq]
enabled = false
local_zones = ["dns.test"]
[networkmanager]
enabled = false
[host]
enabled = false
[libvirt]
enabled = false
[podman]
enabled = false
"""


def static(names: dict[str, list[str]]) -> str:
    return "".join(f'[[static]]\nname = "{n}"\naddresses = {json.dumps(a)}\n'
                   for n, a in names.items())


@dataclass
class Sid:
    c: nspawn.Container

    def query(self, name: str, *args: str) -> str:
        r = self.c.run("resolvectl", "query", "--legend=no", *args, name, check=False)
        return (r.stdout + r.stderr).strip()

    def configure(self, names: dict[str, list[str]]) -> None:
        self.c.write("/etc/namesync/config.toml", CONFIG + static(names))

    def status(self) -> dict[str, Any]:
        out = self.c.run("agentctl", "status", "--json", check=False).stdout
        return dict(json.loads(out))


@pytest.fixture(scope="module")
def sid(rpm_build: rpmh.Build, dependency_rpms: dict[str, Path],
        tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sid]:
    for why in (rootfs.unavailable(), nspawn.unavailable()):
        if why:
            pytest.skip(why)
    c = installed.container_with_rpms(
        rootfs.build(rootfs.SID_IMAGE), (rpm_build.rpms["namesync"], *dependency_rpms.values()),
        tmp_path_factory.mktemp("payload"), tmp_path_factory.mktemp("nspawn"), unified=True)
    c.boot()
    try:
        version = c.run("/usr/lib/systemd/systemd-resolved", "--version").stdout.split()[1]
        assert int(version) >= 261, f"the sid image has systemd {version}, not >= 261"
        installed.install(c, rpm_build.rpms["namesync"], from_image=["dbus-fast"], packaged=[
            name.removeprefix("python3-") for name in dependency_rpms])
        s = Sid(c)
        s.configure({"web.dns.test": ["10.1.0.1"]})
        c.run("systemctl", "restart", "namesync.service")
        yield s
    finally:
        c.stop()


def test_names_are_served_as_static_records(sid: Sid) -> None:
    path = sid.status()["dns_path"]
    assert path["path"] == "systemd-resolved-static-records", path
    assert path["static_records"]["version"] >= 261 and path["static_records"]["serving"]
    assert sid.query("web.dns.test") == "web.dns.test: 10.1.0.1"
    text = sid.c.run("agentctl", "status", check=False).stdout
    assert "path      systemd-resolved-static-records: systemd-resolved 26" in text, text
    assert sid.c.host_path(RR_FILE).read_bytes() == (
        b'[\n{"key":{"name":"web.dns.test","type":1},"address":[10,1,0,1]}\n]\n')
    # resolved reads /etc/hosts first and only every 2 s: the name must not be there too.
    assert "web.dns.test" not in sid.c.host_path("/etc/hosts").read_text()
    # An IPv4-only name: AAAA is NODATA (the name exists), not NXDOMAIN.
    assert "does not have any RR of the requested type" in sid.query("web.dns.test",
                                                                      "-t", "AAAA")


def test_change_and_removal_answer_on_the_first_query(sid: Sid) -> None:
    sid.configure({"web.dns.test": ["10.1.0.1"], "db.dns.test": ["10.1.0.7"]})
    sid.c.run("systemctl", "reload", "namesync.service")
    assert sid.query("db.dns.test") == "db.dns.test: 10.1.0.7"
    # resolved has just read static.d (the query above): without a signal it would
    # answer the old address for up to 2 s more.
    sid.configure({"web.dns.test": ["10.1.0.2"]})
    t0 = time.monotonic()
    sid.c.run("systemctl", "reload", "namesync.service")
    reloaded = time.monotonic()
    assert sid.query("web.dns.test") == "web.dns.test: 10.1.0.2"
    answered = time.monotonic()
    removed = sid.query("db.dns.test")
    assert "10.1.0.7" not in removed and "resolve call failed" in removed, removed
    sink = next(s for s in sid.status()["sinks"] if s["kind"] == "static_records")
    reload = sink["last_reload"]
    assert reload["signalled"], reload
    print(f"\nstatic records: systemctl reload namesync {1000 * (reloaded - t0):.0f} ms, "
          f"then the first resolvectl query {1000 * (answered - reloaded):.0f} ms "
          f"(already the new address); change -> SIGHUP inside namesync "
          f"{reload['latency_ms']:.1f} ms")


def test_resolved_restarted_gets_the_signals_at_its_new_pid(sid: Sid) -> None:
    sid.configure({"web.dns.test": ["10.1.0.1"]})
    sid.c.run("systemctl", "reload", "namesync.service")
    sid.c.run("systemctl", "restart", "systemd-resolved.service")
    new_pid = int(sid.c.run("systemctl", "show", "-p", "MainPID", "--value",
                            "systemd-resolved.service").stdout)
    assert sid.query("web.dns.test") == "web.dns.test: 10.1.0.1"  # read again at its start
    until(lambda: sid.status()["dns_path"]["static_records"]["pid"] == new_pid,
          timeout=10, what="namesync following resolved's new pid")
    sid.configure({"web.dns.test": ["10.1.0.3"]})
    sid.c.run("systemctl", "reload", "namesync.service")
    assert sid.query("web.dns.test") == "web.dns.test: 10.1.0.3"


def test_stop_removes_the_file_and_returns_the_names_to_etc_hosts(sid: Sid) -> None:
    sid.configure({"web.dns.test": ["10.1.0.1"]})
    sid.c.run("systemctl", "reload", "namesync.service")
    sid.c.run("systemctl", "stop", "namesync.service")
    try:
        assert not sid.c.host_path(RR_FILE).exists()
        assert "10.1.0.1 web.dns.test" in sid.c.host_path("/etc/hosts").read_text()
    finally:
        sid.c.run("systemctl", "start", "namesync.service")
    assert sid.query("web.dns.test") == "web.dns.test: 10.1.0.1"
