"""NetworkManager leaves namesync's link alone once `agentctl setup`'s drop-in is in.

A real NetworkManager (tests/harness/nm.py) that manages every device but one
(unlike the harness default, which manages only veth0): a bridge named like
namesync's link is taken over by NM, which on a real host wipes the per-link
DNS settings namesync gave resolved. With the drop-in `agentctl setup` writes
and NM's Reload(CONF), NM lets go of it, and the user's own unmanaged-devices
list still applies (the drop-in appends with `+=`, it does not replace).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.config.schema import Config
from agent.resolvers.setup import RELOAD_CONF, render_nm_unmanaged
from tests.harness.agent import agentctl, toml_config
from tests.harness.nm import NetworkManager
from tests.harness.podman import IMAGE
from tests.harness.resolved import NetnsAgent, NetnsPodman
from tests.harness.wait import until

pytestmark = [pytest.mark.integration, pytest.mark.networkmanager]

LINK = Config().resolved.link
USERS_OWN = "keepme0"  # in the user's own unmanaged-devices list


class ManagingNM(NetworkManager):
    def _write_config(self) -> None:
        super()._write_config()
        conf = self.etc_dir / "NetworkManager.conf"
        conf.write_text(conf.read_text().replace(
            f"unmanaged-devices=except:interface-name:{self.device}",
            f"unmanaged-devices=interface-name:{USERS_OWN}"))


@pytest.fixture
def nm(public_tmp: Path) -> Iterator[ManagingNM]:
    n = ManagingNM(public_tmp / "nm", dns="default").start()
    yield n
    n.stop()


def state(nm: NetworkManager, device: str) -> str:
    out = nm.nmcli("-t", "-f", "DEVICE,STATE", "device", check=False).stdout
    return next((ln.partition(":")[2] for ln in out.splitlines()
                 if ln.partition(":")[0] == device), "")


def test_nm_leaves_the_link_unmanaged_after_setup(nm: ManagingNM) -> None:
    for dev in (LINK, USERS_OWN):
        nm.netns.ip("link", "add", dev, "type", "bridge")
        nm.netns.ip("addr", "add", "198.18.53.53/32" if dev == LINK else "198.18.53.54/32",
                    "dev", dev)
        nm.netns.ip("link", "set", dev, "up")
    # Without the drop-in NM takes the bridge over (on a real host: and its DNS).
    until(lambda: state(nm, LINK) not in ("", "unmanaged"), timeout=20,
          what=f"NetworkManager to manage {LINK}")
    assert state(nm, USERS_OWN) == "unmanaged"

    (nm.etc_dir / "conf.d" / "90-namesync-unmanaged.conf").write_bytes(
        render_nm_unmanaged(Config()))
    nm.reload(RELOAD_CONF)
    until(lambda: state(nm, LINK) == "unmanaged", timeout=20,
          what=f"NetworkManager to leave {LINK} alone")
    assert state(nm, USERS_OWN) == "unmanaged"  # appended, not replaced
    assert state(nm, nm.device).startswith("connected")


@pytest.mark.podman
def test_default_network_container_on_the_nm_dnsmasq_path(public_tmp: Path) -> None:
    """NM in dns=dnsmasq mode: its dnsmasq listens on 127.0.0.1 only, which Podman drops
    from a container's resolv.conf. namesync's forwarder on the link address (no cache)
    gives a container on the default `podman` network NM's answers, current at once."""
    nm = NetworkManager(public_tmp / "nm").start()
    agent = NetnsAgent(public_tmp / "agent", nm.netns, {"DBUS_SYSTEM_BUS_ADDRESS": nm.bus_address})
    podman = NetnsPodman(public_tmp / "podman", nm.netns)
    try:
        def configure(static: dict[str, list[str]]) -> None:
            agent.set_config(toml_config(
                socket=agent.socket, addn_hosts=public_tmp / "names" / "addn-hosts",
                pid_file=nm.pid_file, hosts_file=None, static=static, coalesce_ms=0,
                networkmanager=f'enabled = true\ndnsmasq_dir = "{nm.dnsmasq_d}"',
                resolved="enabled = true"))

        configure({"web.dns.podman": ["10.89.0.5"]})
        run = agentctl("setup", "--config", str(agent.config), check=False,
                       env={"DBUS_SYSTEM_BUS_ADDRESS": nm.bus_address})
        assert run.returncode == 0, run.stdout + run.stderr
        assert "containers.conf drop-in" in run.stdout
        agent.start()
        path = until(lambda: (p := agent.status()["dns_path"])["route"]
                     and p["route"]["dnsmasq_pid"] and p, timeout=20, what="the forwarder")
        assert path["path"] == "networkmanager-dnsmasq" and path["route"]["forward_only"]

        podman.setup()
        podman.use_dns_servers(
            (agent.dir / "containers.conf.d" / "90-namesync-dns.conf").read_text())
        out = podman.cli("run", "--rm", "--network", "podman", IMAGE, "nslookup",
                         "web.dns.podman", check=False).stdout
        assert "10.89.0.5" in out, out
        podman.run("watcher", "--network", "podman")
        poller = podman.popen("exec", "watcher", "sh", "-c",
                              "until nslookup new.dns.podman | grep -q 10.89.0.6; do :; done")
        configure({"new.dns.podman": ["10.89.0.6"]})
        agent.reload()
        assert poller.wait(timeout=30) == 0
    finally:
        # Each stop runs even if one before it fails: nothing may outlive the test.
        with contextlib.ExitStack() as stops:
            stops.callback(nm.stop)
            stops.callback(agent.stop)
            stops.callback(podman.teardown)
