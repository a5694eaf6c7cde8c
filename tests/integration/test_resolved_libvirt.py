"""A VM on the systemd-resolved path: an LXC guest asks libvirt's dnsmasq, which forwards
namesync's zones to resolved's stub (contrib/libvirt/network-dns-forwarders.xml as
shipped), which routes them to namesync's dnsmasq on namesync0.

libvirtd runs in the test session's network namespace (tests/harness/libvirt), so here
systemd-resolved, the upstream and namesync-agent run there too (``SessionNS``), not in
a netns of their own; each is stopped by its pid, and namesync0 goes with the agent.
"""

from __future__ import annotations

import contextlib
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from agent.config.schema import DnsmasqConfig
from agent.resolvers.route import NM_DNSMASQ_ADDRESS
from tests.harness.agent import agentctl, toml_config
from tests.harness.dns import dig
from tests.harness.libvirt import Libvirtd
from tests.harness.libvirt.network import Network
from tests.harness.nm import SessionNetworkManager, SessionNS
from tests.harness.podman import AARDVARK_DIR, IMAGE, Podman
from tests.harness.proc import terminate
from tests.harness.resolved import NetnsAgent, Resolved
from tests.harness.rootfs import build as build_rootfs
from tests.harness.wait import until

pytestmark = [pytest.mark.integration, pytest.mark.resolved, pytest.mark.libvirt]

CONTRIB = Path(__file__).parents[2] / "contrib" / "libvirt" / "network-dns-forwarders.xml"
UPSTREAM, UPSTREAM_PORT = "127.0.0.9", 5300


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


class NMForwardingNetwork(Network):
    """contrib/libvirt/network-dns-forwarders.xml with its NM dns=dnsmasq address."""

    @property
    def xml(self) -> str:
        dns = re.sub(r"<!--.*?-->", "", CONTRIB.read_text(), flags=re.S).strip()
        return super().xml.replace("</network>", "  " + dns.replace(
            "addr='127.0.0.53'", f"addr='{NM_DNSMASQ_ADDRESS}'") + "\n</network>")


def _sys_mount_options() -> str:
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        fields = line.split()
        if fields[4] == "/sys":
            return fields[5]
    raise AssertionError("no /sys in the session's mount table")


def use_dns_servers(podman: Podman, dropin: str) -> None:
    # CONTAINERS_CONF names one file (drop-in dirs are not read then): merge the line in.
    line = next(ln for ln in dropin.splitlines() if ln.startswith("dns_servers"))
    podman.conf.write_text(podman.conf.read_text().replace("[containers]\n",
                                                           f"[containers]\n{line}\n", 1))


@pytest.mark.podman
@pytest.mark.networkmanager
@pytest.mark.timeout(300)
def test_matrix_on_the_nm_dnsmasq_path(libvirtd: Libvirtd, public_tmp: Path) -> None:
    """NetworkManager in dns=dnsmasq mode, beside libvirtd in the session's netns: from the
    host, from an LXC guest (libvirt's dnsmasq -> 127.0.0.1, NM's dnsmasq), from a rootful
    container on the default `podman` network and one on a DNS-enabled network (both via
    setup's containers.conf drop-in: namesync's forwarder on 198.18.53.53 -> NM's dnsmasq),
    host.dns.host, <vm>.dns.libvirt and <ctr>.dns.podman all answer, each from its real
    source (netlink, libvirt lease, Podman)."""
    nm = SessionNetworkManager(public_tmp / "nm")
    agent = NetnsAgent(public_tmp / "agent", SessionNS(),  # type: ignore[arg-type]
                       {"DBUS_SYSTEM_BUS_ADDRESS": nm.bus_address})
    podman = Podman(public_tmp / "podman")
    with contextlib.ExitStack() as stops:
        stops.callback(nm.stop)
        stops.callback(agent.stop)
        stops.callback(podman.teardown)
        nm.start()
        net = libvirtd.network(persistent=False, start=False)
        net.__class__ = NMForwardingNetwork
        net.start()
        podman.setup().start_service()
        podman.network_create("dnsnet", "10.89.62.0/24")
        agent.set_config(toml_config(
            socket=agent.socket, addn_hosts=public_tmp / "names" / "addn-hosts",
            pid_file=nm.pid_file, hosts_file=None, coalesce_ms=0,
            host=f'name = "host.dns.host"\ninterfaces = ["{net.bridge}"]',
            libvirt='uris = ["lxc:///system"]',
            podman=f'socket = "{podman.socket}"\naardvark_dir = "{AARDVARK_DIR}"',
            networkmanager=f'enabled = true\ndnsmasq_dir = "{nm.dnsmasq_d}"',
            resolved="enabled = true"))
        run = agentctl("setup", "--config", str(agent.config), check=False,
                       env={"DBUS_SYSTEM_BUS_ADDRESS": nm.bus_address})
        assert run.returncode == 0, run.stdout + run.stderr
        agent.start()
        path = until(lambda: (p := agent.status()["dns_path"])["route"]
                     and p["route"]["dnsmasq_pid"] and p, timeout=20, what="the forwarder")
        assert path["path"] == "networkmanager-dnsmasq", path
        assert nm.dns_mode() == "dnsmasq"
        # NM's read-only /sys is its own bind mount: the session's stays writable.
        assert _sys_mount_options().split(",")[0] == "rw"

        guest = libvirtd.guest("vmnm", [net])
        vm_ip = guest.wait_for_lease()
        podman.run("web", "--network", "dnsnet")
        web_ip = podman.addresses("web")["dnsnet"][0]
        want = {"host.dns.host": net.gateway, "vmnm.dns.libvirt": vm_ip,
                "web.dns.podman": web_ip}

        # From the host: NM's dnsmasq, as the host's resolv.conf names it.
        for name, address in want.items():
            until(lambda n=name, a=address: nm.query(n).records == (a,), timeout=15,  # type: ignore[misc]
                  what=f"{name} from NM's dnsmasq")

        # From the LXC guest: libvirt's dnsmasq -> NM's dnsmasq.
        for name, address in want.items():
            until(lambda n=name, a=address: a in guest.exec(  # type: ignore[misc]
                "nslookup", n, net.gateway, check=False).stdout, timeout=15,
                what=f"{name} from inside the guest")

        # From rootful containers, default network and DNS-enabled network.
        use_dns_servers(podman, (agent.dir / "containers.conf.d" /
                                 "90-namesync-dns.conf").read_text())
        script = "; ".join(f"echo '== {n}'; nslookup {n}" for n in want)
        for network in ("podman", "dnsnet"):
            out = podman.cli("run", "--rm", "--network", network, IMAGE, "sh", "-c",
                             f"cat /etc/resolv.conf; {script}", check=False,
                             timeout=60).stdout
            got = {p.split("\n", 1)[0]: p for p in out.split("== ")[1:]}
            for name, address in want.items():
                assert f"Address: {address}" in got.get(name, ""), (network, name, out)
