"""A torn, deep, huge or out-of-range config on a running daemon: refused with a short
reason, the running config and its answers kept (issue 10 defects 4, 5, 6, 10).

Real dnsmasq, real namesync-agent process, signalled with SIGHUP or `agentctl reload`.
"""

from __future__ import annotations

import json
import subprocess

import pytest

from agent.config.kinds import UID_MAX
from tests.harness.agent import Agent, agentctl
from tests.harness.dnsmasq import Dnsmasq
from tests.harness.wait import until

from .conftest import WriteConfig

pytestmark = pytest.mark.integration  # every wait here is bounded (until, subprocess timeouts)

KEEP = {"keep.dns.test": ["10.0.0.1"], "other.dns.test": ["10.0.0.2", "fd00::2"]}


def running(dnsmasq: Dnsmasq, agent: Agent, write_config: WriteConfig) -> bytes:
    write_config(KEEP)
    agent.start()
    until(lambda: dnsmasq.query("keep.dns.test").records == ("10.0.0.1",), what="keep answers")
    return dnsmasq.addn_hosts.read_bytes()


def assert_kept(dnsmasq: Dnsmasq, agent: Agent, addn_hosts: bytes, reads: int) -> None:
    assert dnsmasq.query("keep.dns.test").records == ("10.0.0.1",)
    assert dnsmasq.query("other.dns.test").records == ("10.0.0.2",)
    assert dnsmasq.addn_hosts.read_bytes() == addn_hosts
    assert len(dnsmasq.reads()) == reads
    assert agent.status()["sources"][0]["objects"] == 2


def check_config(agent: Agent) -> subprocess.CompletedProcess[str]:
    return subprocess.run(agent.command("--check-config"), capture_output=True, text=True,
                          timeout=60)


def reload_cli(agent: Agent) -> subprocess.CompletedProcess[str]:
    return agentctl("--socket", str(agent.socket), "reload", check=False)


def test_zero_byte_config_is_refused_and_sighup_keeps_the_running_one(
        dnsmasq: Dnsmasq, agent: Agent, write_config: WriteConfig) -> None:
    addn_hosts = running(dnsmasq, agent, write_config)
    reads = len(dnsmasq.reads())
    agent.config.write_bytes(b"")  # a non-atomic save caught half-way
    agent.reload()
    error = agent.status()["daemon"]["config_error"]
    assert error == f"invalid config {agent.config}:\n  - empty file: refused (a save " \
        "interrupted half-way looks like this); to run on the defaults, put a comment in " \
        "it or remove it"
    assert_kept(dnsmasq, agent, addn_hosts, reads)
    run = check_config(agent)
    assert run.returncode == 2, run
    assert "empty file: refused" in run.stderr


def test_config_of_comments_only_means_the_defaults(agent: Agent,
                                                    write_config: WriteConfig) -> None:
    agent.set_config("# everything at its default\n")
    run = check_config(agent)
    assert run.returncode == 0, run.stderr
    assert run.stdout == f"{agent.config}: OK (0 static names)\n"


def test_deeply_nested_toml_is_a_clean_config_error(
        dnsmasq: Dnsmasq, agent: Agent, write_config: WriteConfig) -> None:
    addn_hosts = running(dnsmasq, agent, write_config)
    reads = len(dnsmasq.reads())
    agent.set_config("x = " + "[" * 100_000 + "]" * 100_000 + "\n")
    run = reload_cli(agent)
    assert run.returncode == 2
    assert run.stderr == ("reload refused, still running the previous config; "
                          f"{agent.config}:\n  - TOML syntax: values nested too deeply\n")
    run = check_config(agent)
    assert run.returncode == 2
    assert run.stderr == (f"namesync-agent: invalid config {agent.config}:\n"
                          "  - TOML syntax: values nested too deeply\n")
    assert_kept(dnsmasq, agent, addn_hosts, reads)
    assert "Traceback" not in agent.log.read_text()


@pytest.mark.parametrize("megabytes", [5, 10])
def test_huge_name_is_quoted_short_in_status_and_reload(
        dnsmasq: Dnsmasq, agent: Agent, write_config: WriteConfig, megabytes: int) -> None:
    addn_hosts = running(dnsmasq, agent, write_config)
    reads = len(dnsmasq.reads())
    huge = "a" * (megabytes << 20)
    write_config({**KEEP, f"{huge}.dns.test": ["10.0.0.9"]})
    run = reload_cli(agent)
    assert run.returncode == 2
    assert run.stderr.startswith("reload refused, still running the previous config;")
    assert "static[2].name: label 'aaa" in run.stderr
    assert f"({len(huge)} characters)" in run.stderr
    assert len(run.stderr) < 2000
    status = agentctl("--socket", str(agent.socket), "status", "--json", check=False)
    assert len(status.stdout) < 20_000
    assert "static[2].name" in json.loads(status.stdout)["daemon"]["config_error"]
    assert_kept(dnsmasq, agent, addn_hosts, reads)


def test_uid_out_of_range_is_refused(dnsmasq: Dnsmasq, agent: Agent,
                                     write_config: WriteConfig) -> None:
    addn_hosts = running(dnsmasq, agent, write_config)
    reads = len(dnsmasq.reads())
    text = agent.config.read_text().replace(
        "[control]", "[control]\nallow_uids = [99999999999999999999999]")
    agent.set_config(text)
    reason = f"control.allow_uids: not uids (integers 0..{UID_MAX}): [99999999999999999999999]"
    run = check_config(agent)
    assert run.returncode == 2 and reason in run.stderr, run
    agent.reload()
    assert reason in agent.status()["daemon"]["config_error"]
    assert_kept(dnsmasq, agent, addn_hosts, reads)
