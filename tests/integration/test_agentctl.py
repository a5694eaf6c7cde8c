"""agentctl list / explain / watch and the exit codes of status and reload, as a user runs
them: the real namesync-agent process, a real dnsmasq, the real CLI in a subprocess."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.harness.agent import Agent, agentctl
from tests.harness.dnsmasq import Dnsmasq
from tests.harness.rootless import SYSTEM_PYTHON, Session, user_python_problem
from tests.harness.users import User
from tests.harness.wait import until

from .conftest import WriteConfig

pytestmark = pytest.mark.integration


def ctl(agent: Agent, *args: str, env: dict[str, str] | None = None
        ) -> subprocess.CompletedProcess[str]:
    return agentctl(*args, "--socket", str(agent.socket), check=False, env=env)


def ctl_json(agent: Agent, *args: str) -> tuple[int, Any]:
    run = ctl(agent, *args, "--json")
    return run.returncode, json.loads(run.stdout)


def test_socket_anywhere_and_from_the_environment(dnsmasq: Dnsmasq, agent: Agent,
                                                  write_config: WriteConfig) -> None:
    write_config({"a.dns.test": ["10.0.0.1"]})
    agent.start()
    before = agentctl("--socket", str(agent.socket), "status", check=False)
    after = agentctl("status", "--socket", str(agent.socket), check=False)
    env = agentctl("status", env={"NAMESYNC_SOCKET": str(agent.socket)}, check=False)
    assert before.returncode == after.returncode == env.returncode == 0, before.stderr
    assert "healthy" in before.stdout.splitlines()[0]
    # --socket wins over the environment.
    run = agentctl("status", "--socket", "/nonexistent.sock",
                   env={"NAMESYNC_SOCKET": str(agent.socket)}, check=False)
    assert run.returncode == 3
    assert run.stderr == ("agentctl: no agent listening on /nonexistent.sock "
                          "(is namesync running?)\n")


def test_list_and_explain_a_static_name(dnsmasq: Dnsmasq, agent: Agent,
                                        write_config: WriteConfig, public_tmp: Path) -> None:
    write_config({"web.dns.test": ["10.0.0.1", "fd00::1"], "db.dns.test": ["10.0.0.2"]})
    agent.start()
    rc, doc = ctl_json(agent, "list")
    assert rc == 0
    assert [(n["name"], n["addresses"], n["source"], n["kind"]) for n in doc["names"]] == [
        ("db.dns.test", ["10.0.0.2"], "static", "static"),
        ("web.dns.test", ["10.0.0.1", "fd00::1"], "static", "static")]
    assert all(n["since"] for n in doc["names"])
    rc, doc = ctl_json(agent, "list", "web")
    assert [n["name"] for n in doc["names"]] == ["web.dns.test"]
    human = ctl(agent, "list", "*.dns.test")
    assert human.returncode == 0
    lines = human.stdout.splitlines()
    assert lines[0].split() == ["NAME", "ADDRESSES", "SOURCE", "OBJECT", "SINCE"]
    assert lines[2].startswith("web.dns.test  10.0.0.1, fd00::1  static  [[static]] web.dns.test")
    assert lines[2].endswith("ago") or lines[2].endswith("just now")

    rc, ex = ctl_json(agent, "explain", "WEB.dns.test.")
    assert rc == 0, ex["verdict"]
    assert ex["name"] == "web.dns.test"
    assert ex["claim"]["addresses"] == ["10.0.0.1", "fd00::1"]
    files = {f["kind"]: f for f in ex["files"]}
    assert files["dnsmasq"]["lines"] == ["10.0.0.1 web.dns.test", "fd00::1 web.dns.test"]
    assert files["hosts_file"]["present"] is True
    assert ex["resolver"]["pid"] == dnsmasq.pid
    assert (ex["resolver"]["address"], ex["resolver"]["port"]) == ("127.0.0.1", dnsmasq.port)
    assert ex["resolver"]["reads_file"] is True
    assert ex["answer"]["rcode"] == "NOERROR"
    assert sorted(ex["answer"]["addresses"]) == ["10.0.0.1", "fd00::1"]
    assert ex["verdict"] == {
        "ok": True, "fix": None,
        "text": f"web.dns.test resolves to 10.0.0.1, fd00::1 at dnsmasq pid {dnsmasq.pid} "
                f"(127.0.0.1 port {dnsmasq.port})"}
    human = ctl(agent, "explain", "web.dns.test")
    assert human.returncode == 0
    assert human.stdout.splitlines()[-1] == "OK: " + ex["verdict"]["text"]


def test_explain_a_name_in_no_zone_and_in_another_zone(dnsmasq: Dnsmasq, agent: Agent,
                                                       write_config: WriteConfig) -> None:
    write_config({"web.dns.test": ["10.0.0.1"]})
    agent.start()
    rc, ex = ctl_json(agent, "explain", "web.example.org")
    assert rc == 1
    assert ex["zone"] is None and ex["claim"] is None
    assert ex["misses"][0]["kind"] == "other_zone" and ex["misses"][0]["name"] == "web.dns.test"
    assert ex["verdict"]["text"] == ("web.example.org is in none of namesync's zones; "
                                     "web.dns.test is published ([[static]] web.dns.test)")
    assert ex["verdict"]["fix"] == "use web.dns.test"
    rc, ex = ctl_json(agent, "explain", "nothing.example.org")
    assert rc == 1
    assert ex["verdict"]["text"].startswith("nothing.example.org is in none of namesync's zones (")
    rc, ex = ctl_json(agent, "explain", "not a name")
    assert rc == 1 and ex["name"] is None
    assert ex["verdict"]["text"].startswith("'not a name' is not a DNS name: ")


def test_status_and_reload_exit_codes(dnsmasq: Dnsmasq, agent: Agent,
                                      write_config: WriteConfig) -> None:
    write_config({"a.dns.test": ["10.0.0.1"]})
    agent.start()
    assert ctl(agent, "status").returncode == 0
    run = ctl(agent, "reload")
    assert (run.returncode, run.stdout) == (0, f"reloaded {agent.config}\n")

    # A config with an error: refused, 2, the old config stays.
    agent.set_config("[daemon]\ncoalesce_ms = -1\n")
    run = ctl(agent, "reload")
    assert run.returncode == 2
    assert "reload refused" in run.stderr and "coalesce_ms" in run.stderr
    rc, doc = ctl_json(agent, "status")
    assert rc == 1 and doc["health"]["state"] == "degraded", doc["health"]
    assert [p["what"] for p in doc["health"]["problems"]] == ["config"]

    # dnsmasq's pid file gone: the change is written, nobody is signalled.
    dnsmasq.pid_file.unlink()
    write_config({"a.dns.test": ["10.0.0.2"]})
    run = ctl(agent, "reload")
    assert run.returncode == 1, run.stdout + run.stderr
    assert run.stderr.startswith(f"reloaded {agent.config}, but not delivered:\n  - dnsmasq ")
    assert "does not exist" in run.stderr
    rc, doc = ctl_json(agent, "status")
    assert rc == 1
    [problem] = doc["health"]["problems"]
    assert problem["problem"].startswith("dnsmasq not signalled: pid file ")
    human = ctl(agent, "status")
    assert human.returncode == 1
    assert human.stdout.count("does not exist") == 1  # each error once
    assert "degraded (1 problem)" in human.stdout.splitlines()[0]
    # And explain says why dig still gets the old answer.
    rc, ex = ctl_json(agent, "explain", "a.dns.test")
    assert rc == 1
    assert ex["resolver"]["pid"] is None
    assert ex["verdict"]["text"].startswith("a.dns.test resolves on this host through the "
                                            "hosts block of ")

    agent.stop()
    assert ctl(agent, "status").returncode == 3
    assert ctl(agent, "reload").returncode == 3
    rc, doc = ctl_json(agent, "list")
    assert rc == 3 and doc["error"]["code"] == "no_daemon"


def test_explain_when_dnsmasq_was_not_signalled(dnsmasq: Dnsmasq, agent: Agent,
                                                write_config: WriteConfig) -> None:
    """dnsmasq runs, but its pid file is elsewhere: it keeps the old answer; explain asks
    it live and says why."""
    write_config({"a.dns.test": ["10.0.0.1"]}, hosts_file=False)
    agent.start()
    assert dnsmasq.query("a.dns.test").records == ("10.0.0.1",)
    moved = dnsmasq.pid_file.with_name("moved.pid")
    dnsmasq.pid_file.rename(moved)
    write_config({"a.dns.test": ["10.0.0.2"]}, hosts_file=False)
    assert ctl(agent, "reload").returncode == 1
    # Point the daemon's pid file back (as a user fixing it would) without a new write:
    # explain finds this dnsmasq, asks it, and sees the stale answer.
    moved.rename(dnsmasq.pid_file)
    rc, ex = ctl_json(agent, "explain", "a.dns.test")
    assert rc == 1
    assert ex["answer"]["addresses"] == ["10.0.0.1"]
    assert ex["verdict"]["text"].startswith(
        f"dnsmasq pid {dnsmasq.pid} (127.0.0.1 port {dnsmasq.port}) answers 10.0.0.1: it was "
        "not signalled after the last change (pid file ")
    assert ex["verdict"]["fix"].startswith("point [dnsmasq] pid_file at the dnsmasq")
def test_watch_shows_names_appearing_and_vanishing(dnsmasq: Dnsmasq, agent: Agent,
                                                   write_config: WriteConfig) -> None:
    write_config({"a.dns.test": ["10.0.0.1"]})
    agent.start()
    proc = subprocess.Popen(
        [sys.executable, "-m", "agent.cli.agentctl", "watch", "--json",
         "--socket", str(agent.socket)], stdout=subprocess.PIPE, text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        assert proc.stdout is not None
        events = [json.loads(proc.stdout.readline()) for _ in range(2)]
        assert [(e["event"], e.get("name")) for e in events] == [
            ("present", "a.dns.test"), ("synced", None)]
        write_config({"b.dns.test": ["10.0.0.2"]})
        agent.reload()
        got = sorted((e["event"], e["name"], tuple(e["addresses"]))
                     for e in (json.loads(proc.stdout.readline()) for _ in range(2)))
        assert got == [("appeared", "b.dns.test", ("10.0.0.2",)),
                       ("vanished", "a.dns.test", ("10.0.0.1",))]
        assert agent.status()["daemon"]["watchers"] == 1
    finally:
        proc.terminate()
        proc.wait(timeout=10)
    # The daemon lets go of the watcher once the client hung up.
    until(lambda: agent.status()["daemon"]["watchers"] == 0, what="watcher released")
    _, ex = ctl_json(agent, "explain", "a.dns.test")
    assert ex["misses"][0]["kind"] == "gone"
    assert ex["verdict"]["text"] == ("a.dns.test is not published: published by "
                                     "[[static]] a.dns.test (static) until it went away")


def test_an_unpublished_host_record_is_not_counted_as_published(
        dnsmasq: Dnsmasq, agent: Agent, write_config: WriteConfig) -> None:
    write_config(host='interfaces = ["nsnone0"]')
    agent.start()
    _, doc = ctl_json(agent, "status")
    hosts = [s for s in doc["sources"] if s["kind"] == "host"]
    assert len(hosts) == 1, [(s["kind"], s["name"]) for s in doc["sources"]]
    host = hosts[0]
    assert (host["names"], host["refused"]) == (0, 1)
    human = ctl(agent, "status").stdout
    [row] = [line for line in human.splitlines()
             if line.startswith(f"  {host['name']} ") and "connected" in line]
    assert row.split()[1:4] == ["connected", "0", "1"]
    rc, ex = ctl_json(agent, "explain", "host.dns.host")
    assert rc == 1
    assert ex["misses"][0]["kind"] == "refused"
    assert ex["verdict"]["text"].startswith("host.dns.host is not published: ")
    assert "no interface nsnone0" in ex["verdict"]["text"]
    assert ex["verdict"]["fix"] is None


def test_a_user_talks_to_their_own_agent_by_default(
        dnsmasq: Dnsmasq, agent: Agent, write_config: WriteConfig,
        unix_user: Callable[[str], User], tmp_path: Path) -> None:
    why = user_python_problem()
    if why:
        pytest.skip(why)
    session = Session(unix_user("ctl"), tmp_path)

    def as_user(*args: str) -> subprocess.CompletedProcess[str]:
        return session.run(str(SYSTEM_PYTHON), "-m", "agent.cli.agentctl", *args, check=False)

    run = as_user("status")
    assert run.returncode == 3, run.stderr
    assert run.stderr == (
        f"agentctl: no agent listening on {session.runtime}/namesync/control.sock (is namesync "
        "running?)\n  (agentctl talks to your user agent by default: `systemctl --user start "
        "namesync`; for the system agent: sudo agentctl, or --socket "
        "/run/namesync/control.sock)\n")
    # The system agent's socket (here the test agent's) is root-only: said plainly, exit 4.
    write_config({"a.dns.test": ["10.0.0.1"]})
    agent.start()
    # Let the user reach the socket file itself (pytest's tmp dirs are 0700), for now.
    opened = [d for d in (agent.dir, *agent.dir.parents)
              if d.is_relative_to(tmp_path.parents[2]) and d != tmp_path.parents[2]]
    modes = {d: d.stat().st_mode & 0o777 for d in opened}
    try:
        for d in opened:
            d.chmod(modes[d] | 0o005)
        run = as_user("list", "--socket", str(agent.socket))
    finally:
        for d, mode in modes.items():
            d.chmod(mode)
    assert run.returncode == 4, run.stderr
    assert run.stderr.startswith(f"agentctl: permission denied on {agent.socket}")
    assert "Traceback" not in run.stderr
