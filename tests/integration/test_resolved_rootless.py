"""Rootless containers see namesync's names, on the systemd-resolved path and on the
NetworkManager dnsmasq path, with real rootless Podman (slirp4netns, vfs) as a real user.

A rootless container's DNS is one of two things:

- without a ``dns_servers`` setting, Podman gives it slirp4netns's 10.0.2.3, which
  forwards to the first nameserver of the host's /etc/resolv.conf as the user's
  Podman sees it: 127.0.0.53 (resolved's stub) or 127.0.0.1 (NM's dnsmasq). slirp4netns
  runs in the host's network namespace, so a loopback server is reachable (pasta's
  169.254.1.1 works the same way; pasta is not packaged here);
- with ``agentctl setup``'s containers.conf drop-in (system drop-ins in
  /etc/containers/containers.conf.d/ apply to rootless Podman too), the link's
  address: slirp4netns turns the container's packets into host sockets, which reach
  namesync's dnsmasq on namesync0.

Both are tested, in both deployments. The user's view of /etc/resolv.conf is a bind
mount in a private mount namespace (tests/harness/rootless.HostView), never the
machine's file.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.config.load import parse_config
from agent.resolvers.setup import render_containers_conf
from tests.harness.agent import agentctl, toml_config
from tests.harness.netns import NetNS
from tests.harness.nm import NetworkManager
from tests.harness.podman import IMAGE, _busybox_rootfs_tar
from tests.harness.resolved import NetnsAgent, Resolved
from tests.harness.rootless import HostView, Session, user_python_problem
from tests.harness.users import User, ensure_user, remove
from tests.harness.wait import until
from tests.integration.test_resolved import (  # noqa: F401  (fixtures)
    LINK_ADDRESS,
    agent,
    agent_config,
    netns,
    resolved,
    rootfs,
    upstream,
    wait_routed,
)

pytestmark = [pytest.mark.integration, pytest.mark.resolved, pytest.mark.podman,
              pytest.mark.timeout(300)]

HOST_BRIDGE, HOST_IP = "hostbr", "10.77.50.1"
STATIC = {"web.dns.podman": ["10.89.0.5"], "vm1.dns.libvirt": ["10.213.0.7"]}
WANT = {"host.dns.host": HOST_IP, "web.dns.podman": "10.89.0.5",
        "vm1.dns.libvirt": "10.213.0.7"}
HOST = f'name = "host.dns.host"\ninterfaces = ["{HOST_BRIDGE}"]'


@pytest.fixture(scope="module")
def user() -> Iterator[User]:
    why = user_python_problem()
    if why:
        pytest.skip(why)
    u = ensure_user("rootless")
    yield u
    remove(u)


def host_bridge(ns: NetNS) -> None:
    ns.ip("link", "add", HOST_BRIDGE, "type", "bridge")
    ns.ip("addr", "add", f"{HOST_IP}/24", "dev", HOST_BRIDGE)
    ns.ip("link", "set", HOST_BRIDGE, "up")


@contextlib.contextmanager
def rootless_session(user: User, workdir: Path, nameserver: str,
                     netns_path: Path) -> Iterator[Session]:
    view = HostView(workdir / "view", (nameserver,), netns_path).start()
    session = Session(user, workdir / "user")
    session.enter = view.enter()
    try:
        session.setup()
        session.podman("import", "-q", "--change", 'CMD ["/bin/sh"]', "-", IMAGE,
                       input=_busybox_rootfs_tar())
        yield session
    finally:
        with contextlib.ExitStack() as stops:
            stops.callback(view.stop)
            stops.callback(session.teardown)


def use_setup_dropin(session: Session, dropin: str) -> None:
    """What /etc/containers/containers.conf.d/90-namesync-dns.conf does for the user's
    Podman (CONTAINERS_CONF names one file, so its line is merged into it)."""
    line = next(ln for ln in dropin.splitlines() if ln.startswith("dns_servers"))
    conf = session.dir / "containers.conf"
    conf.write_text(conf.read_text().replace("[containers]\n", f"[containers]\n{line}\n", 1))


def lookups(session: Session, names: list[str], *network: str) -> dict[str, str]:
    """nslookup of each name in one fresh rootless container; name -> output (and its
    resolv.conf). One container per case: on a DNS-enabled network each removal makes
    netavark reload aardvark-dns, which 1.4 may not survive (containers/aardvark-dns#389)."""
    script = "; ".join(f"echo '== {n}'; nslookup {n}" for n in names)
    out = session.podman("run", "--rm", *network, IMAGE, "sh", "-c",
                         f"cat /etc/resolv.conf; {script}", check=False, timeout=120).stdout
    parts = out.split("== ")
    found = {p.split("\n", 1)[0]: p for p in parts[1:]}
    found["resolv.conf"] = parts[0]
    return found


def answered(output: str, address: str) -> bool:
    return f"Address: {address}" in output or f"Address 1: {address}" in output


def check(session: Session, want: dict[str, str | None], *network: str) -> str:
    """Every name in ``want`` answers its address (None: NXDOMAIN); returns resolv.conf."""
    got = lookups(session, list(want), *network)
    for name, address in want.items():
        out = got.get(name, "")
        ok = answered(out, address) if address else "NXDOMAIN" in out
        assert ok, (f"{name} in a rootless container {network}: want {address or 'NXDOMAIN'}"
                    f"\n{out}\nits resolv.conf:\n{got['resolv.conf']}")
    return got["resolv.conf"]


def check_rootless(session: Session, setup_dropin: str, world: dict[str, str]) -> None:
    """The default network and a DNS-enabled network of the user, before and after
    `agentctl setup`'s containers.conf drop-in."""
    # Default network, no drop-in: 10.0.2.3 -> slirp4netns -> the host's first nameserver.
    conf = check(session, {**WANT, **world})
    assert "nameserver 10.0.2.3" in conf.splitlines()[0], conf
    # A DNS-enabled network of the user: aardvark-dns answers its own network's names
    # and forwards the rest through the rootless netns (slirp4netns again) - except
    # dns.podman, its own search domain, where it answers NXDOMAIN for names it does
    # not hold (aardvark-dns#57): namesync's container zone is hidden there.
    session.podman("network", "create", "--subnet", "10.89.70.0/24", "usernet")
    sib = session.container("sib", "--network", "usernet")
    sib_ip = session.podman("inspect", "-f", "{{.NetworkSettings.Networks.usernet.IPAddress}}",
                            sib).stdout.strip()
    on_net = ("--network", "usernet")
    hidden = {"web.dns.podman": None}
    conf = check(session, {**WANT, **hidden, **world, "sib.dns.podman": sib_ip}, *on_net)
    assert "nameserver 10.89.70.1" in conf, conf

    use_setup_dropin(session, setup_dropin)
    conf = check(session, {**WANT, **world})
    assert conf.splitlines()[0] == f"nameserver {LINK_ADDRESS}", conf
    # Podman 4.3 (Debian 12) puts dns_servers in place of aardvark-dns: every namesync
    # name answers, and the network's own short names are lost. Podman >= 4.4 keeps
    # aardvark-dns as the server and makes it forward to dns_servers (podman#16297),
    # which keeps them and brings back the dns.podman hiding above.
    conf = check(session, {**WANT, **world, "sib.dns.podman": None}, *on_net)
    assert conf.splitlines()[0] == f"nameserver {LINK_ADDRESS}", conf


def test_rootless_container_on_the_resolved_path(
        agent: NetnsAgent, resolved: Resolved, netns: NetNS, user: User,  # noqa: F811
        public_tmp: Path) -> None:
    host_bridge(netns)
    agent.set_config(agent_config(agent, public_tmp, static=STATIC, host=HOST))
    agent.start()
    wait_routed(agent)
    dropin = render_containers_conf(parse_config(
        f'[resolved]\nlink_address = "{LINK_ADDRESS}"\n', "t")).decode()
    with rootless_session(user, public_tmp, "127.0.0.53", netns.path) as session:
        # 10.0.2.3 -> slirp4netns -> 127.0.0.53 -> resolved -> namesync0 -> its dnsmasq;
        # after setup 198.18.53.53 directly, which forwards the world to 127.0.0.53.
        check_rootless(session, dropin, {"www.up.example": "192.0.2.99"})


def test_rootless_container_on_the_nm_dnsmasq_path(user: User, public_tmp: Path) -> None:
    nm = NetworkManager(public_tmp / "nm").start()
    agent = NetnsAgent(public_tmp / "agent", nm.netns,  # noqa: F811
                       {"DBUS_SYSTEM_BUS_ADDRESS": nm.bus_address})
    try:
        host_bridge(nm.netns)
        agent.set_config(toml_config(
            socket=agent.socket, addn_hosts=public_tmp / "names" / "addn-hosts",
            pid_file=nm.pid_file, hosts_file=None, static=STATIC, coalesce_ms=0, host=HOST,
            networkmanager=f'enabled = true\ndnsmasq_dir = "{nm.dnsmasq_d}"',
            resolved="enabled = true"))
        run = agentctl("setup", "--config", str(agent.config), check=False,
                       env={"DBUS_SYSTEM_BUS_ADDRESS": nm.bus_address})
        assert run.returncode == 0, run.stdout + run.stderr
        agent.start()
        until(lambda: nm.query("host.dns.host").records == (HOST_IP,), timeout=20,
              what="NM's dnsmasq serving host.dns.host")
        until(lambda: (agent.status()["dns_path"]["route"] or {}).get("dnsmasq_pid"),
              timeout=20, what="the forwarder on the link")
        dropin = (agent.dir / "containers.conf.d" / "90-namesync-dns.conf").read_text()
        with rootless_session(user, public_tmp, "127.0.0.1", nm.netns.path) as session:
            # 10.0.2.3 -> slirp4netns -> 127.0.0.1 (NM's dnsmasq); after setup the
            # forwarder on 198.18.53.53, which asks NM's dnsmasq uncached. (NM's own
            # upstream here is a bare veth: no world names to ask.)
            check_rootless(session, dropin, {})
    finally:
        with contextlib.ExitStack() as stops:
            stops.callback(nm.stop)
            stops.callback(agent.stop)
