"""`agentctl setup`: prepare whichever path serves the names, once, idempotently.

NetworkManager in dnsmasq mode (or neither resolver found):

Writes ``namesync.conf`` into NM's dnsmasq conf-dir (``addn-hosts=`` our
file, ``local=/ZONE/`` per zone so unknown names there are NXDOMAIN and AAAA
of IPv4-only names NODATA instead of forwarded), then asks NM over D-Bus to
restart its dnsmasq (``Reload`` with DNS_FULL): a drop-in is read only when
dnsmasq starts, and the conf-dir only if it existed then.

systemd-resolved: namesync registers its zones itself at run time; setup
tells NetworkManager to leave namesync's link unmanaged (conf.d drop-in,
then Reload(CONF)) and gives rootful containers the link's address as their
DNS server (a containers.conf drop-in). ``--remove`` deletes every drop-in.
"""

from __future__ import annotations

import asyncio
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

from dbus_fast import BusType, MessageType
from dbus_fast.aio import MessageBus

from agent.config.schema import Config
from agent.resolvers.bus import call, name_has_owner, owner_pid
from agent.resolvers.networkmanager import NM, NM_DNSMASQ, dns_mode
from agent.resolvers.resolved import RESOLVE1
from agent.sinks.atomic import read_bytes, replace_file

RELOAD_CONF = 0x1
RELOAD_DNS_FULL = 0x4
RESTART_TIMEOUT_S = 15.0


def render_dropin(config: Config) -> bytes:
    lines = [
        "# Written by 'agentctl setup' (namesync); 'agentctl setup --remove' deletes it.",
        "# NetworkManager's dnsmasq serves namesync's names from this file:",
        f"addn-hosts={config.dnsmasq.addn_hosts}",
        "# answered here, never forwarded: unknown names are NXDOMAIN, AAAA of an",
        "# IPv4-only name is NODATA",
        *(f"local=/{zone}/" for zone in config.dnsmasq.local_zones),
    ]
    return ("\n".join(lines) + "\n").encode()


@dataclass
class NMView:
    reachable: bool
    error: str | None = None
    mode: str | None = None
    dnsmasq_pid: int | None = None


@dataclass
class Report:
    lines: list[tuple[str, str]] = field(default_factory=list)  # (status word, text)
    missing: int = 0
    failed: bool = False

    def add(self, word: str, text: str) -> None:
        self.lines.append((word, text))
        if word == "missing":
            self.missing += 1
        if word == "error":
            self.failed = True

    def render(self) -> str:
        return "".join(f"{word:<8} {text}\n" for word, text in self.lines)


async def _view(bus: MessageBus) -> NMView:
    if not await name_has_owner(bus, NM):
        return NMView(reachable=False, error="NetworkManager is not running")
    return NMView(
        reachable=True, mode=await dns_mode(bus), dnsmasq_pid=await owner_pid(bus, NM_DNSMASQ)
    )


def _started_at(pid: int) -> float | None:
    """Wall-clock start time of a process.

    /proc/PID/stat gives clock ticks since boot; the boot instant comes from
    CLOCK_BOOTTIME, not /proc/stat's btime, which is whole seconds and would
    make a dnsmasq started right after the drop-in look older than it.
    """
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    ticks = int(stat.rpartition(")")[2].split()[19])
    booted = time.time() - time.clock_gettime(time.CLOCK_BOOTTIME)
    return booted + ticks / os.sysconf("SC_CLK_TCK")


def _has_conf_dir(pid: int) -> bool:
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    return any(a.startswith(b"--conf-dir=") for a in argv)


def _needs_restart(view: NMView, dropin: Path) -> str | None:
    """Why NM's running dnsmasq has not read the current drop-in, or None."""
    if view.dnsmasq_pid is None:
        return None  # it will read it when NM starts it
    if not _has_conf_dir(view.dnsmasq_pid):
        return f"dnsmasq pid {view.dnsmasq_pid} was started without a conf-dir"
    started = _started_at(view.dnsmasq_pid)
    try:
        changed = dropin.stat().st_mtime
    except FileNotFoundError:
        return None
    # One clock tick of slack: start times are counted in ticks.
    if started is not None and changed > started + 1 / os.sysconf("SC_CLK_TCK"):
        return f"dnsmasq pid {view.dnsmasq_pid} started before the drop-in was written"
    return None


async def _restart_dnsmasq(bus: MessageBus, old_pid: int | None) -> int | None:
    reply = await call(
        bus, NM, "/org/freedesktop/NetworkManager", NM, "Reload", "u", [RELOAD_DNS_FULL]
    )
    if reply.message_type == MessageType.ERROR:
        raise RuntimeError(f"NetworkManager refused Reload: {reply.error_name}: {reply.body}")
    loop = asyncio.get_running_loop()
    deadline = loop.time() + RESTART_TIMEOUT_S
    # NM replaces dnsmasq asynchronously; the bus name moves to the new pid.
    while loop.time() < deadline:
        pid = (await _view(bus)).dnsmasq_pid
        if pid is not None and pid != old_pid:
            return pid
        await asyncio.sleep(0.02)
    return None


def render_nm_unmanaged(config: Config) -> bytes:
    lines = [
        "# Written by 'agentctl setup' (namesync); 'agentctl setup --remove' deletes it.",
        "# namesync's link for systemd-resolved: NetworkManager must leave it alone",
        "# (on a link it manages it would wipe the per-link DNS settings).",
        "[keyfile]",
        # += adds to the user's own list instead of replacing it.
        f"unmanaged-devices+=interface-name:{config.resolved.link}",
    ]
    return ("\n".join(lines) + "\n").encode()


def render_containers_conf(config: Config) -> bytes:
    lines = [
        "# Written by 'agentctl setup' (namesync); 'agentctl setup --remove' deletes it.",
        "# Rootful containers cannot use the host's loopback resolver: give them",
        "# namesync's dnsmasq on its link, which answers namesync's zones and",
        "# forwards every other name to the host's resolver.",
        "[containers]",
        f'dns_servers = ["{config.resolved.link_address}"]',
    ]
    return ("\n".join(lines) + "\n").encode()


@dataclass(frozen=True)
class DropIn:
    path: Path
    content: bytes
    what: str = "drop-in"


def apply_dropin(d: DropIn, report: Report, *, check: bool, remove: bool) -> bool:
    """Write (or with ``remove`` delete) one drop-in; True if the file changed."""
    have = read_bytes(d.path)
    if remove:
        if have is None:
            report.add("ok", f"no {d.what} at {d.path}")
            return False
        if check:
            report.add("present", f"{d.what} {d.path} (--remove would delete it)")
            return False
        d.path.unlink()
        report.add("removed", f"{d.what} {d.path}")
        return True
    if have == d.content:
        report.add("ok", f"{d.what} {d.path} is up to date")
        return False
    if check:
        why = "differs from what setup writes" if have else "does not exist"
        report.add("missing", f"{d.what} {d.path} {why}")
        return False
    if not d.path.parent.is_dir():
        d.path.parent.mkdir(mode=0o755, parents=True)
        report.add("created", f"directory {d.path.parent}")
    # Read as root, but world-readable like everything else in /etc.
    replace_file(d.path, d.content, mode=0o644)
    report.add("wrote", f"{d.what} {d.path}")
    return True


@dataclass
class Probe:
    """What the bus says: NetworkManager's view, and whether systemd-resolved runs."""

    bus: MessageBus | None
    nm: NMView
    resolved: bool = False


async def _probe() -> Probe:
    try:
        bus = await MessageBus(bus_type=BusType.SYSTEM).connect()
    except Exception as e:
        return Probe(None, NMView(reachable=False, error=f"no system D-Bus: {e}"))
    return Probe(bus, await _view(bus), await name_has_owner(bus, RESOLVE1))


def _nm_blocker(view: NMView) -> str | None:
    """Why NM's dnsmasq cannot be restarted now, as a warning; None if it can."""
    if not view.reachable:
        return (f"{view.error}; the drop-in takes effect when NetworkManager next starts "
                "its dnsmasq")
    if view.mode != "dnsmasq":
        return (f"NetworkManager DNS mode is {view.mode!r}, not 'dnsmasq': it runs no "
                "dnsmasq, so names reach local lookups through the hosts file. Set "
                "dns=dnsmasq in NetworkManager.conf for the dnsmasq path.")
    return None


async def _nm_dnsmasq_path(config: Config, probe: Probe, report: Report, *, check: bool,
                           remove: bool) -> None:
    """NetworkManager's dnsmasq reads namesync's file: its drop-in, then a restart."""
    dropin = config.networkmanager.dropin
    want = render_dropin(config)
    differs = read_bytes(dropin) != want
    changed = apply_dropin(DropIn(dropin, want), report, check=check, remove=remove)
    view = probe.nm
    blocker = _nm_blocker(view)
    if blocker is not None:
        report.add("warning", blocker)
        return
    if check and not remove and differs:
        report.add("missing", "restart of NetworkManager's dnsmasq once the drop-in is written")
        return
    why = "the drop-in changed" if changed else (None if remove else _needs_restart(view, dropin))
    if why is None:
        served = "has no namesync drop-in" if remove else "serves namesync's names"
        report.add("ok", f"NetworkManager's dnsmasq (pid {view.dnsmasq_pid}) {served}")
        return
    if check:
        report.add("missing", f"restart of NetworkManager's dnsmasq: {why}")
        return
    assert probe.bus is not None
    new_pid = await _restart_dnsmasq(probe.bus, view.dnsmasq_pid)
    if new_pid is None:
        report.add("error", "asked NetworkManager to restart its dnsmasq (Reload DNS_FULL), "
                   f"but no new dnsmasq appeared within {RESTART_TIMEOUT_S:.0f}s")
    else:
        report.add("restarted",
                   f"NetworkManager's dnsmasq ({why}): pid {view.dnsmasq_pid} -> {new_pid}")


async def _resolved_path(config: Config, probe: Probe, report: Report, *, check: bool,
                         remove: bool) -> None:
    """systemd-resolved: NM leaves namesync's link alone; containers get its address."""
    r = config.resolved
    unmanaged = DropIn(r.nm_unmanaged_conf, render_nm_unmanaged(config),
                       "NetworkManager drop-in")
    if apply_dropin(unmanaged, report, check=check, remove=remove) and probe.nm.reachable:
        assert probe.bus is not None
        # Reload(CONF) makes NetworkManager re-read conf.d (its unmanaged-devices).
        reply = await call(probe.bus, NM, "/org/freedesktop/NetworkManager", NM, "Reload", "u",
                           [RELOAD_CONF])
        if reply.message_type == MessageType.ERROR:
            report.add("error", f"NetworkManager refused Reload: {reply.error_name}")
        else:
            report.add("reloaded", "NetworkManager's configuration")
    if r.containers or remove:
        dns = DropIn(r.containers_conf, render_containers_conf(config), "containers.conf drop-in")
        if apply_dropin(dns, report, check=check, remove=remove) and not remove:
            report.add("note", "new containers use it; running ones keep their resolv.conf")


async def run_setup(config: Config, *, check: bool = False, remove: bool = False) -> Report:
    """Set up (or undo) whichever path serves the names on this host."""
    report = Report()
    probe = await _probe()
    try:
        resolved_path = (probe.resolved and config.resolved.enabled
                         and probe.nm.mode != "dnsmasq")
        if remove or not resolved_path:
            await _nm_dnsmasq_path(config, probe, report, check=check, remove=remove)
        r = config.resolved
        if not remove and not resolved_path and probe.nm.mode == "dnsmasq" \
                and r.enabled and r.containers:
            # Containers get namesync's forwarder on the link, which asks NM's dnsmasq.
            await _resolved_path(config, probe, report, check=check, remove=remove)
        if remove or resolved_path:
            if resolved_path:
                report.add("ok", "systemd-resolved is the resolver: namesync routes its zones "
                           f"there itself, on link {config.resolved.link}")
            await _resolved_path(config, probe, report, check=check, remove=remove)
        return report
    finally:
        if probe.bus is not None:
            probe.bus.disconnect()
