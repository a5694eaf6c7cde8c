"""agentctl list / explain for containers: a real ``podman system service`` with real
containers, the real namesync-agent, a real dnsmasq, the real CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest

from agent.cli.text import plain
from tests.harness.agent import Agent, agentctl
from tests.harness.dnsmasq import Dnsmasq
from tests.harness.podman import AARDVARK_DIR, Podman
from tests.harness.wait import until

from .conftest import WriteConfig

pytestmark = [pytest.mark.integration, pytest.mark.podman]

NET = "nsctl"
LONG = "x" * 70  # a legal Podman name, but no DNS label: refused


@pytest.fixture(scope="module")
def podman_module(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Podman]:
    p = Podman(tmp_path_factory.mktemp("podman"))
    try:
        p.setup().start_service()
        p.network_create(NET, "10.89.90.0/24")
        yield p
    finally:
        p.teardown()


@pytest.fixture
def podman(podman_module: Podman) -> Iterator[Podman]:
    if podman_module.service is None:
        podman_module.start_service()
    yield podman_module
    podman_module.remove_all()


def ctl_json(agent: Agent, *args: str) -> tuple[int, Any]:
    run = agentctl(*args, "--json", "--socket", str(agent.socket), check=False)
    return run.returncode, json.loads(run.stdout)


def start(agent: Agent, write_config: WriteConfig, podman: Podman,
          static: dict[str, list[str]] | None = None) -> None:
    write_config(static, podman=f'socket = "{podman.socket}"\naardvark_dir = "{AARDVARK_DIR}"')
    agent.start()


def published(agent: Agent, name: str) -> bool:
    return any(n["name"] == name for n in ctl_json(agent, "list")[1]["names"])


def test_a_running_then_stopped_container(podman: Podman, dnsmasq: Dnsmasq, agent: Agent,
                                          write_config: WriteConfig) -> None:
    start(agent, write_config, podman)
    podman.run("web", "--network", NET)
    [(ip, _)] = podman.addresses("web").values()
    until(lambda: published(agent, "web.dns.podman"), what="web published")
    _, doc = ctl_json(agent, "list", "*.dns.podman")
    [entry] = doc["names"]
    assert (entry["addresses"], entry["kind"], entry["display"]) == (
        [ip], "container", "container web")
    assert entry["source"] == f"podman:{podman.socket}"
    rc, ex = ctl_json(agent, "explain", "web.dns.podman")
    assert rc == 0, ex["verdict"]
    assert ex["claim"]["display"] == "container web"
    assert ex["answer"]["addresses"] == [ip]
    assert ex["verdict"]["text"].startswith(f"web.dns.podman resolves to {ip} at dnsmasq pid ")

    podman.stop("web")
    until(lambda: dnsmasq.query("web.dns.podman").status == "NXDOMAIN", what="web gone")
    rc, ex = ctl_json(agent, "explain", "web.dns.podman")
    assert rc == 1
    assert ex["claim"] is None
    kinds = {m["kind"]: m for m in ex["misses"]}
    # What namesync saw go away, and what Podman says the container is now.
    gone, stopped = kinds["gone"], kinds["stopped"]
    assert (gone["addresses"], gone["party"]["display"]) == ([ip], "container web")
    assert (stopped["name"], stopped["state"]) == ("web", "exited")
    assert ex["answer"]["rcode"] == "NXDOMAIN"
    assert ex["verdict"] == {
        "ok": False, "text": "web.dns.podman is not published: container web exists but is "
        "exited", "fix": "podman start web"}
    human = agentctl("explain", "web.dns.podman", "--socket", str(agent.socket), check=False)
    assert "  nearest miss published by container web" in human.stdout
    assert human.stdout.rstrip().endswith("fix: podman start web")

    podman.rm("web")
    until(lambda: all(m["kind"] != "stopped"
                      for m in ctl_json(agent, "explain", "web.dns.podman")[1]["misses"]),
          what="removed: no longer stopped")
    _, ex = ctl_json(agent, "explain", "web.dns.podman")
    assert ex["verdict"] == {
        "ok": False,
        "text": f"web.dns.podman is not published: published by container web "
                f"(podman:{podman.socket}) until it went away",
        "fix": "start it again: its name comes back as soon as it runs"}


def test_a_container_stopped_before_the_agent_started(
        podman: Podman, dnsmasq: Dnsmasq, agent: Agent, write_config: WriteConfig) -> None:
    podman.run("old", "--network", NET)
    podman.stop("old")
    start(agent, write_config, podman)
    rc, ex = ctl_json(agent, "explain", "old.dns.podman")
    assert rc == 1
    assert [m["kind"] for m in ex["misses"]] == ["stopped"]
    assert ex["verdict"] == {
        "ok": False, "text": "old.dns.podman is not published: container old exists but is "
        "exited", "fix": "podman start old"}


def test_a_refused_spelling_and_a_conflict_loser(podman: Podman, dnsmasq: Dnsmasq,
                                                 agent: Agent,
                                                 write_config: WriteConfig) -> None:
    start(agent, write_config, podman, static={"db.dns.podman": ["192.0.2.5"]})
    podman.run(LONG, "--network", NET)
    podman.run("db", "--network", NET)
    until(lambda: len(ctl_json(agent, "list")[1]["lost"]) == 1
          and ctl_json(agent, "list")[1]["refused"], what="loser and refusal in list")
    _, doc = ctl_json(agent, "list")
    assert len(doc["lost"]) == 1, doc
    lost = doc["lost"][0]
    assert (lost["name"], lost["display"], lost["winner"]["kind"]) == (
        "db.dns.podman", "container db", "static")
    # (netavark's line for it may be refused too, as an 'aardvark line')
    refusals = [r for r in doc["refused"] if r["kind"] == "container"]
    assert len(refusals) == 1, doc
    refused = refusals[0]
    assert refused["value"] == LONG and refused["display"] == f"container {LONG}"
    assert "63" in refused["reason"]
    human = agentctl("list", "--socket", str(agent.socket), check=False).stdout
    assert "NOT PUBLISHED (" in human
    assert "lost: kept by [[static]] db.dns.podman (static)" in human

    # The static entry keeps the name; explain says who else wanted it.
    rc, ex = ctl_json(agent, "explain", "db.dns.podman")
    assert rc == 0, ex
    assert ex["claim"]["kind"] == "static"
    assert [p["display"] for p in ex["losers"]] == ["container db"]
    assert dnsmasq.query("db.dns.podman").records == ("192.0.2.5",)

    # Asking for the name the container meant finds the refusal.
    rc, ex = ctl_json(agent, "explain", f"{'x' * 63}.dns.podman")
    assert rc == 1
    assert ex["misses"][0]["kind"] == "refused", ex
    assert ex["verdict"]["text"].startswith(f"{'x' * 63}.dns.podman is not published: "
                                            f"container {LONG} (podman:")
    assert ex["verdict"]["fix"].startswith("rename it to a DNS-safe name")
    # And asking with the container's own spelling, which is no DNS name at all.
    rc, ex = ctl_json(agent, "explain", f"{LONG}.dns.podman")
    assert rc == 1 and ex["name"] is None
    assert ex["verdict"]["text"].startswith(f"'{LONG}.dns.podman' is not a DNS name: label ")
    assert f"; container {LONG} (podman:" in ex["verdict"]["text"]


def test_status_when_the_service_is_down_but_netavark_files_publish(
        podman: Podman, dnsmasq: Dnsmasq, agent: Agent, write_config: WriteConfig) -> None:
    """Podman's API socket gone, a container still running: its name comes from
    netavark's files. status says the source is down (exit 1), that it still publishes
    that name, and how to start the service, each once."""
    podman.run("ctr", "--network", NET)
    podman.stop_service()
    start(agent, write_config, podman)
    until(lambda: dnsmasq.query("ctr.dns.podman").status == "NOERROR", what="ctr from files")
    until(lambda: [p["what"] for p in agent.status()["health"]["problems"]]
          == [f"source podman:{podman.socket}"], what="the source's outage in status")
    run = agentctl("status", "--socket", str(agent.socket), check=False)
    assert run.returncode == 1, run.stdout
    lines = run.stdout.splitlines()
    assert "degraded" in lines[0]
    [row] = [i for i, line in enumerate(lines) if line.startswith(f"  podman:{podman.socket}")]
    assert lines[row].split()[1:4] == ["disconnected", "1", "0"]
    assert lines[row + 1] == "    still publishing its 1 name (last known state)"
    assert "Error" not in run.stdout and "%2F" not in run.stdout  # plain words, no URLs
    assert "    fix: start Podman's API service: systemctl enable --now podman.socket" in lines
    _, doc = ctl_json(agent, "status")
    [problem] = doc["health"]["problems"]
    assert problem["what"] == f"source podman:{podman.socket}"
    assert run.stdout.count(plain(problem["problem"])) == 1  # said once


def test_watch_sees_a_container_come_and_go(podman: Podman, dnsmasq: Dnsmasq, agent: Agent,
                                            write_config: WriteConfig) -> None:
    start(agent, write_config, podman)
    proc = subprocess.Popen(
        [sys.executable, "-m", "agent.cli.agentctl", "watch", "--socket", str(agent.socket)],
        stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().endswith("0 names published; watching for changes\n")
        podman.run("live", "--network", NET)
        [(ip, _)] = podman.addresses("live").values()
        line = proc.stdout.readline().split()
        assert line[1:5] == ["+", "appeared", "live.dns.podman", ip]
        podman.rm("live")
        line = proc.stdout.readline().split()
        assert line[1:4] == ["-", "vanished", "live.dns.podman"]
    finally:
        proc.terminate()
        proc.wait(timeout=10)
