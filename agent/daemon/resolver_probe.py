"""Which dnsmasq serves the addn-hosts file, where it listens, and whether it reads the file.

Read from the process itself (``/proc/PID/cmdline``, and the files of its
``--conf-dir``), so ``explain`` reports what the running resolver was told,
not what namesync's config assumes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from agent.sinks.dnsmasq_target import Locator, why_not_dnsmasq

# dnsmasq's short options that take a value, and the long name each stands for.
_SHORT = {"-a": "listen-address", "-p": "port", "-H": "addn-hosts", "-7": "conf-dir",
          "-C": "conf-file"}
_WANTED = {"listen-address", "port", "addn-hosts", "conf-dir", "conf-file"}
CONF_BYTES = 1 << 16  # per conf file: a dnsmasq config is small; never read a huge file


@dataclass(frozen=True)
class Resolver:
    pid: int
    via: str
    address: str = "127.0.0.1"
    port: int = 53
    addn_hosts: tuple[str, ...] = ()
    options: dict[str, list[str]] = field(default_factory=dict)


def parse_argv(argv: list[str]) -> dict[str, list[str]]:
    opts: dict[str, list[str]] = {}
    i = 1
    while i < len(argv):
        arg = argv[i]
        key, value = None, None
        if arg.startswith("--"):
            key, _, value = arg[2:].partition("=")
            if not _ and i + 1 < len(argv) and key in _WANTED and not argv[i + 1].startswith("-"):
                i += 1
                value = argv[i]
        elif arg[:2] in _SHORT:
            key = _SHORT[arg[:2]]
            value = arg[2:]
            if not value and i + 1 < len(argv):
                i += 1
                value = argv[i]
        if key in _WANTED and value:
            opts.setdefault(key, []).append(value)
        i += 1
    return opts


def _conf_lines(path: Path) -> list[str]:
    try:
        with path.open("rb") as f:
            return f.read(CONF_BYTES).decode("utf-8", "replace").splitlines()
    except OSError:
        return []


def _merge_conf(opts: dict[str, list[str]]) -> None:
    """Options from --conf-file and --conf-dir files (NetworkManager's drop-ins live there)."""
    files = [Path(p) for p in opts.get("conf-file", [])]
    for d in opts.get("conf-dir", []):
        directory = Path(d.split(",")[0])
        try:
            files += sorted(p for p in directory.iterdir() if p.is_file())
        except OSError:
            continue
    for f in files[:64]:
        for line in _conf_lines(f):
            key, eq, value = line.strip().partition("=")
            if eq and key in _WANTED - {"conf-dir", "conf-file"}:
                opts.setdefault(key, []).append(value.strip())


def read_resolver(pid: int, via: str, proc: Path = Path("/proc")) -> Resolver:
    try:
        raw = (proc / str(pid) / "cmdline").read_bytes()
    except OSError:
        raw = b""
    argv = [a.decode("utf-8", "replace") for a in raw.split(b"\0") if a]
    opts = parse_argv(argv)
    _merge_conf(opts)
    address = opts.get("listen-address", ["127.0.0.1"])[0].split(",")[0]
    port_text = opts.get("port", ["53"])[-1]
    port = int(port_text) if port_text.isdigit() else 53
    return Resolver(pid, via, address, port, tuple(opts.get("addn-hosts", [])), opts)


def find_resolver(locator: Locator, proc: Path = Path("/proc")) -> tuple[Resolver | None, str]:
    """The dnsmasq the sink would signal now, or why there is none."""
    reasons = []
    for cand in locator.candidates():
        if cand.pid is None:
            reasons.append(cand.problem or f"no pid from {cand.via}")
            continue
        why = why_not_dnsmasq(cand.pid, proc)
        if why is None:
            return read_resolver(cand.pid, cand.via, proc), ""
        reasons.append(why)
    return None, "; ".join(reasons) or "nowhere to look for dnsmasq"
