"""Podman containers by name: a real ``podman system service`` (private storage and network
configs, tests/harness/podman.py), real containers on real netavark networks with
aardvark-dns, the real namesync-agent, and answers checked with dig at the test dnsmasq."""

from __future__ import annotations

import contextlib
import json
import signal
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from tests.harness.agent import Agent, status_text
from tests.harness.dnsmasq import Dnsmasq
from tests.harness.podman import AARDVARK_DIR, Podman
from tests.harness.wait import until

pytestmark = [pytest.mark.integration, pytest.mark.podman]

ZONE = "dns.podman"
NET1 = "nsnet1"  # DNS-enabled, IPv4 + IPv6: aardvark-dns file, the fast path
NET2 = "nsnet2"  # DNS-enabled, IPv4 only
NODNS = "nsnodns"  # no DNS: no aardvark-dns file, events and inspect only
WriteConfig = Callable[..., None]


@pytest.fixture(scope="module")
def podman_module(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Podman]:
    """One private Podman (image imported once) and three networks for the module."""
    p = Podman(tmp_path_factory.mktemp("podman"))
    try:
        p.setup().start_service()
        p.network_create(NET1, "10.89.70.0/24", "--ipv6", "--subnet", "fd00:89:70::/64")
        p.network_create(NET2, "10.89.71.0/24")
        p.network_create(NODNS, "10.89.72.0/24", "--disable-dns")
        yield p
    finally:
        p.teardown()


@pytest.fixture
def podman(podman_module: Podman) -> Iterator[Podman]:
    """The module's Podman with its service running; every pod and container is gone after
    the test, and the service runs again even if the test killed it."""
    if podman_module.service is None:
        podman_module.start_service()
    yield podman_module
    podman_module.remove_all()
    if podman_module.service is None:
        podman_module.start_service()


@pytest.fixture
def watch_podman(write_config: WriteConfig, podman: Podman) -> Callable[..., None]:
    def configure(extra: str = "") -> None:
        write_config(podman=f'socket = "{podman.socket}"\naardvark_dir = "{AARDVARK_DIR}"\n'
                     + extra)
    return configure


def answers(dnsmasq: Dnsmasq, name: str, *addrs: str, rtype: str = "A",
            timeout: float = 10) -> None:
    want = tuple(sorted(addrs))
    until(lambda: dnsmasq.query(name, rtype).records == want, timeout=timeout,
          what=f"{name} {rtype} -> {want}")


def nxdomain(dnsmasq: Dnsmasq, name: str, timeout: float = 10) -> None:
    until(lambda: dnsmasq.query(name).status == "NXDOMAIN", timeout=timeout,
          what=f"{name} NXDOMAIN")


def source(agent: Agent) -> dict[str, Any]:
    [src] = [s for s in agent.status()["sources"] if s["kind"] == "podman"]
    return src


def v4(podman: Podman, name: str) -> list[str]:
    return [a for a, _ in podman.addresses(name).values() if a]


def v6(podman: Podman, name: str) -> list[str]:
    return [a for _, a in podman.addresses(name).values() if a]


def test_run_answers_the_inspected_addresses_stop_and_rm_remove_it(
        podman: Podman, dnsmasq: Dnsmasq, agent: Agent,
        watch_podman: Callable[..., None]) -> None:
    watch_podman()
    agent.start()
    assert source(agent)["name"] == f"podman:{podman.socket}"
    assert source(agent)["state"] == "connected"

    podman.run("web_1", "--network", NET1)
    [ip4], [ip6] = v4(podman, "web_1"), v6(podman, "web_1")
    answers(dnsmasq, f"web-1.{ZONE}", ip4)  # '_' is legal in Podman, not in DNS
    answers(dnsmasq, f"web-1.{ZONE}", ip6, rtype="AAAA")

    podman.stop("web_1")
    nxdomain(dnsmasq, f"web-1.{ZONE}")
    podman.start("web_1")
    answers(dnsmasq, f"web-1.{ZONE}", *v4(podman, "web_1"))
    podman.rm("web_1")
    nxdomain(dnsmasq, f"web-1.{ZONE}")
    src = source(agent)
    assert (src["state"], src["objects"], src["last_error"]) == ("connected", 0, None)

    # Stopping the agent while its event thread sits in a live stream is prompt.
    started = time.monotonic()
    assert agent.stop() == 0
    assert time.monotonic() - started < 3


def test_rename_moves_the_name(podman: Podman, dnsmasq: Dnsmasq, agent: Agent,
                               watch_podman: Callable[..., None]) -> None:
    watch_podman()
    agent.start()
    podman.run("before", "--network", NODNS)  # no fast path: events and inspect alone
    ip = v4(podman, "before")[0]
    answers(dnsmasq, f"before.{ZONE}", ip)
    podman.rename("before", "after")
    answers(dnsmasq, f"after.{ZONE}", ip)
    nxdomain(dnsmasq, f"before.{ZONE}")


def test_two_networks_and_aliases_short_id_not_published(
        podman: Podman, dnsmasq: Dnsmasq, agent: Agent,
        watch_podman: Callable[..., None]) -> None:
    watch_podman()
    agent.start()
    cid = podman.run("multi", "--network", f"{NET1}:alias=front",
                     "--network", f"{NET2}:alias=back")
    nets = podman.addresses("multi")
    answers(dnsmasq, f"multi.{ZONE}", nets[NET1][0], nets[NET2][0])
    answers(dnsmasq, f"multi.{ZONE}", nets[NET1][1], rtype="AAAA")
    answers(dnsmasq, f"front.{ZONE}", nets[NET1][0])  # an alias answers its network's address
    answers(dnsmasq, f"back.{ZONE}", nets[NET2][0])
    assert dnsmasq.query(f"{cid[:12]}.{ZONE}").status == "NXDOMAIN"


def test_network_connect_and_disconnect_in_a_configured_zone(
        podman: Podman, dnsmasq: Dnsmasq, agent: Agent,
        watch_podman: Callable[..., None]) -> None:
    watch_podman('zone = "ctr.dns.test"')
    agent.start()
    podman.run("hop", "--network", NET1)
    first = podman.addresses("hop")[NET1][0]
    answers(dnsmasq, "hop.ctr.dns.test", first)
    assert dnsmasq.query(f"hop.{ZONE}").status == "NXDOMAIN"
    podman.network_connect(NET2, "hop")
    second = podman.addresses("hop")[NET2][0]
    answers(dnsmasq, "hop.ctr.dns.test", first, second)
    podman.network_disconnect(NET1, "hop")
    answers(dnsmasq, "hop.ctr.dns.test", second)


def test_pod_name_and_members_answer_the_infra_address(
        podman: Podman, dnsmasq: Dnsmasq, agent: Agent,
        watch_podman: Callable[..., None]) -> None:
    watch_podman()
    agent.start()
    podman.pod_create("shop", "--network", NET1, "--network-alias", "store")
    podman.run("shop-app", "--pod", "shop")
    pod = json.loads(podman.cli("pod", "inspect", "shop").stdout)
    pod = pod[0] if isinstance(pod, list) else pod
    infra = podman.addresses(pod["InfraContainerID"])[NET1][0]
    assert podman.addresses("shop-app")[NET1][0] == infra  # the shared network namespace
    for name in ("shop", "store", "shop-app"):
        answers(dnsmasq, f"{name}.{ZONE}", infra)
    assert dnsmasq.query(f"{pod['Id'][:12]}-infra.{ZONE}").status == "NXDOMAIN"
    podman.pod_rm("shop")
    for name in ("shop", "store", "shop-app"):
        nxdomain(dnsmasq, f"{name}.{ZONE}")


def test_restart_on_a_new_address_and_pause_keeps_the_name(
        podman: Podman, dnsmasq: Dnsmasq, agent: Agent,
        watch_podman: Callable[..., None]) -> None:
    watch_podman()
    agent.start()
    podman.run("mover", "--network", NET2)
    old = v4(podman, "mover")[0]
    answers(dnsmasq, f"mover.{ZONE}", old)
    podman.stop("mover")
    nxdomain(dnsmasq, f"mover.{ZONE}")
    # Take the old address, so the restart must get another one.
    podman.run("squatter", "--network", NET2, "--ip", old)
    podman.start("mover")
    new = v4(podman, "mover")[0]
    assert new != old
    answers(dnsmasq, f"mover.{ZONE}", new)
    answers(dnsmasq, f"squatter.{ZONE}", old)

    # A paused container keeps its namespace and address, and aardvark-dns keeps
    # answering for it: so does namesync.
    podman.pause("mover")
    assert podman.inspect("mover")["State"]["Status"] == "paused"
    answers(dnsmasq, f"mover.{ZONE}", new)
    podman.restart("squatter")
    answers(dnsmasq, f"squatter.{ZONE}", old)
    assert dnsmasq.query(f"mover.{ZONE}").records == (new,)
    podman.unpause("mover")
    answers(dnsmasq, f"mover.{ZONE}", new)


def test_hostile_names_and_addressless_containers_are_reported(
        podman: Podman, dnsmasq: Dnsmasq, agent: Agent,
        watch_podman: Callable[..., None]) -> None:
    watch_podman()
    agent.start()
    long_name = "x" * 64
    # Podman checks container names but not aliases: netavark writes "a b" into
    # the aardvark-dns file as is, which splits its line into the wrong fields.
    podman.run("Web_App.1", "--network", NET2, "--network-alias", "Db_Main",
               "--network-alias", "caf\u00e9", "--network-alias", "a b")
    podman.run(long_name, "--network", NET2)
    podman.run("isolated", "--network", "none")
    podman.run("hostnet", "--network", "host")
    ip = v4(podman, "Web_App.1")[0]
    for name in ("web-app-1", "db-main", "a-b"):
        answers(dnsmasq, f"{name}.{ZONE}", ip)

    def refused() -> dict[tuple[str, str], str]:
        return {(r["kind"], r["value"]): r["reason"] for r in agent.status()["table"]["rejected"]}

    until(lambda: len(refused()) == 4, what="four refusals in status")
    assert refused() == {
        ("container", long_name): "label is 64 characters, the limit is 63",
        ("container", "isolated"): "has no network (--network none)",
        ("container", "hostnet"):
            "uses the host's network (--network host): it has no address of its own",
        ("alias", "caf\u00e9"): "contains non-ASCII character U+00E9",
    }
    for name in ("isolated", "hostnet"):  # (the long one cannot even be asked: dig refuses)
        assert dnsmasq.query(f"{name}.{ZONE}").status == "NXDOMAIN"
    # The line netavark wrote for "a b" is not trusted: that network's file is
    # refused (events and inspect published the names above), and status says so.
    detail = until(lambda: source(agent)["detail"], what="fast path problem in status")
    assert detail.startswith(f"fast path off for network {NET2}: line ")
    text = status_text(agent.socket)
    assert "REFUSED NAMES (4)" in text
    [row] = [line.split("  ") for line in text.splitlines()
             if line.startswith(f"  podman:{podman.socket} container isolated ")]
    assert [cell.strip() for cell in row if cell.strip()] == [
        f"podman:{podman.socket} container isolated", "'isolated'",
        "has no network (--network none)"]
    assert f"fast path off for network {NET2}" in text


def test_service_killed_and_restarted_loses_nothing_and_leaves_nothing_stale(
        podman: Podman, dnsmasq: Dnsmasq, agent: Agent,
        watch_podman: Callable[..., None]) -> None:
    watch_podman()
    agent.start()
    podman.run("steady", "--network", NET1)
    podman.run("doomed", "--network", NET2)
    podman.run("renamed", "--network", NODNS)
    steady = v4(podman, "steady")[0]
    answers(dnsmasq, f"steady.{ZONE}", steady)
    answers(dnsmasq, f"doomed.{ZONE}", *v4(podman, "doomed"))
    answers(dnsmasq, f"renamed.{ZONE}", *v4(podman, "renamed"))

    podman.kill_service(signal.SIGKILL)
    src = until(lambda: (s := source(agent))["state"] == "disconnected" and s,
                what="the source to notice")
    assert src["detail"].startswith("reconnecting in ")
    assert src["last_error"]
    # The containers run on without the service: their names stay.
    assert dnsmasq.query(f"steady.{ZONE}").records == (steady,)
    assert dnsmasq.query(f"renamed.{ZONE}").status == "NOERROR"

    # Meanwhile, through the CLI (it needs no service):
    podman.rm("doomed")
    podman.rename("renamed", "renamed2")
    podman.run("newcomer", "--network", NODNS)

    podman.start_service()
    until(lambda: source(agent)["state"] == "connected", timeout=40, what="reconnected")
    nxdomain(dnsmasq, f"doomed.{ZONE}")
    nxdomain(dnsmasq, f"renamed.{ZONE}")
    answers(dnsmasq, f"renamed2.{ZONE}", *v4(podman, "renamed2"))
    answers(dnsmasq, f"newcomer.{ZONE}", *v4(podman, "newcomer"))
    assert dnsmasq.query(f"steady.{ZONE}").records == (steady,)
    assert source(agent)["objects"] == 3


def test_burst_of_twenty_answers_with_few_reloads(
        podman: Podman, dnsmasq: Dnsmasq, agent: Agent,
        watch_podman: Callable[..., None]) -> None:
    watch_podman()
    agent.start()
    reads_before = len(dnsmasq.reads())
    writes_before = agent.status()["sinks"][0]["writes"]
    names = [f"burst{i}" for i in range(20)]
    runs = [podman.popen("run", "-d", "--name", n, "--network", NET2,
                         "localhost/namesync-busybox:latest", "sleep", "1000") for n in names]
    for proc in runs:
        assert proc.wait(60) == 0, proc.stderr.read() if proc.stderr else ""
    template = "{{.Name}} {{(index .NetworkSettings.Networks \"NET\").IPAddress}}"
    out = podman.cli("inspect", "--format", template.replace("NET", NET2), *names).stdout
    for line in out.splitlines():
        name, ip = line.split()
        answers(dnsmasq, f"{name}.{ZONE}", ip)
    reloads = len(dnsmasq.reads()) - reads_before
    writes = agent.status()["sinks"][0]["writes"] - writes_before
    # Issue 11 changed this contract: a burst is paced by what a reload costs, and at
    # twenty names a reload costs almost nothing, so names go as they come (until then:
    # at most 10 reloads, bought with up to half a second of lag per name). What holds:
    # a burst never costs more than one reload per container, and never one for nothing.
    assert 1 <= reloads <= len(names), reloads
    assert writes == reloads


def test_fast_path_alone_publishes_while_the_service_is_down(
        podman: Podman, dnsmasq: Dnsmasq, agent: Agent,
        watch_podman: Callable[..., None]) -> None:
    """With no service there are no events and no inspect: a name that answers can only
    have come from netavark's aardvark-dns file."""
    podman.kill_service(signal.SIGKILL)
    watch_podman()
    agent.start()  # ready although the service is down
    src = source(agent)
    assert (src["state"], src["synced"], src["last_event"]) == ("disconnected", True, None)

    podman.run("quick", "--network", NET1)
    answers(dnsmasq, f"quick.{ZONE}", *v4(podman, "quick"))
    answers(dnsmasq, f"quick.{ZONE}", *v6(podman, "quick"), rtype="AAAA")
    podman.run("slow", "--network", NODNS)  # no file for this network: nothing to go on
    with contextlib.suppress(AssertionError):
        answers(dnsmasq, f"slow.{ZONE}", *v4(podman, "slow"), timeout=1)
        raise AssertionError("slow answered without the service")
    src = source(agent)
    assert (src["state"], src["last_event"]) == ("disconnected", None)

    podman.start_service()  # the listing confirms quick and brings slow
    answers(dnsmasq, f"slow.{ZONE}", *v4(podman, "slow"), timeout=40)
    answers(dnsmasq, f"quick.{ZONE}", *v4(podman, "quick"))
    podman.rm("quick")
    nxdomain(dnsmasq, f"quick.{ZONE}")


def test_unreadable_aardvark_file_is_reported_and_events_still_work(
        podman: Podman, dnsmasq: Dnsmasq, agent: Agent,
        watch_podman: Callable[..., None]) -> None:
    watch_podman()
    agent.start()
    AARDVARK_DIR.mkdir(parents=True, exist_ok=True)
    bogus = AARDVARK_DIR / "zz-bogus"
    try:
        bogus.write_text("surely not netavark\n")
        until(lambda: "zz-bogus" in (source(agent)["detail"] or ""), what="detail")
        assert source(agent)["detail"] == (
            "fast path off for network zz-bogus: line 1: expected GATEWAYS [DNS_SERVERS], "
            "got 3 fields")
        podman.run("unbothered", "--network", NET1)
        answers(dnsmasq, f"unbothered.{ZONE}", *v4(podman, "unbothered"))
    finally:
        bogus.unlink()
    until(lambda: source(agent)["detail"] is None, what="detail cleared")


# --- issue 10, defect 3: a forged line from an alias with a newline -------------------

FAKE_ID = "ab" * 32
FORGED = "forged"
# Everything after the newline becomes a line of its own in netavark's file; it claims
# an id of the forger's choosing and a name and address nobody gave it.
FORGING_ALIAS = f"x\n{FAKE_ID} 10.66.6.250  {FORGED}"


class DigWatch:
    """Ask dnsmasq for one name over and over (dig, in a thread) for as long as it runs:
    every answer it ever got, so "NXDOMAIN throughout" is checked, not sampled."""

    def __init__(self, dnsmasq: Dnsmasq, name: str) -> None:
        self.dnsmasq, self.name = dnsmasq, name
        self.answers: list[tuple[str, tuple[str, ...]]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            a = self.dnsmasq.query(self.name)
            self.answers.append((a.status, a.records))

    def __enter__(self) -> DigWatch:
        self._thread.start()
        until(lambda: self.answers, what=f"a first answer for {self.name}")
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(15)

    def only_nxdomain(self) -> None:
        assert len(self.answers) >= 10, self.answers
        assert {status for status, _ in self.answers} == {"NXDOMAIN"}, [
            a for a in self.answers if a[0] != "NXDOMAIN"][:5]


def forged_refusals(agent: Agent) -> list[dict[str, Any]]:
    return [r for r in agent.status()["table"]["rejected"] if r["kind"] == "aardvark line"]


def assert_forgery_shown(agent: Agent, podman: Podman, evil_id: str) -> None:
    refused = until(lambda: len(forged_refusals(agent)) == 2 and forged_refusals(agent),
                    timeout=20, what="both halves of the forged line refused in status")
    by_id = {r["object"]: r for r in refused}
    assert set(by_id) == {evil_id, FAKE_ID}
    assert by_id[FAKE_ID]["value"] == f"{FAKE_ID[:12]} 10.66.6.250 {FORGED},y,{evil_id[:12]}"
    assert by_id[FAKE_ID]["reason"].startswith(
        f"names {evil_id[:12]}, the short id of another container in this file")
    assert by_id[evil_id]["reason"].startswith("its short id ends line ")
    assert by_id[evil_id]["reason"].endswith(": one of its network aliases has a newline in it")
    text = status_text(agent.socket)
    assert "of network nsforge's aardvark-dns file" in text
    assert "fast path off for network nsforge: line " in text


@pytest.fixture
def forge_net(podman: Podman) -> Iterator[str]:
    """A network of its own: the forged line outlives its writer (netavark removes
    lines by container id), so its file is removed with the network after the test."""
    net = podman.network_create("nsforge", "10.89.73.0/24")
    yield net
    podman.remove_all()
    podman.cli("network", "rm", "-f", net)
    (AARDVARK_DIR / net).unlink(missing_ok=True)


def test_alias_with_a_newline_forges_nothing(
        podman: Podman, dnsmasq: Dnsmasq, agent: Agent, forge_net: str,
        watch_podman: Callable[..., None]) -> None:
    watch_podman()
    agent.start()
    podman.run("bystander", "--network", forge_net)
    answers(dnsmasq, f"bystander.{ZONE}", *v4(podman, "bystander"))
    with DigWatch(dnsmasq, f"{FORGED}.{ZONE}") as watch:
        evil = podman.run_via_api("evil", forge_net, [FORGING_ALIAS, "y"])
        assert f"\n{FAKE_ID} 10.66.6.250  {FORGED},y,{evil[:12]}\n".encode() in (
            AARDVARK_DIR / forge_net).read_bytes()  # what netavark really wrote
        assert_forgery_shown(agent, podman, evil)
        # Inspect publishes what the container really is; the newline alias is no label.
        answers(dnsmasq, f"evil.{ZONE}", *v4(podman, "evil"))
        answers(dnsmasq, f"y.{ZONE}", *v4(podman, "evil"))
        answers(dnsmasq, f"bystander.{ZONE}", *v4(podman, "bystander"))
        time.sleep(0.5)  # the watch keeps asking: a late publication would show
    watch.only_nxdomain()
    assert dnsmasq.query("x.dns.podman").status == "NXDOMAIN"

    # netavark removes lines by container id: the forged one outlives its writer, and
    # stays refused on its own.
    podman.rm("evil")
    podman.rm("bystander")
    until(lambda: [r["reason"] for r in forged_refusals(agent)] == [
        "ends with the short id " f"{evil[:12]} of another container "
        "(a network alias with a newline in it?)"], what="the leftover line refused")
    assert dnsmasq.query(f"{FORGED}.{ZONE}").status == "NXDOMAIN"


def test_alias_with_a_newline_forges_nothing_after_a_restart_while_the_service_is_down(
        podman: Podman, dnsmasq: Dnsmasq, agent: Agent, forge_net: str,
        watch_podman: Callable[..., None]) -> None:
    """No service: no inspect and no listing to check a line against; what the file
    alone shows must be enough to refuse it."""
    evil = podman.run_via_api("evil", forge_net, [FORGING_ALIAS, "y"])
    podman.run("bystander", "--network", NET2)
    podman.kill_service(signal.SIGKILL)
    watch_podman()
    with DigWatch(dnsmasq, f"{FORGED}.{ZONE}") as watch:
        agent.start()
        assert source(agent)["state"] == "disconnected"
        assert_forgery_shown(agent, podman, evil)
        # Another network's file is still believed.
        answers(dnsmasq, f"bystander.{ZONE}", *v4(podman, "bystander"))
        time.sleep(0.5)
        podman.start_service()
        until(lambda: source(agent)["state"] == "connected", timeout=40, what="reconnected")
        answers(dnsmasq, f"evil.{ZONE}", *v4(podman, "evil"))
        assert_forgery_shown(agent, podman, evil)
    watch.only_nxdomain()


# --- issue 10, defect 13: removed while the service is down ---------------------------


def test_container_removed_while_the_service_is_down_is_unpublished_promptly(
        podman: Podman, dnsmasq: Dnsmasq, agent: Agent,
        watch_podman: Callable[..., None]) -> None:
    watch_podman()
    agent.start()
    podman.run("leaving", "--network", NET1)
    podman.run("stopping", "--network", NET2)
    podman.run("staying", "--network", NET1)
    podman.run("nodns", "--network", NODNS)
    for name in ("leaving", "stopping", "staying", "nodns"):
        answers(dnsmasq, f"{name}.{ZONE}", *v4(podman, name))

    podman.kill_service(signal.SIGKILL)
    until(lambda: source(agent)["state"] == "disconnected", what="the source to notice")
    # The CLI (same storage) keeps working, and netavark removes the lines: that is
    # proof enough that they are gone, with no service to ask.
    podman.rm("leaving")
    nxdomain(dnsmasq, f"leaving.{ZONE}", timeout=2)
    podman.stop("stopping")
    nxdomain(dnsmasq, f"stopping.{ZONE}", timeout=2)
    assert dnsmasq.query(f"staying.{ZONE}").records == tuple(v4(podman, "staying"))
    # No aardvark file lists a container on a network without DNS: nothing proves it
    # went, so it stays until the service says so.
    assert dnsmasq.query(f"nodns.{ZONE}").status == "NOERROR"
    podman.start("stopping")  # its new line brings it back, still without the service
    answers(dnsmasq, f"stopping.{ZONE}", *v4(podman, "stopping"), timeout=5)

    podman.start_service()
    until(lambda: source(agent)["state"] == "connected", timeout=40, what="reconnected")
    assert dnsmasq.query(f"leaving.{ZONE}").status == "NXDOMAIN"
    answers(dnsmasq, f"stopping.{ZONE}", *v4(podman, "stopping"))
    assert source(agent)["objects"] == 3
