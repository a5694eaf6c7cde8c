"""Which path serves the names, namesync's dnsmasq command line, and the [resolved] keys."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from agent.config.load import embedded_default_text, parse_config
from agent.config.schema import Config, ConfigError, DnsmasqConfig
from agent.resolvers.path import DnsPath, choose_path
from agent.resolvers.resolved import ResolvedState
from agent.resolvers.route import dnsmasq_spec
from agent.resolvers.view import ResolverView


def NM(running: bool, mode: str | None) -> ResolverView:
    return ResolverView("networkmanager", True, running, mode)


RESOLVED_UP = ResolvedState(bus="connected", running=True, owner=":1.7")
RESOLVED_DOWN = ResolvedState(bus="connected")


@pytest.mark.parametrize(("nm", "resolved", "want"), [
    (NM(True, "dnsmasq"), RESOLVED_UP, DnsPath.NM_DNSMASQ),
    (NM(True, "dnsmasq"), None, DnsPath.NM_DNSMASQ),
    (NM(True, "systemd-resolved"), RESOLVED_UP, DnsPath.RESOLVED),
    (NM(False, None), RESOLVED_UP, DnsPath.RESOLVED),
    (None, RESOLVED_UP, DnsPath.RESOLVED),
    (NM(True, "default"), RESOLVED_DOWN, DnsPath.HOSTS),
    (None, None, DnsPath.HOSTS),
])
def test_choose_path(
    nm: ResolverView | None, resolved: ResolvedState | None, want: DnsPath
) -> None:
    assert choose_path(Config(), nm, resolved).path == want


def test_resolved_path_off_by_config() -> None:
    off = Config(resolved=dataclasses.replace(Config().resolved, enabled=False))
    choice = choose_path(off, None, RESOLVED_UP)
    assert choice.path == DnsPath.HOSTS and "resolved.enabled" in choice.reason
    no_sink = Config(dnsmasq=DnsmasqConfig(enabled=False))
    assert choose_path(no_sink, None, RESOLVED_UP).path == DnsPath.HOSTS


def test_dnsmasq_argv_defaults() -> None:
    argv = dnsmasq_spec(Config()).argv()
    assert argv[0] == "dnsmasq"
    # never the machine's own dnsmasq config, never a wildcard socket
    assert "--conf-file=/dev/null" in argv and "--bind-interfaces" in argv
    assert "--listen-address=127.0.0.153" in argv and "--listen-address=198.18.53.53" in argv
    assert "--port=53" in argv and "--server=127.0.0.53" in argv
    assert "--addn-hosts=/run/namesync/addn-hosts" in argv
    assert [a for a in argv if a.startswith("--local=")] == [
        "--local=/dns.libvirt/", "--local=/dns.podman/", "--local=/dns.host/"]


def test_dnsmasq_argv_without_containers() -> None:
    text = '[resolved]\ncontainers = false\nport = 5399\nlisten = "127.0.0.2"\n'
    argv = dnsmasq_spec(parse_config(text, "t")).argv()
    assert "--listen-address=127.0.0.2" in argv and "--port=5399" in argv
    assert not [a for a in argv if a.startswith("--server=")]
    assert "--listen-address=198.18.53.53" not in argv


def test_default_config_has_the_resolved_defaults() -> None:
    assert parse_config(embedded_default_text(), "default").resolved == Config().resolved


def test_resolved_keys_are_checked() -> None:
    text = ('[resolved]\nlink = "a/b"\nlink_address = "nope"\nport = 5399\n'
            'upstream = "1.2.3.4#99999"\npid_file = "rel"\nextra = 1\n')
    with pytest.raises(ConfigError) as e:
        parse_config(text, "t")
    problems = "\n".join(e.value.problems)
    for key in ("resolved.link:", "resolved.link_address:", "resolved.upstream:",
                "resolved.pid_file:", "resolved.extra: unknown key",
                "resolved.port: containers = true needs port 53"):
        assert key in problems
    assert parse_config('[resolved]\nupstream = "127.0.0.1#5353"\n', "t").resolved.upstream \
        == "127.0.0.1#5353"
    assert Path("/run/namesync/dnsmasq.pid") == Config().resolved.pid_file
