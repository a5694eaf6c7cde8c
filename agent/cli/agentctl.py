"""``agentctl``: ask a running namesync-agent what it is doing."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path

from agent import version
from agent.config.load import default_config_path, default_socket_path, load_config
from agent.config.schema import ConfigError
from agent.control.client import Client, ControlError
from agent.resolver.setup import run_setup

from .format import format_status


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="agentctl", description="Control a running namesync-agent.")
    p.add_argument(
        "--socket",
        type=Path,
        metavar="PATH",
        default=None,
        help=f"control socket (default: {default_socket_path()})",
    )
    p.add_argument("--version", action="version", version=f"agentctl {version()}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    s = sub.add_parser("status", help="sources, sinks, conflicts and refused names")
    s.add_argument("--json", action="store_true", help="the stable JSON document (see README)")
    sub.add_parser("reload", help="re-read the config file now (like SIGHUP) and report problems")
    st = sub.add_parser(
        "setup",
        help="make NetworkManager's dnsmasq serve namesync's names (root, once)",
        description="Write namesync.conf into NetworkManager's dnsmasq.d (addn-hosts= and "
        "local=/ZONE/ for every zone in [dnsmasq] local_zones) and have NetworkManager "
        "restart its dnsmasq over D-Bus. Idempotent.",
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
    return p


def setup(args: argparse.Namespace) -> int:
    try:
        config = load_config(args.config)
    except ConfigError as e:
        print(f"agentctl: {e}", file=sys.stderr)
        return 2
    report = asyncio.run(run_setup(config, check=args.check, remove=args.remove))
    sys.stdout.write(report.render())
    if report.failed:
        return 1
    return 1 if args.check and report.missing else 0


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if args.command == "setup":
        return setup(args)
    client = Client(args.socket or default_socket_path())
    try:
        if args.command == "status":
            doc = client.call("status")
            if args.json:
                json.dump(doc, sys.stdout, indent=2, sort_keys=True)
                sys.stdout.write("\n")
            else:
                sys.stdout.write(format_status(doc))
            return 0
        if args.command == "reload":
            res = client.call("reload")
            if res["reloaded"]:
                print(f"reloaded {res['config']}")
                return 0
            print(
                f"reload refused, still running the previous config; {res['config']}:",
                file=sys.stderr,
            )
            for problem in res["problems"]:
                print(f"  - {problem}", file=sys.stderr)
            return 2
    except ControlError as e:
        print(f"agentctl: {e.message}", file=sys.stderr)
        return 1
    return 2


if __name__ == "__main__":
    sys.exit(main())
