"""``agentctl``: ask a running namesync-agent what it is doing, and why a name resolves or not.

Exit codes follow ``systemctl is-active`` habits, for every command that talks
to the daemon:
  0  healthy / done
  1  degraded (status), not delivered (reload), name not resolving (explain)
  2  usage or config error; reload refused
  3  no agent running at the socket
  4  cannot tell: permission denied, or the daemon's answer was unusable
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent import version
from agent.config.load import default_config_path, default_socket_path, load_config
from agent.config.schema import ConfigError, ControlConfig
from agent.control.client import Client, ControlError
from agent.resolvers.setup import run_setup

from . import names as names_out
from .format import format_status

EXIT_OK = 0
EXIT_DEGRADED = 1
EXIT_USAGE = 2
EXIT_NOT_RUNNING = 3
EXIT_UNKNOWN = 4

SOCKET_ENV = "NAMESYNC_SOCKET"


@dataclass(frozen=True)
class Target:
    """The control socket agentctl talks to, and how it was chosen."""

    path: Path
    origin: str  # "--socket", "NAMESYNC_SOCKET", "user default", "system default"

    @property
    def is_user_default(self) -> bool:
        return self.origin == "user default"


def choose_socket(arg: Path | None, env: Mapping[str, str] | None = None,
                  euid: int | None = None) -> Target:
    env = os.environ if env is None else env
    if arg is not None:
        return Target(arg, "--socket")
    if env.get(SOCKET_ENV):
        return Target(Path(env[SOCKET_ENV]), SOCKET_ENV)
    path = default_socket_path(euid, env)
    return Target(path, "system default" if path == ControlConfig.socket else "user default")


def _common() -> argparse.ArgumentParser:
    """Options accepted before or after the subcommand.

    SUPPRESS keeps a subparser from resetting what was given before the
    subcommand: `agentctl --socket X status` and `agentctl status --socket X`
    mean the same.
    """
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument(
        "--socket",
        type=Path,
        metavar="PATH",
        default=argparse.SUPPRESS,
        # The same text whoever builds the man page: no path of the building user.
        help=f"control socket (default: ${SOCKET_ENV}, else {ControlConfig.socket} as root "
        "and your user agent's $XDG_RUNTIME_DIR/namesync/control.sock otherwise)",
    )
    p.add_argument("--json", action="store_true", default=argparse.SUPPRESS,
                   help="machine-readable output (JSON; JSON lines for watch)")
    return p


def _add_setup(sub: Any, common: argparse.ArgumentParser) -> None:
    st = sub.add_parser(
        "setup",
        parents=[common],
        help="prepare the path that serves namesync's names (root, once)",
        description="NetworkManager in dnsmasq mode: write namesync.conf into its dnsmasq.d "
        "(addn-hosts= and local=/ZONE/ for every zone in [dnsmasq] local_zones) and have "
        "NetworkManager restart its dnsmasq over D-Bus. systemd-resolved: write the "
        "NetworkManager drop-in that leaves namesync's link unmanaged and the "
        "containers.conf drop-in that gives rootful containers the link's address as DNS "
        "server ([resolved]); namesync registers the zones with resolved itself. "
        "Idempotent; --remove deletes every drop-in.",
    )
    st.add_argument(
        "--config",
        type=Path,
        metavar="PATH",
        help=f"namesync config to take paths and zones from (default: {default_config_path()})",
    )
    mode = st.add_mutually_exclusive_group()
    mode.add_argument(
        "--check",
        action="store_true",
        help="report what is missing, change nothing (exit 1 if anything is)",
    )
    mode.add_argument("--remove", action="store_true", help="undo setup")


def build_parser() -> argparse.ArgumentParser:
    """agentctl's whole command line (man page and shell completion are generated from it)."""
    common = _common()
    p = argparse.ArgumentParser(
        prog="agentctl",
        parents=[common],
        description="Control a running namesync-agent: what it publishes, and why a name "
        "resolves or not.",
        epilog="Exit codes: 0 healthy/done, 1 degraded/not delivered/not resolving, "
        "2 usage or config error (reload refused), 3 no agent running, 4 cannot tell.",
    )
    p.add_argument("--version", action="version", version=f"agentctl {version()}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    sub.add_parser("status", parents=[common],
                   help="sources, sinks, problems, conflicts and refused names "
                   "(exit 0 healthy, 1 degraded, 3 not running)")
    sub.add_parser("reload", parents=[common],
                   help="re-read the config file now (like SIGHUP); exit non-zero if refused "
                   "or not delivered to dnsmasq")
    ls = sub.add_parser("list", parents=[common],
                        help="every published name: addresses, source, object, since when; "
                        "refused names and conflict losers with the reason")
    ls.add_argument("pattern", nargs="?", metavar="PATTERN",
                    help="only names matching this shell pattern (e.g. '*.dns.podman')")
    ex = sub.add_parser("explain", parents=[common],
                        help="why NAME resolves or not: claim, record, files, resolver, "
                        "a live query, a verdict and the fix")
    ex.add_argument("name", metavar="NAME", help="a DNS name, e.g. web.dns.podman")
    sub.add_parser("watch", parents=[common],
                   help="names appearing, changing and vanishing as they happen (Ctrl-C stops)")
    _add_setup(sub, common)
    return p


def _emit_json(doc: Any) -> None:
    json.dump(doc, sys.stdout, indent=2, sort_keys=True)
    sys.stdout.write("\n")


def setup(args: argparse.Namespace) -> int:
    try:
        config = load_config(args.config)
    except ConfigError as e:
        print(f"agentctl: {e}", file=sys.stderr)
        return EXIT_USAGE
    report = asyncio.run(run_setup(config, check=args.check, remove=args.remove))
    if getattr(args, "json", False):
        _emit_json({"lines": [{"status": w, "text": t} for w, t in report.lines],
                    "missing": report.missing, "failed": report.failed})
    else:
        sys.stdout.write(report.render())
    if report.failed:
        return 1
    return 1 if args.check and report.missing else 0


def _status(client: Client, target: Target, as_json: bool) -> int:
    doc = client.call("status")
    health = doc.get("health") or {}
    if as_json:
        _emit_json(doc)
    else:
        sys.stdout.write(format_status(doc))
        if target.is_user_default:
            print(f"\n(this is your user agent; the system agent: sudo agentctl status, or "
                  f"agentctl --socket {ControlConfig.socket} status)")
    return {"healthy": EXIT_OK}.get(health.get("state", "healthy"), EXIT_DEGRADED)


def _reload(client: Client, as_json: bool) -> int:
    res = client.call("reload")
    if as_json:
        _emit_json(res)
    if not res["reloaded"]:
        if not as_json:
            print(f"reload refused, still running the previous config; {res['config']}:",
                  file=sys.stderr)
            for problem in res["problems"]:
                print(f"  - {problem}", file=sys.stderr)
        return EXIT_USAGE
    undelivered = res.get("undelivered") or []
    if not as_json:
        if undelivered:
            print(f"reloaded {res['config']}, but not delivered:", file=sys.stderr)
            for why in undelivered:
                print(f"  - {why}", file=sys.stderr)
        else:
            print(f"reloaded {res['config']}")
    return EXIT_DEGRADED if undelivered else EXIT_OK


def _list(client: Client, pattern: str | None, as_json: bool) -> int:
    doc = client.call("list", {"pattern": pattern} if pattern else {})
    if as_json:
        _emit_json(doc)
    else:
        sys.stdout.write(names_out.format_list(doc))
    return EXIT_OK


def _explain(client: Client, name: str, as_json: bool) -> int:
    doc = client.call("explain", {"name": name})
    if as_json:
        _emit_json(doc)
    else:
        sys.stdout.write(names_out.format_explain(doc))
    return EXIT_OK if doc["verdict"]["ok"] else EXIT_DEGRADED


def _watch(client: Client, as_json: bool) -> int:
    try:
        for event in client.stream("watch"):
            if as_json:
                print(json.dumps(event, sort_keys=True), flush=True)
            else:
                print(names_out.format_event(event), flush=True)
    except KeyboardInterrupt:
        return EXIT_OK
    return EXIT_OK


def _not_running(target: Target, e: ControlError) -> str:
    text = e.message
    if target.is_user_default:
        text += (f"\n  (agentctl talks to your user agent by default: `systemctl --user start "
                 f"namesync`; for the system agent: sudo agentctl, or "
                 f"--socket {ControlConfig.socket})")
    return text


def _fail(target: Target, e: ControlError, as_json: bool) -> int:
    code = EXIT_NOT_RUNNING if e.code == "no_daemon" else EXIT_UNKNOWN
    message = _not_running(target, e) if code == EXIT_NOT_RUNNING else e.message
    if as_json:
        _emit_json({"error": {"code": e.code, "message": e.message}})
    else:
        print(f"agentctl: {message}", file=sys.stderr)
    return code


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "setup":
        return setup(args)
    as_json = bool(getattr(args, "json", False))
    target = choose_socket(getattr(args, "socket", None))
    client = Client(target.path)
    try:
        if args.command == "status":
            return _status(client, target, as_json)
        if args.command == "reload":
            return _reload(client, as_json)
        if args.command == "list":
            return _list(client, args.pattern, as_json)
        if args.command == "explain":
            return _explain(client, args.name, as_json)
        if args.command == "watch":
            return _watch(client, as_json)
    except ControlError as e:
        return _fail(target, e, as_json)
    return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
