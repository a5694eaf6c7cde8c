"""Releasing the libvirt connection while idle: which files, and when not.

The source runs on libvirt's in-process test driver (see test_libvirt_source.py),
which writes no files: the directories it "writes" are the test's, and a file
written there plays libvirt's status file. The real libvirtd is in
tests/integration/test_libvirt_release.py.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from agent.sources.libvirt import source as source_module
from agent.sources.libvirt.release import Watched, release_dirs
from tests.unit import test_libvirt_source as base
from tests.unit.test_libvirt_source import call, lease, run, start, stop, until, write_leases

libvirt = pytest.importorskip("libvirt")
test_domain = base.test_domain  # the fixture: test:///default's domain "test", restarted after


def test_the_files_follow_the_uri() -> None:
    assert release_dirs("lxc:///system") == Watched((
        Path("/run/libvirt/lxc"), Path("/etc/libvirt/lxc"),
        Path("/run/libvirt/network"), Path("/etc/libvirt/qemu/networks")))
    assert release_dirs("qemu:///system").dirs[:2] == (
        Path("/run/libvirt/qemu"), Path("/etc/libvirt/qemu"))
    env = {"XDG_RUNTIME_DIR": "/run/user/1000", "HOME": "/home/u"}
    assert release_dirs("qemu:///session", env) == Watched((
        Path("/run/user/1000/libvirt/qemu/run"), Path("/home/u/.config/libvirt/qemu"),
        Path("/run/user/1000/libvirt/network/lib"),
        Path("/home/u/.config/libvirt/qemu/networks")))
    # Without XDG_RUNTIME_DIR libvirt uses its cache directory; XDG_CONFIG_HOME wins.
    env = {"HOME": "/home/u", "XDG_CONFIG_HOME": "/cfg"}
    assert release_dirs("qemu:///session", env).dirs[:2] == (
        Path("/home/u/.cache/libvirt/qemu/run"), Path("/cfg/libvirt/qemu"))
    assert release_dirs("qemu:///session", {}).why_not == (
        "no XDG_RUNTIME_DIR or HOME to find the session's files")
    for uri, why in [
        ("qemu+ssh://host/system", "a remote connection (its files are on another host)"),
        ("qemu+tcp:///system", "a remote connection (its files are on another host)"),
        ("qemu:///system?socket=/tmp/s", "a daemon on a socket of its own (its files are "
                                         "not known)"),
        ("test:///default", "the test driver (which files it writes is not known)"),
        ("xen:///system", "the xen driver (which files it writes is not known)"),
        ("lxc:///session", "lxc:///session (which files it writes is not known)"),
    ]:
        assert release_dirs(uri) == Watched(why_not=why), uri


def test_a_probed_domain_keeps_the_connection_a_leased_one_lets_go_and_a_file_wakes_it(
        tmp_path: Path, test_domain: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    state = tmp_path / "run"
    state.mkdir()
    monkeypatch.setattr(source_module, "release_dirs", lambda uri: Watched((state,)))

    async def body() -> None:
        r = await start(tmp_path, release_idle_s=1)
        src = r.source
        # Running with no lease: its address comes from probing, which no file
        # announces, so the quiet spell ends without a release (and says why).
        await until(lambda: "kept connected while idle" in (src.health.detail or ""), "kept")
        assert src.health.state == "connected"
        assert ("kept connected while idle: test: addresses from interfaceAddresses(), "
                "whose changes no file shows") in (src.health.detail or "")
        # Its lease arrives: nothing needs the connection any more.
        write_leases(tmp_path, "virbr0", [lease("192.168.122.5")])
        await until(lambda: src.health.state == "released", "released", within=8)
        assert "kept connected" not in (src.health.detail or "")
        assert r.sink.names() == {"test.dns.libvirt": ["192.168.122.5"]}
        # Destroyed while released: the test driver writes no file, so nothing
        # is noticed (yet): the names stay as last listed.
        await call(test_domain.destroy)
        await asyncio.sleep(0.2)
        assert r.sink.names() == {"test.dns.libvirt": ["192.168.122.5"]}
        # libvirt's status file going away wakes it; the resync drops the name.
        (state / "test.xml").write_text("<domstatus/>")
        await until(lambda: r.sink.names() == {}, "the resync after the wake")
        await stop(r)

    run(body)


def test_zero_never_releases(tmp_path: Path, test_domain: Any,
                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(source_module, "release_dirs", lambda uri: Watched((tmp_path,)))

    async def body() -> None:
        r = await start(tmp_path, release_idle_s=0)
        write_leases(tmp_path, "virbr0", [lease("192.168.122.5")])
        await until(lambda: r.sink.names() == {"test.dns.libvirt": ["192.168.122.5"]}, "lease")
        await asyncio.sleep(1.5)  # longer than any quiet spell: still connected
        assert r.source.health.state == "connected"
        assert "kept" not in (r.source.health.detail or "")
        await stop(r)

    run(body)


def test_a_user_mode_nic_needs_no_probe_so_its_vm_lets_the_connection_go() -> None:
    # What a user-mode (slirp/passt) VM publishes comes from its forwards; a probe
    # would only find the guest's inner address. Such a VM (GNOME Boxes' default)
    # must not keep the connection, and libvirtd's pings, for as long as it runs.
    from agent.sources.libvirt.domain_xml import Domain, Nic
    from agent.sources.libvirt.records import needs_probe

    user = Nic(0, "52:54:00:00:00:01", "user", None, None, None, ("tcp 0.0.0.0:2222->22",))
    bridged = Nic(1, "52:54:00:00:00:02", "bridge", None, "br0", None)
    assert not needs_probe(Domain("u", "boxes", True, (user,)), {}, frozenset())
    assert needs_probe(Domain("b", "static", True, (bridged,)), {}, frozenset())
    assert not needs_probe(Domain("b", "static", True, (bridged,)), {},
                           frozenset({("br0", "52:54:00:00:00:02")}))


def test_only_libvirts_xml_files_and_a_crashed_daemon_wake_a_released_source(
        tmp_path: Path) -> None:
    # A socket-activated libvirtd exits on its own once no client holds it: it removes
    # driver.pid and closes other files. Woken by those, a released source would start
    # it again for ever. A crash leaves driver.pid behind, closed by the kernel.
    from agent.sources.libvirt.release import libvirt_change

    pid = tmp_path / "driver.pid"
    assert libvirt_change(tmp_path / "vm1.xml", closed=False)
    assert not libvirt_change(tmp_path / "vm1.xml.new", closed=True)
    assert not libvirt_change(tmp_path / "nwfilter.leases", closed=True)
    assert not libvirt_change(pid, closed=True)  # removed, then closed: a clean exit
    pid.write_text("123")
    assert libvirt_change(pid, closed=True)  # closed and still there: it died
    assert not libvirt_change(pid, closed=False)  # written at a start
