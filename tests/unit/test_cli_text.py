"""agentctl's pure pieces: text helpers, socket choice, dnsmasq argv, DNS wire format."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest

from agent.cli.agentctl import build_parser, choose_socket
from agent.cli.text import age, columns, duration, plain
from agent.daemon.dnsquery import DnsError, build_query, parse_reply
from agent.daemon.resolver_probe import parse_argv


def test_plain_drops_exception_names_and_errno() -> None:
    assert plain("FileNotFoundError: [Errno 2] No such file or directory: '/x'") == (
        "No such file or directory: '/x'")
    assert plain("events (ConnectionError: refused)") == "events (refused)"
    assert plain("pid 4 is not running") == "pid 4 is not running"


def test_ages_and_durations() -> None:
    assert duration(5) == "5s"
    assert duration(65) == "1m 05s"
    assert duration(7500) == "2h 05m"
    assert duration(90000) == "1d 1h"
    assert age(None, 0) == "never"
    assert age("1970-01-01T00:01:00.000Z", 125) == "1m 05s ago"


def test_columns_align_and_never_end_in_spaces() -> None:
    assert columns([["A", "NUM", "X"], ["long", "5", ""], ["b", "123", "z"]],
                   right={1}, indent="") == ["A     NUM  X", "long    5", "b     123  z"]


def test_socket_choice() -> None:
    env = {"XDG_RUNTIME_DIR": "/run/user/1000"}
    assert choose_socket(None, env, euid=1000).path == Path(
        "/run/user/1000/namesync/control.sock")
    assert choose_socket(None, env, euid=1000).is_user_default
    assert choose_socket(None, env, euid=0).path == Path("/run/namesync/control.sock")
    assert choose_socket(None, {**env, "NAMESYNC_SOCKET": "/s"}, euid=1000).origin == (
        "NAMESYNC_SOCKET")
    assert choose_socket(Path("/a"), {"NAMESYNC_SOCKET": "/s"}, euid=0).path == Path("/a")


@pytest.mark.parametrize("argv", [
    ["--socket", "/x", "--json", "list", "web"],
    ["list", "--socket", "/x", "web", "--json"],
    ["--socket", "/y", "list", "--socket", "/x", "--json", "web"],
])
def test_global_options_before_or_after_the_subcommand(argv: list[str]) -> None:
    args = build_parser().parse_args(argv)
    assert (args.socket, args.json, args.pattern) == (Path("/x"), True, "web")


def test_dnsmasq_argv() -> None:
    argv = ["dnsmasq", "--no-resolv", "--listen-address=127.0.0.2", "-p", "5353",
            "--addn-hosts=/run/a", "-H/run/b", "--conf-dir", "/etc/d"]
    assert parse_argv(argv) == {"listen-address": ["127.0.0.2"], "port": ["5353"],
                                "addn-hosts": ["/run/a", "/run/b"], "conf-dir": ["/etc/d"]}


def _reply(qid: int, rcode: int, answers: list[tuple[int, bytes]]) -> bytes:
    q = build_query("web.dns.test", 1, qid)
    head = struct.pack("!HHHHHH", qid, 0x8400 | rcode, 1, len(answers), 0, 0)
    body = q[12:]
    for rtype, rdata in answers:
        # A compressed owner name (pointer to the question at offset 12).
        body += struct.pack("!HHHIH", 0xC00C, rtype, 1, 0, len(rdata)) + rdata
    return head + body


def test_dns_reply_parsing() -> None:
    r = parse_reply(_reply(7, 0, [(1, bytes([10, 0, 0, 1])), (1, bytes([10, 0, 0, 2]))]), 7, 1)
    assert (r.rcode, r.addresses, r.authoritative) == ("NOERROR", ("10.0.0.1", "10.0.0.2"), True)
    assert parse_reply(_reply(7, 3, []), 7, 1).rcode == "NXDOMAIN"
    with pytest.raises(DnsError):
        parse_reply(_reply(8, 0, []), 7, 1)  # not our question
    with pytest.raises(DnsError):
        parse_reply(_reply(7, 0, [(1, bytes([10, 0, 0, 1]))])[:-3], 7, 1)
