"""Session VMs on a real QEMU: a TCG guest on a real user's qemu:///session, end to end.

A real unprivileged user (tests/harness/users.py) runs its own libvirtd
(``qemu:///session``, tests/harness/qemu_session.py). Its guest is Debian's
cloud kernel with a busybox initramfs (tests/harness/qemu_image.py, cached per
machine) whose init runs ``udhcpc -i eth0 -x hostname:NAME``. The NIC is
``<interface type='bridge'>`` onto the bridge of a NAT network of the test's
private system libvirtd, plugged in by the real qemu-bridge-helper: the
system network's real dnsmasq hands out the lease and writes
``<bridge>.status``. The user's real namesync agent (``--mode user``, on
qemu:///session) matches the guest's MAC in that lease file and pushes
``<vm>.<user>.dns.libvirt`` to the real system agent, whose addn-hosts file a
real dnsmasq answers from (and, opted in, the guest's own DHCP name as
``<hostname>.guest.<user>.dns.libvirt``). User-mode guests (QEMU's slirp) are
checked the same way against what really is reachable on the host.

Timings (start to lease, lease to answer) are printed with ``-s`` and kept as
record_property; they are not asserted.
"""

from __future__ import annotations

import contextlib
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.harness import qemu_image, rootless
from tests.harness.agent import Agent, toml_config
from tests.harness.dnsmasq import Dnsmasq
from tests.harness.libvirt import Libvirtd, Network
from tests.harness.qemu_image import GuestImage
from tests.harness.qemu_session import (
    BridgeNic,
    CommandlineNic,
    SessionLibvirtd,
    UserNic,
    unavailable,
)
from tests.harness.rootless import Session, UserAgent, skip_without_user_python
from tests.harness.users import User
from tests.harness.wait import until

pytestmark = [
    pytest.mark.integration, pytest.mark.libvirt, pytest.mark.timeout(300),
    pytest.mark.skipif(unavailable() is not None, reason=unavailable() or ""),
]

BRIDGE = "nsqhost0"  # what [host] interfaces names: host.dns.host's address
HOST_IP = "10.78.0.1"
BOOT_TIMEOUT_S = 90  # TCG on a loaded 2-CPU machine; ~5 s when quiet


@pytest.fixture(scope="module", autouse=True)
def _user_python() -> None:
    skip_without_user_python()


@pytest.fixture(scope="module")
def image() -> GuestImage:
    """The cached kernel + initramfs (built once per machine: ~3 s and a 27 MB download)."""
    why = qemu_image.unavailable()
    if why:
        pytest.skip(f"no guest kernel: {why}")
    return qemu_image.build()


@pytest.fixture
def host_bridge() -> Iterator[str]:
    with rootless.host_bridge(BRIDGE, HOST_IP) as name:
        yield name


@pytest.fixture
def system(public_tmp: Path, dnsmasq: Dnsmasq, host_bridge: str,
           libvirtd: Libvirtd) -> Iterator[Agent]:
    # It follows the (private) system libvirtd too, as on a workstation: the session
    # VMs' leases on its bridges are then leases it cannot place itself.
    agent = Agent(public_tmp / "system")
    agent.set_config(toml_config(
        socket=agent.socket, addn_hosts=dnsmasq.addn_hosts, pid_file=dnsmasq.pid_file,
        hosts_file=None, host=f'name = "host.dns.host"\ninterfaces = ["{BRIDGE}"]',
        libvirt='uris = ["qemu:///system"]',
        peers=f'socket = "{agent.dir / "peer.sock"}"\ngrace_s = 2\nmax_names = 50\n'))
    agent.start()
    until(lambda: dnsmasq.query("host.dns.host").records == (HOST_IP,), what="host.dns.host")
    yield agent
    agent.stop()


@pytest.fixture
def alice(unix_user: Any, public_tmp: Path) -> Iterator[Session]:
    user: User = unix_user("qalice")
    s = Session(user, public_tmp / "alice").setup()
    yield s
    s.teardown()


@pytest.fixture
def session_libvirtd(alice: Session, libvirt_network: Network,
                     public_tmp: Path) -> Iterator[SessionLibvirtd]:
    """The user's session daemon, not started yet: what starts it is part of a test."""
    daemon = SessionLibvirtd(alice, public_tmp / "session-libvirt", [libvirt_network.bridge])
    yield daemon
    daemon.stop()


@contextlib.contextmanager
def _user_agent(alice: Session, system: Agent, workdir: Path,
                release_idle_s: int) -> Iterator[UserAgent]:
    # Everything else is the user-mode default: qemu:///session, the system's
    # lease directory, zones <user>.dns.libvirt. LIBVIRT_AUTOSTART=0 as the user unit.
    # guest_hostnames: the guest's own DHCP name, only as <hostname>.guest.<user>.<zone>.
    agent = UserAgent(alice, workdir, env_extra={"LIBVIRT_AUTOSTART": "0"})
    agent.set_config(f'[daemon]\ncoalesce_ms = 20\nlog_level = "debug"\n'
                     f'[peers]\nsocket = "{system.dir / "peer.sock"}"\n'
                     f"[podman]\nenabled = false\n[libvirt]\nguest_hostnames = true\n"
                     f"release_idle_s = {release_idle_s}\n")
    agent.start()
    try:
        yield agent
    finally:
        agent.stop()


@pytest.fixture
def user_agent(alice: Session, system: Agent, public_tmp: Path) -> Iterator[UserAgent]:
    """Never released while idle: these tests follow the connection itself (a crashed
    daemon, a restart); test_a_released_session_agent_... has the release."""
    with _user_agent(alice, system, public_tmp / "alice-agent", 0) as agent:
        yield agent


def system_refusals(agent: Agent, mac: str) -> list[dict[str, Any]]:
    return [r for r in agent.status()["table"]["rejected"] if r["value"] == mac]


def libvirt_source(agent: Agent) -> dict[str, Any]:
    [src] = [s for s in agent.status()["sources"] if s["kind"] == "libvirt"]
    found: dict[str, Any] = src
    return found


def test_bridged_session_vm_answers_its_system_lease_until_destroyed(
        image: GuestImage, libvirt_network: Network, session_libvirtd: SessionLibvirtd,
        user_agent: UserAgent, system: Agent, dnsmasq: Dnsmasq, alice: Session,
        record_property: Any) -> None:
    name = f"vm1.{alice.user.name}.dns.libvirt"
    # As at login: the user unit's agent runs before anything started the session
    # daemon (GNOME Boxes, virt-manager do, later); it waits for the socket.
    src = libvirt_source(user_agent)
    assert src["name"] == "libvirt:qemu:///session" and src["state"] != "connected"
    assert f"waiting for {session_libvirtd.socket} to appear" in (src["detail"] or "")
    session_libvirtd.start()
    until(lambda: libvirt_source(user_agent)["state"] == "connected", timeout=20,
          what="the user agent on qemu:///session once its socket appeared")
    guest = session_libvirtd.guest("vm1", image, BridgeNic(libvirt_network.bridge),
                                   dhcp_hostname="tiny")
    assert dnsmasq.query(name).status == "NXDOMAIN"  # defined, not running: no name

    started = guest.start()
    qemu = guest.qemu_pid()
    assert qemu is not None
    lease = until(lambda: libvirt_network.lease_for(guest.mac) or {}, timeout=BOOT_TIMEOUT_S,
                  interval=0.02, what=f"a lease for vm1 ({guest.mac}) in "
                                      f"{libvirt_network.status_path}")
    leased = time.monotonic()
    ip = str(lease["ip-address"])
    assert lease.get("hostname") == "tiny"  # udhcpc -x hostname:tiny, through the bridge
    until(lambda: dnsmasq.query(name).records == (ip,), timeout=15, interval=0.01,
          what=f"{name} -> the lease {ip}")
    answered = time.monotonic()
    # The system agent cannot place that lease (no system domain has the MAC), but it
    # answers: it is not shown as "not published" there.
    assert system_refusals(system, guest.mac) == []
    # The guest's own choice of name only under guest.<user>.<zone>, through the peer.
    alias = f"tiny.guest.{alice.user.name}.dns.libvirt"
    until(lambda: dnsmasq.query(alias).records == (ip,), timeout=15, what=f"{alias} -> {ip}")
    assert dnsmasq.query(f"tiny.{alice.user.name}.dns.libvirt").status == "NXDOMAIN"
    # The guest itself configured that address (its udhcpc hook said so on the console).
    until(lambda: guest.bound_address() == ip, timeout=15, what=f"vm1 to configure {ip}")
    for key, value in (("start_to_lease_s", leased - started),
                       ("lease_to_answer_s", answered - leased)):
        record_property(key, round(value, 3))
    print(f"\nqemu session guest: start->lease {leased - started:.2f} s, "
          f"lease->answer {(answered - leased) * 1000:.0f} ms")

    # The session daemon crashes: the VM runs on and keeps its name; the restarted
    # daemon finds the running QEMU again and the agent's resync keeps it published.
    session_libvirtd.kill()
    until(lambda: libvirt_source(user_agent)["state"] != "connected", timeout=20,
          what="the user agent to see the session daemon gone")
    assert guest.qemu_pid() is not None
    assert dnsmasq.query(name).records == (ip,)
    session_libvirtd.start()
    until(lambda: libvirt_source(user_agent)["state"] == "connected", timeout=30,
          what="the user agent back on the restarted session daemon")
    assert guest.is_active() and dnsmasq.query(name).records == (ip,)
    assert system_refusals(system, guest.mac) == []  # seconds later: the file was read

    guest.destroy()
    until(lambda: dnsmasq.query(name).status == "NXDOMAIN", timeout=15,
          what=f"{name} gone after destroy")
    assert dnsmasq.query(alias).status == "NXDOMAIN"
    # The lease outlives the guest (until expiry): the name goes because the domain stopped.
    assert libvirt_network.lease_for(guest.mac) is not None
    # Now nobody publishes the lease's address: the system agent says so.
    until(lambda: any("matches no domain" in r["reason"]
                      for r in system_refusals(system, guest.mac)),
          timeout=15, what="the system agent to show the leftover lease as not published")
    until(lambda: guest.qemu_pid() is None, timeout=15, what="QEMU to exit")


def test_a_released_session_agent_is_woken_by_the_session_daemon_s_files(
        image: GuestImage, libvirt_network: Network, session_libvirtd: SessionLibvirtd,
        system: Agent, dnsmasq: Dnsmasq, alice: Session, public_tmp: Path) -> None:
    """Issue 11, idle: the user agent lets go of an idle qemu:///session connection
    and watches the session daemon's own files ($XDG_RUNTIME_DIR/libvirt/qemu/run,
    ~/.config/libvirt/qemu): a VM defined, started and destroyed meanwhile is
    followed as if it had stayed connected."""
    session_libvirtd.start()
    with _user_agent(alice, system, public_tmp / "alice-agent", 1) as agent:
        def listings() -> int:  # each wake lists twice: on reconnect, before releasing
            return agent.log.read_text().count('"event": "libvirt listed"')

        def released(after: int = -2) -> dict[str, Any]:
            src = libvirt_source(agent)
            return src if src["state"] == "released" and listings() >= after + 2 else {}

        src = until(released, timeout=20, what="the idle session connection released")
        runtime, home = alice.runtime, alice.user.home
        assert (f"({runtime}/libvirt/qemu/run, {home}/.config/libvirt/qemu, "
                f"{runtime}/libvirt/network/lib, {home}/.config/libvirt/qemu/networks)"
                in src["detail"]), src
        before = listings()
        guest = session_libvirtd.guest("vm3", image, BridgeNic(libvirt_network.bridge))
        name = f"vm3.{alice.user.name}.dns.libvirt"
        until(lambda: released(before), timeout=20, what="woken by the define, released again")
        before = listings()
        guest.start()
        lease = until(lambda: libvirt_network.lease_for(guest.mac) or {},
                      timeout=BOOT_TIMEOUT_S, interval=0.05, what=f"a lease for vm3 ({guest.mac})")
        ip = str(lease["ip-address"])
        until(lambda: dnsmasq.query(name).records == (ip,), timeout=15, what=f"{name} -> {ip}")
        until(lambda: released(before), timeout=20, what="woken by the start, released again")
        guest.destroy()
        until(lambda: dnsmasq.query(name).status == "NXDOMAIN", timeout=15,
              what=f"{name} gone after a destroy while released")
        until(lambda: guest.qemu_pid() is None, timeout=15, what="QEMU to exit")


def test_two_nic_session_vm_names_each_nic_by_its_user_alias(
        image: GuestImage, libvirtd: Libvirtd, libvirt_network: Network,
        session_libvirtd: SessionLibvirtd, user_agent: UserAgent, dnsmasq: Dnsmasq,
        alice: Session) -> None:
    """Two bridged NICs on two system networks, the first with a user alias: QEMU keeps
    ``<alias name='ua-lan'/>`` in the live XML (libvirt's LXC driver drops it, so the
    LXC tests cannot show it), and each NIC gets its own name."""
    second = libvirtd.network()
    session_libvirtd.bridges.append(second.bridge)
    session_libvirtd.start()
    until(lambda: libvirt_source(user_agent)["state"] == "connected", timeout=20,
          what="the user agent on qemu:///session")
    duo = session_libvirtd.guest("duo", image, BridgeNic(libvirt_network.bridge, alias="lan"),
                                 BridgeNic(second.bridge))
    duo.start()
    assert "<alias name='ua-lan'/>" in session_libvirtd.virsh("dumpxml", "duo").stdout

    def leased(net: Network, mac: str) -> str:
        return until(lambda: str((net.lease_for(mac) or {}).get("ip-address", "")),
                     timeout=BOOT_TIMEOUT_S, interval=0.05, what=f"a lease for duo's {mac}")

    ips = [leased(libvirt_network, duo.macs[0]), leased(second, duo.macs[1])]
    fqdn = f"duo.{alice.user.name}.dns.libvirt"
    until(lambda: set(dnsmasq.query(fqdn).records) == set(ips), timeout=15,
          what=f"{fqdn} -> both leases {ips}")
    until(lambda: dnsmasq.query(f"lan.{fqdn}").records == (ips[0],), timeout=15,
          what=f"lan.{fqdn} -> {ips[0]}")
    until(lambda: dnsmasq.query(f"nic1.{fqdn}").records == (ips[1],), timeout=15,
          what=f"nic1.{fqdn} -> {ips[1]}")

    duo.destroy()
    names = (fqdn, f"lan.{fqdn}", f"nic1.{fqdn}")
    until(lambda: all(dnsmasq.query(n).status == "NXDOMAIN" for n in names), timeout=15,
          what=f"{names} gone after destroy")


def http_get(host: str, port: int) -> str:
    try:
        with socket.create_connection((host, port), timeout=2) as s:
            s.sendall(b"GET / HTTP/1.0\r\n\r\n")
            return s.makefile("rb").read().decode(errors="replace")
    except OSError:
        return ""


def refusals(agent: Agent, *names: str) -> dict[str, str]:
    """Name -> reason of what ``agent`` refused, once all of ``names`` are among them."""
    found = {r["value"]: r["reason"] for r in agent.status()["table"]["rejected"]}
    return found if set(names) <= set(found) else {}


def connects(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=2):
            return True
    except OSError:
        return False


def test_user_mode_session_vms_answer_the_host_only_through_a_real_forward(
        image: GuestImage, session_libvirtd: SessionLibvirtd, user_agent: UserAgent,
        system: Agent, dnsmasq: Dnsmasq, alice: Session) -> None:
    """User-mode (slirp) NICs: reachable only through ports the host forwards, so the name
    answers the host's address when a forward on a non-loopback address exists, and
    each case is checked against the real guest: the forwarded port reaches it, or
    nothing of it is reachable from outside.

    libvirt 9.0 has no passt backend (``<backend type='passt'/>`` fails to define),
    so the forwards that work are slirp's hostfwd in ``<qemu:commandline>``. A
    ``<portForward>`` on a plain user NIC is accepted and kept in the XML, but
    QEMU's slirp gets no hostfwd: nothing listens on that port."""
    zone = f"{alice.user.name}.dns.libvirt"
    session_libvirtd.start()
    until(lambda: libvirt_source(user_agent)["state"] == "connected", timeout=20,
          what="the user agent on qemu:///session")
    boxes = session_libvirtd.guest("boxes", image, CommandlineNic(hostfwd=("tcp::2222-:80",)))
    lo = session_libvirtd.guest("lo", image, CommandlineNic(hostfwd=("tcp:127.0.0.1:2224-:80",)))
    plain = session_libvirtd.guest("plain", image, UserNic(forwards=((2225, 80),)))
    for guest in (boxes, lo, plain):
        guest.start()

    until(lambda: dnsmasq.query(f"boxes.{zone}").records == (HOST_IP,), timeout=15,
          what=f"boxes.{zone} -> the host's address")
    # What the answer is for: that address's forwarded port reaches this guest.
    page = until(lambda: http_get(HOST_IP, 2222), timeout=BOOT_TIMEOUT_S, interval=0.2,
                 what=f"boxes' httpd through {HOST_IP}:2222")
    assert "page of boxes" in page

    reasons = until(lambda: refusals(user_agent, "lo", "plain"),
                    what="lo and plain refused in the user agent's status")
    assert reasons["lo"].startswith("user-mode network (slirp/passt) and no port forward")
    assert "only on loopback: tcp 127.0.0.1:2224->80" in reasons["lo"]
    assert "is not applied by libvirt without <backend type='passt'/>" in reasons["plain"]
    shown = {r["value"]: r["reason"] for r in system.status()["table"]["rejected"]
             if r["source"] == f"peer:{alice.user.uid}"}
    assert "only on loopback" in shown["lo"] and "not applied" in shown["plain"]
    for name in ("lo", "plain"):
        assert dnsmasq.query(f"{name}.{zone}").status == "NXDOMAIN"
    # And the guests agree: lo answers on loopback only, plain's <portForward> is not there.
    assert "page of lo" in until(lambda: http_get("127.0.0.1", 2224), timeout=BOOT_TIMEOUT_S,
                                 interval=0.2, what="lo's httpd through 127.0.0.1:2224")
    assert not connects(HOST_IP, 2224)
    plain.wait_console("bound eth0", timeout=BOOT_TIMEOUT_S)
    assert plain.qemu_pid() is not None
    assert not connects(HOST_IP, 2225) and not connects("127.0.0.1", 2225)

    boxes.destroy()
    until(lambda: dnsmasq.query(f"boxes.{zone}").status == "NXDOMAIN", timeout=15,
          what=f"boxes.{zone} gone after destroy")
    assert not connects(HOST_IP, 2222)
