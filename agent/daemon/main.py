"""``namesync-agent``: the daemon's command line."""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

import structlog

from agent import version
from agent.config.load import default_config_path, load_config
from agent.config.reference import default_toml
from agent.config.schema import ConfigError
from agent.control.server import SocketInUse

from . import logging as nlogging
from .app import Daemon
from .heap import tune_malloc
from .instance import AlreadyRunning, CannotLock

# Distinct from a failed sync (1) and a config error (2): nothing was wrong
# with this agent, another one already does the job.
EXIT_ALREADY_RUNNING = 3

DESCRIPTION = """\
Keep DNS names for libvirt VMs, Podman containers and the host in a dnsmasq
addn-hosts file and a managed block of a hosts file, and reload dnsmasq the
moment they change. Runs in the foreground (systemd style).

sources: libvirt domains (<domain>.dns.libvirt, from lifecycle events and DHCP
leases; [libvirt] dhcp_trigger, off by default and unsafe where other subnets
are masqueraded out of a libvirt bridge, publishes from libvirt's DHCPACKs
sooner), Podman containers (<name>.dns.podman, from the event stream and
netavark's files), the host's own addresses (host.dns.host, over netlink) and
[[static]] records from the config file.

signals: SIGHUP reloads the config (a config with errors is refused and the
running one kept), as does `agentctl reload`; SIGTERM/SIGINT exit cleanly.
Ask the running agent with `agentctl status`, `agentctl list` and
`agentctl explain NAME`.
"""


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="namesync-agent",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        # Lines broken by hand (this formatter keeps them); the man page joins them.
        epilog="Exit codes: 0 stopped cleanly (or --once synced), 1 a file could not be\n"
        "written or the control socket is taken, 2 config error, 3 another agent\n"
        "already serves this socket or these files.",
    )
    p.add_argument(
        "--config",
        type=Path,
        metavar="PATH",
        help=f"config file (default: {default_config_path()}; if that does not "
        "exist, the embedded default is used)",
    )
    p.add_argument(
        "--once",
        action="store_true",
        help="sync once (write files, reload dnsmasq) and exit: 0 on success, "
        "1 if a file could not be written, 2 on a config error, 3 if another "
        "namesync-agent already runs on the same socket or files",
    )
    p.add_argument(
        "--check-config",
        action="store_true",
        help="validate the config and exit (0 valid, 2 invalid)",
    )
    p.add_argument(
        "--print-default-config",
        action="store_true",
        help="print the default config (every section and key, with its default) and exit",
    )
    p.add_argument(
        "--mode",
        choices=["auto", "system", "user"],
        default="auto",
        help="system: root's agent (writes the files, serves user agents on [peers] "
        "socket); user: a user session's agent (rootless Podman, qemu:///session; "
        "publishes through the system agent). auto (default): system as root, else user",
    )
    p.add_argument(
        "--log-level",
        choices=["debug", "info", "warning", "error"],
        help="override [daemon] log_level",
    )
    p.add_argument(
        "--log-format",
        choices=nlogging.FORMATS,
        default="auto",
        help="journal: native journal entries (MESSAGE, PRIORITY, fields); console: "
        "readable lines; json: JSON lines; auto (default): journal when stderr is "
        "systemd's journal stream, console on a terminal, json otherwise",
    )
    p.add_argument("--version", action="version", version=f"namesync-agent {version()}")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if args.print_default_config:
        sys.stdout.write(default_toml())
        return 0
    tune_malloc()  # before the config is read: a large one is the first big allocation
    try:
        config = load_config(args.config, mode=None if args.mode == "auto" else args.mode)
    except ConfigError as e:
        print(f"namesync-agent: {e}", file=sys.stderr)
        return 2
    if args.check_config:
        print(f"{config.origin}: OK ({len(config.static)} static names)")
        return 0
    nlogging.configure(args.log_level or config.daemon.log_level, fmt=args.log_format)
    log = structlog.get_logger(component="main")
    log.info("starting", version=version(), config=config.origin, once=args.once)
    try:
        return asyncio.run(Daemon(config, args.config).run(once=args.once))
    except CannotLock as e:
        log.error("cannot start", reason=str(e))
        print(f"namesync-agent: {e}", file=sys.stderr)
        return EXIT_ALREADY_RUNNING if isinstance(e, AlreadyRunning) else 1
    except SocketInUse as e:
        log.error("cannot start", reason=str(e))
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
