"""The hosts-file sink against real files: bytes outside the block, markers, bind mounts."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from agent.sinks.hosts_block import BEGIN, END
from tests.harness.agent import Agent, agentctl
from tests.harness.dnsmasq import Dnsmasq
from tests.harness.wait import until

from .conftest import WriteConfig

pytestmark = pytest.mark.integration

USER_BYTES = (b"127.0.0.1\tlocalhost\r\n"
              b"# caf\xe9 \xff\xfe not UTF-8\r\n"
              b"::1 localhost ip6-localhost\r\n")


def test_block_appended_and_updated_outside_bytes_kept(
        public_tmp: Path, agent: Agent, write_config: WriteConfig) -> None:
    hosts = public_tmp / "hosts"
    hosts.write_bytes(USER_BYTES)
    hosts.chmod(0o640)
    write_config({"db.dns.host": ["192.168.122.10", "fd00::10"]})
    agent.start()
    expected = (USER_BYTES + BEGIN + b"\r\n"
                + b"192.168.122.10 db.dns.host\r\nfd00::10 db.dns.host\r\n" + END + b"\r\n")
    assert hosts.read_bytes() == expected
    assert hosts.stat().st_mode & 0o777 == 0o640

    # The user adds lines after the block; the next update keeps them byte for byte.
    tail = b"10.9.9.9 mine\t# no final newline"
    hosts.write_bytes(hosts.read_bytes() + tail)
    write_config({"db.dns.host": ["192.168.122.11"]})
    agent.reload()
    until(lambda: hosts.read_bytes() == USER_BYTES + BEGIN + b"\r\n"
          + b"192.168.122.11 db.dns.host\r\n" + END + b"\r\n" + tail, what="block updated")


def test_malformed_markers_leave_file_untouched_and_are_reported(
        dnsmasq: Dnsmasq, public_tmp: Path, agent: Agent, write_config: WriteConfig) -> None:
    hosts = public_tmp / "hosts"
    broken = b"127.0.0.1 localhost\n" + BEGIN + b"\n10.0.0.1 old.dns.test\n"  # no END
    hosts.write_bytes(broken)
    mtime = hosts.stat().st_mtime_ns
    write_config({"a.dns.test": ["10.0.0.2"]})
    agent.start()
    # The other sink is unaffected: the name is served by dnsmasq.
    until(lambda: dnsmasq.query("a.dns.test").records == ("10.0.0.2",), what="a answers")
    sink = next(s for s in agent.status()["sinks"] if s["kind"] == "hosts_file")
    assert sink["refused"] is not None
    assert "BEGIN at line(s) 2 and END at line(s) none" in sink["refused"]
    assert hosts.read_bytes() == broken
    assert hosts.stat().st_mtime_ns == mtime
    run = agentctl("--socket", str(agent.socket), "status", check=False)
    assert run.returncode == 1  # degraded: a sink refuses its file
    assert f"hosts_file {hosts}: refused: malformed namesync markers" in run.stdout


def test_bind_mounted_hosts_file_is_rewritten_in_place(
        public_tmp: Path, agent: Agent, write_config: WriteConfig) -> None:
    # Like a container's /etc/hosts: rename over a mount point gives EBUSY.
    hosts = public_tmp / "hosts"
    backing = public_tmp / "backing-hosts"
    backing.write_bytes(b"127.0.0.1 localhost\n")
    hosts.write_bytes(b"")
    subprocess.run(["mount", "--bind", str(backing), str(hosts)], check=True)
    try:
        write_config({"db.dns.host": ["192.168.122.10"]})
        agent.start()
        want = b"127.0.0.1 localhost\n" + BEGIN + b"\n192.168.122.10 db.dns.host\n" + END + b"\n"
        assert backing.read_bytes() == want  # written through the mount, not renamed away
        sink = next(s for s in agent.status()["sinks"] if s["kind"] == "hosts_file")
        assert sink["last_write_method"] == "in-place"
        assert not list(public_tmp.glob(".hosts.namesync-*"))
    finally:
        agent.stop()
        subprocess.run(["umount", str(hosts)], check=True)
