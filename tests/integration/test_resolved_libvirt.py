"""A VM on the systemd-resolved path: an LXC guest asks libvirt's dnsmasq, which forwards
namesync's zones to resolved's stub (contrib/libvirt/network-dns-forwarders.xml as
shipped), which routes them to namesync's dnsmasq on namesync0.

libvirtd runs in the test session's network namespace (tests/harness/libvirt), so here
systemd-resolved, the upstream and namesync-agent run there too (``SessionNS``), not in
a netns of their own; each is stopped by its pid, and namesync0 goes with the agent.
"""

from __future__ import annotations

import os
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from agent.config.schema import DnsmasqConfig
from tests.harness.agent import toml_config
from tests.harness.dns import dig
from tests.harness.libvirt import Libvirtd
from tests.harness.libvirt.network import Network
from tests.harness.proc import terminate
from tests.harness.resolved import NetnsAgent, Resolved
from tests.harness.rootfs import build as build_rootfs
from tests.harness.wait import until

pytestmark = [pytest.mark.integration, pytest.mark.resolved, pytest.mark.libvirt]

CONTRIB = Path(__file__).parents[2] / "contrib" / "libvirt" / "network-dns-forwarders.xml"
UPSTREAM, UPSTREAM_PORT = "127.0.0.9", 5300


class SessionNS:
    """The session's own network namespace, shaped like a NetNS for the harness."""

    name = "session"

    @property
    def path(self) -> Path:
        return Path(f"/proc/{os.getpid()}/ns/net")

    def exec_argv(self, *argv: str) -> list[str]:
        return list(argv)

    def ip(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["ip", *args], check=check, capture_output=True, text=True,
                              timeout=30)


class ForwardingNetwork(Network):
    @property
    def xml(self) -> str:
        dns = re.sub(r"<!--.*?-->", "", CONTRIB.read_text(), flags=re.S).strip()
        base = super().xml
        return base.replace("</network>", f"  {dns}\n</network>")


@pytest.fixture
def session_resolved(public_tmp: Path) -> Iterator[Resolved]:
    up = subprocess.Popen([
        "dnsmasq", "--keep-in-foreground", "--conf-file=/dev/null", "--no-resolv",
        "--no-hosts", "--bind-interfaces", f"--listen-address={UPSTREAM}",
        f"--port={UPSTREAM_PORT}", f"--pid-file={public_tmp / 'upstream.pid'}",
        "--address=/up.example/192.0.2.99"])
    r = Resolved(public_tmp / "resolved", build_rootfs(), SessionNS(),  # type: ignore[arg-type]
                 upstream=f"{UPSTREAM}:{UPSTREAM_PORT}")
    try:
        yield r.start()
    finally:
        r.stop()
        terminate(up)


def test_lxc_guest_resolves_through_resolved(libvirtd: Libvirtd, session_resolved: Resolved,
                                             public_tmp: Path) -> None:
    agent = NetnsAgent(public_tmp / "agent", SessionNS(),  # type: ignore[arg-type]
                       {"DBUS_SYSTEM_BUS_ADDRESS": session_resolved.bus_address})
    try:
        net = libvirtd.network(persistent=False, start=False)
        net.__class__ = ForwardingNetwork
        net.start()
        agent.set_config(toml_config(
            socket=agent.socket, addn_hosts=public_tmp / "names" / "addn-hosts",
            pid_file=DnsmasqConfig.pid_file, hosts_file=None, coalesce_ms=0,
            static={"web.dns.podman": ["10.89.0.5"]},
            host=f'name = "host.dns.host"\ninterfaces = ["{net.bridge}"]',
            libvirt='uris = ["lxc:///system"]',
            resolved="enabled = true\ncontainers = false"))
        agent.start()
        until(lambda: (agent.status()["dns_path"]["route"] or {}).get("registered"),
              timeout=20, what="zones registered with systemd-resolved")
        guest = libvirtd.guest("vmres", [net])
        vm_ip = guest.wait_for_lease()

        def ask(name: str) -> Any:
            return guest.exec("nslookup", name, net.gateway, check=False).stdout

        # libvirt's dnsmasq -> 127.0.0.53 (resolved) -> namesync0 -> namesync's dnsmasq.
        out = until(lambda: "10.89.0.5" in (o := ask("web.dns.podman")) and o, timeout=10,
                    what="the guest's answer")
        assert "10.89.0.5" in out
        # The matrix from inside the guest: the host, the VM itself, a container's name.
        assert net.gateway in ask("host.dns.host")
        assert until(lambda: vm_ip in ask("vmres.dns.libvirt"), timeout=10,
                     what="the VM's own name")
        # And the host itself, through the stub.
        assert dig("web.dns.podman", server="127.0.0.53").records == ("10.89.0.5",)
    finally:
        agent.stop()
