"""A hosts file on a full filesystem, rewritten in place (issue 10, defects 1 and 14).

Real parts: a tiny tmpfs (size=64k) holding the hosts file, bind-mounted over
the path namesync is configured with (as a container's /etc/hosts is), so the
rename gives EBUSY and namesync rewrites in place; the filesystem is filled
up with a real file. The block grows past the last free byte: the write must
fail with nothing lost (exact bytes), be reported, and be repaired by itself
once space returns, and status must then show the error as past.
"""

from __future__ import annotations

import errno
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.sinks.hosts_block import BEGIN, END
from tests.harness.agent import Agent, agentctl
from tests.harness.dnsmasq import Dnsmasq
from tests.harness.wait import until

from .conftest import WriteConfig

pytestmark = pytest.mark.integration

# The user's lines before and after the block, ~3.9 KB in all: the first write
# still fits the file's last page, the grown block does not.
HEAD = b"127.0.0.1\tlocalhost\n" + b"".join(
    b"10.1.%d.%d\tuser-host-%03d.example\n" % (i // 200, i % 200, i) for i in range(90))
TAIL = b"# the user's lines after the block\n" + b"".join(
    b"10.2.0.%d\ttail-%02d.example\n" % (i, i) for i in range(30))


def block(names: dict[str, list[str]]) -> bytes:
    body = b"".join(f"{a} {n}\n".encode() for n, addrs in names.items() for a in addrs)
    return BEGIN + b"\n" + body + END + b"\n"


def fill(directory: Path) -> Path:
    """Fill the filesystem with a real file until it refuses another byte."""
    filler = directory / "filler"
    with filler.open("wb", buffering=0) as f:
        try:
            while True:
                f.write(b"\0" * 4096)
        except OSError as e:
            assert e.errno == errno.ENOSPC
        try:
            while True:
                f.write(b"\0")
        except OSError as e:
            assert e.errno == errno.ENOSPC
    return filler


@pytest.fixture
def small_fs(public_tmp: Path) -> Iterator[tuple[Path, Path]]:
    """(hosts path namesync is given, the backing file on the tiny tmpfs)."""
    mnt = public_tmp / "small"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k,mode=0755", "namesync-full", str(mnt)],
                   check=True)
    hosts = public_tmp / "hosts"
    hosts.write_bytes(b"")
    backing = mnt / "hosts"
    backing.write_bytes(b"")
    subprocess.run(["mount", "--bind", str(backing), str(hosts)], check=True)
    try:
        yield hosts, backing
    finally:
        subprocess.run(["umount", str(hosts)], check=False)
        subprocess.run(["umount", str(mnt)], check=False)


def hosts_sink(agent: Agent) -> dict[str, object]:
    sink: dict[str, object] = next(
        s for s in agent.status()["sinks"] if s["kind"] == "hosts_file")
    return sink


def test_full_disk_in_place_rewrite_loses_nothing_and_repairs_itself(
        dnsmasq: Dnsmasq, agent: Agent, write_config: WriteConfig,
        small_fs: tuple[Path, Path]) -> None:
    hosts, backing = small_fs
    assert hosts.parent / "hosts" == hosts
    small = {"db.dns.test": ["10.0.0.1"]}
    backing.write_bytes(HEAD + block({}) + TAIL)  # where the user put the (empty) block
    write_config(small)  # its hosts file is public_tmp/hosts: the bind mount
    agent.start()
    first = HEAD + block(small) + TAIL
    assert backing.read_bytes() == first
    assert len(first) < 4096  # one page: growing past it needs a block the fs no longer has
    assert hosts_sink(agent)["last_write_method"] == "in-place"
    filler = fill(backing.parent)

    big = {f"vm{i:02d}.dns.test": [f"10.0.1.{i}"] for i in range(60)}
    write_config(big)
    agent.reload()
    # The other sink goes on: dnsmasq answers the new names.
    until(lambda: dnsmasq.query("vm59.dns.test").records == ("10.0.1.59",), what="dnsmasq")
    sink = until(lambda: (s := hosts_sink(agent))["error_active"] and s, what="write error")
    assert "No space left on device" in str(sink["last_error"])
    assert sink["recovered_at"] is None
    # Exactly the old file: the user's lines after the block, the END marker, all of it.
    assert backing.read_bytes() == first

    filler.unlink()  # space returns: the retry (1 s, doubling) repairs the file by itself
    want = HEAD + block(big) + TAIL
    until(lambda: backing.read_bytes() == want, timeout=20, what="the file repaired")
    sink = until(lambda: (s := hosts_sink(agent))["recovered_at"] and s, what="recovered")
    assert sink["error_active"] is False
    assert "No space left on device" in str(sink["last_error"])  # kept, as history
    assert str(sink["recovered_at"]) > str(sink["last_error_at"])
    human = agentctl("--socket", str(agent.socket), "status", check=False).stdout
    assert "(recovered " in human and "No space left on device" in human
