"""``agentctl``: ask a running namesync-agent what it is doing."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from agent import version
from agent.config.load import default_socket_path
from agent.control.client import Client, ControlError

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
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
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
