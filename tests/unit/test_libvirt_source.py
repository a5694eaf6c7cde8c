"""The libvirt source's event handling, on libvirt's in-process test driver.

``test:///default`` fires real lifecycle events through the asyncio event
loop but has no DHCP (its network runs no dnsmasq): the lease files here are
written by the test, in the format and by the rename libvirt's lease helper
uses. The real thing (libvirtd, LXC guests, leases from dnsmasq) is in
tests/integration/test_libvirt.py.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar

import pytest

from agent.config.schema import LibvirtConfig
from agent.model.record import ObjectState
from agent.sources.libvirt.source import LibvirtSource

libvirt = pytest.importorskip("libvirt")

URI = "test:///default"
MAC = "aa:bb:cc:dd:ee:ff"  # the predefined domain "test", on network "default" (virbr0)
T = TypeVar("T")


class Sink:
    def __init__(self) -> None:
        self.objects: dict[str, ObjectState] = {}
        self.replaced = 0

    def replace(self, source: str, objects: Mapping[str, ObjectState]) -> None:
        self.objects = dict(objects)
        self.replaced += 1

    def update(self, source: str, object_id: str, state: ObjectState | None) -> None:
        raise AssertionError("the libvirt source always replaces its snapshot")

    def names(self) -> dict[str, list[str]]:
        return {r.name: [str(a) for a in r.addresses]
                for s in self.objects.values() for r in s.records}


async def until(probe: Callable[[], T], what: str, within: float = 5.0) -> T:
    deadline = time.monotonic() + within
    while not (value := probe()):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {within}s waiting for {what}; last {value!r}")
        await asyncio.sleep(0.005)
    return value


def write_leases(lease_dir: Path, bridge: str, entries: list[dict[str, Any]] | bytes) -> None:
    """As libvirt's lease helper does: write a new file, rename it over the old one."""
    tmp = lease_dir / f"{bridge}.status.new"
    tmp.write_bytes(entries if isinstance(entries, bytes) else json.dumps(entries).encode())
    os.rename(tmp, lease_dir / f"{bridge}.status")


def lease(ip: str, expiry: float | None = None, hostname: str = "test") -> dict[str, Any]:
    return {"ip-address": ip, "mac-address": MAC, "hostname": hostname,
            "expiry-time": int(expiry if expiry is not None else time.time() + 3600)}


class Running:
    def __init__(self, source: LibvirtSource, sink: Sink, task: asyncio.Task[None]) -> None:
        self.source, self.sink, self.task = source, sink, task


async def start(lease_dir: Path, **kw: Any) -> Running:
    src = LibvirtSource(URI, LibvirtConfig(uris=(URI,), lease_dir=lease_dir, **kw))
    sink = Sink()
    task = asyncio.create_task(src.run(sink))
    await asyncio.wait_for(src.synced.wait(), 5)
    return Running(src, sink, task)


async def stop(r: Running) -> None:
    r.task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(r.task, 2)


async def call(fn: Callable[..., T], *args: Any) -> T:
    return await asyncio.to_thread(fn, *args)


def run(coro_fn: Callable[[], Any]) -> None:
    asyncio.run(coro_fn())


@pytest.fixture
def test_domain() -> Any:
    conn = libvirt.open(URI)
    yield conn.lookupByName("test")
    dom = conn.lookupByName("test")
    if not dom.isActive():
        dom.create()
    conn.close()


def test_lifecycle_events_follow_the_domain_while_its_lease_lingers(
        tmp_path: Path, test_domain: Any) -> None:
    async def body() -> None:
        r = await start(tmp_path)
        assert r.source.health.state == "connected"
        # No lease yet: the address libvirt reports from the host's ARP table (the
        # test driver's is made up), asked when the domain was found running.
        await until(lambda: r.sink.names() == {"test.dns.libvirt": ["192.168.122.3"]}, "ARP")
        write_leases(tmp_path, "virbr0", [lease("192.168.122.5")])
        await until(lambda: r.sink.names() == {"test.dns.libvirt": ["192.168.122.5"]}, "lease")
        await call(test_domain.destroy)
        await until(lambda: r.sink.names() == {}, "names gone on destroy")
        assert (tmp_path / "virbr0.status").exists()  # the lease is still in the file
        await call(test_domain.create)
        await until(lambda: r.sink.names() == {"test.dns.libvirt": ["192.168.122.5"]},
                    "matched by MAC again after restart")
        write_leases(tmp_path, "virbr0", [lease("192.168.122.77")])
        await until(lambda: r.sink.names() == {"test.dns.libvirt": ["192.168.122.77"]},
                    "renewed to a new address")
        await stop(r)
    run(body)


def test_a_corrupt_lease_file_keeps_the_last_good_view(tmp_path: Path, test_domain: Any) -> None:
    async def body() -> None:
        r = await start(tmp_path)
        write_leases(tmp_path, "virbr0", [lease("192.168.122.5")])
        await until(lambda: r.sink.names() == {"test.dns.libvirt": ["192.168.122.5"]}, "lease")
        write_leases(tmp_path, "virbr0", b'[{"ip-address": "192.168.1')
        await until(lambda: "refused" in (r.source.health.last_error or ""), "refusal reported")
        assert "virbr0.status refused (not JSON" in (r.source.health.detail or "")
        assert r.sink.names() == {"test.dns.libvirt": ["192.168.122.5"]}
        write_leases(tmp_path, "virbr0", [lease("192.168.122.6")])
        await until(lambda: r.sink.names() == {"test.dns.libvirt": ["192.168.122.6"]}, "fixed")
        assert "refused" not in (r.source.health.detail or "")
        await stop(r)
    run(body)


def test_a_lease_stops_answering_when_it_expires(tmp_path: Path, test_domain: Any) -> None:
    async def body() -> None:
        r = await start(tmp_path)
        # Expiry times are whole seconds: at least one full second from now.
        write_leases(tmp_path, "virbr0", [lease("192.168.122.5", expiry=time.time() + 1.5)])
        await until(lambda: r.sink.names() == {"test.dns.libvirt": ["192.168.122.5"]}, "lease")
        # ... and the ARP answer from before the lease does not come back.
        await until(lambda: r.sink.names() == {}, "expired without a file change", within=4)
        await stop(r)
    run(body)


def test_the_lease_directory_may_appear_later(tmp_path: Path, test_domain: Any) -> None:
    async def body() -> None:
        lease_dir = tmp_path / "lib" / "dnsmasq"
        r = await start(lease_dir)
        lease_dir.mkdir(parents=True)
        write_leases(lease_dir, "virbr0", [lease("192.168.122.5")])
        await until(lambda: r.sink.names() == {"test.dns.libvirt": ["192.168.122.5"]}, "lease")
        await stop(r)
    run(body)


def test_guest_hostnames_opt_in(tmp_path: Path, test_domain: Any) -> None:
    async def body() -> None:
        r = await start(tmp_path, guest_hostnames=True)
        write_leases(tmp_path, "virbr0", [lease("192.168.122.5", hostname="gateway")])
        await until(lambda: r.sink.names() == {
            "test.dns.libvirt": ["192.168.122.5"],
            "gateway.guest.dns.libvirt": ["192.168.122.5"]}, "guest name in guest zone")
        await stop(r)
    run(body)


def test_unreachable_libvirtd_is_reported_and_ready_anyway(tmp_path: Path) -> None:
    async def body() -> None:
        # A socket that is there but refuses (a stale one): retried with backoff.
        sock = tmp_path / "stale.sock"
        with socket.socket(socket.AF_UNIX) as s:
            s.bind(str(sock))  # bound, never listening: connect() is refused
        uri = f"qemu+unix:///system?socket={sock}"
        src = LibvirtSource(uri, LibvirtConfig(uris=(uri,), lease_dir=tmp_path))
        sink = Sink()
        task = asyncio.create_task(src.run(sink))
        await asyncio.wait_for(src.synced.wait(), 5)
        assert src.health.state == "disconnected"
        assert "reconnecting in" in (src.health.detail or "")
        assert "stale.sock" in (src.health.last_error or "")
        await stop(Running(src, sink, task))
    run(body)


def test_absent_libvirtd_is_awaited_not_polled(tmp_path: Path) -> None:
    async def body() -> None:
        uri = f"qemu+unix:///system?socket={tmp_path}/no-such.sock"
        src = LibvirtSource(uri, LibvirtConfig(uris=(uri,), lease_dir=tmp_path))
        sink = Sink()
        task = asyncio.create_task(src.run(sink))
        await asyncio.wait_for(src.synced.wait(), 5)
        assert src.health.state == "disconnected"
        # Issue 11: no retry timer for a service that is not there at all.
        assert src.health.detail == (
            f"libvirtd's socket {tmp_path}/no-such.sock does not exist; "
            f"waiting for {tmp_path}/no-such.sock to appear")
        assert "no-such.sock" in (src.health.last_error or "")
        await stop(Running(src, sink, task))
    run(body)


def test_socket_candidates() -> None:
    from agent.sources.libvirt.source import socket_candidates
    run_dir = Path("/run/libvirt")
    assert socket_candidates("qemu:///system") == (
        run_dir / "libvirt-sock-ro", run_dir / "virtqemud-sock-ro")
    assert socket_candidates("lxc:///system") == (
        run_dir / "libvirt-sock-ro", run_dir / "virtlxcd-sock-ro")
    assert socket_candidates("qemu+unix:///system?socket=/x/y.sock") == (Path("/x/y.sock"),)
    assert socket_candidates("qemu:///session", {}) == ()  # autostarts its daemon
    user = {"XDG_RUNTIME_DIR": "/run/user/1000", "LIBVIRT_AUTOSTART": "0"}  # the user unit
    assert socket_candidates("qemu:///session", user) == (
        Path("/run/user/1000/libvirt/libvirt-sock"), Path("/run/user/1000/libvirt/virtqemud-sock"))
    assert socket_candidates("qemu+ssh://host/system") == ()
    assert socket_candidates("test:///default") == ()



def test_keepalive_probes_only_where_a_broken_connection_gives_no_eof() -> None:
    """Local sockets close with EOF when the daemon dies (test_libvirt's kill test sees
    the close callback fire without any probe); remote transports may not."""
    from agent.sources.libvirt.source import uses_keepalive
    for local in ("qemu:///system", "lxc:///system", "qemu:///session",
                  "qemu+unix:///system?socket=/x/y.sock", "test:///default"):
        assert not uses_keepalive(local), local
    for remote in ("qemu+ssh://host/system", "qemu+tls://host/system", "qemu://host/system",
                   "qemu+tcp://host/system", "qemu+libssh2://u@h/system", "qemu+ext:///system"):
        assert uses_keepalive(remote), remote
