"""`agentctl setup`: point NetworkManager's dnsmasq at namesync, once, idempotently.

Writes ``namesync.conf`` into NM's dnsmasq conf-dir (``addn-hosts=`` our
file, ``local=/ZONE/`` per zone so unknown names there are NXDOMAIN and AAAA
of IPv4-only names NODATA instead of forwarded), then asks NM over D-Bus to
restart its dnsmasq (``Reload`` with DNS_FULL): a drop-in is read only when
dnsmasq starts, and the conf-dir only if it existed then.
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
from agent.resolvers.networkmanager import (
    NM,
    NM_DNSMASQ,
    call,
    dns_mode,
    name_has_owner,
    owner_pid,
)
from agent.sinks.atomic import read_bytes, replace_file

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


async def run_setup(config: Config, *, check: bool = False, remove: bool = False) -> Report:
    report = Report()
    nm = config.networkmanager
    dropin = nm.dropin
    want = render_dropin(config)
    have = read_bytes(dropin)

    try:
        bus: MessageBus | None = await MessageBus(bus_type=BusType.SYSTEM).connect()
    except Exception as e:
        bus = None
        view = NMView(reachable=False, error=f"no system D-Bus: {e}")
    try:
        if bus is not None:
            view = await _view(bus)
        changed = False
        if remove:
            if have is None:
                report.add("ok", f"no drop-in at {dropin}")
            elif check:
                report.add("present", f"drop-in {dropin} (--remove would delete it)")
            else:
                dropin.unlink()
                changed = True
                report.add("removed", f"drop-in {dropin}")
        elif have == want:
            report.add("ok", f"drop-in {dropin} is up to date")
        elif check:
            report.add(
                "missing",
                f"drop-in {dropin} "
                + ("differs from what setup writes" if have else "does not exist"),
            )
        else:
            if not nm.dnsmasq_dir.is_dir():
                nm.dnsmasq_dir.mkdir(mode=0o755, parents=True)
                report.add("created", f"directory {nm.dnsmasq_dir}")
            # dnsmasq reads its config as root, but keep it world-readable like
            # everything else in /etc/NetworkManager.
            replace_file(dropin, want, mode=0o644)
            changed = True
            report.add("wrote", f"drop-in {dropin}")

        if not view.reachable:
            report.add(
                "warning",
                f"{view.error}; the drop-in takes effect when "
                "NetworkManager next starts its dnsmasq",
            )
            return report
        if view.mode != "dnsmasq":
            report.add(
                "warning",
                f"NetworkManager DNS mode is {view.mode!r}, not 'dnsmasq': "
                "it runs no dnsmasq, so names reach local lookups through the hosts "
                "file. Set dns=dnsmasq in NetworkManager.conf for the dnsmasq path.",
            )
            return report
        if check and not remove and have != want:
            report.add("missing", "restart of NetworkManager's dnsmasq once the drop-in is written")
            return report
        why = (
            "the drop-in changed" if changed else (None if remove else _needs_restart(view, dropin))
        )
        if why is None:
            report.add(
                "ok",
                f"NetworkManager's dnsmasq (pid {view.dnsmasq_pid}) "
                + ("has no namesync drop-in" if remove else "serves namesync's names"),
            )
            return report
        if check:
            report.add("missing", f"restart of NetworkManager's dnsmasq: {why}")
            return report
        assert bus is not None
        new_pid = await _restart_dnsmasq(bus, view.dnsmasq_pid)
        if new_pid is None:
            report.add(
                "error",
                "asked NetworkManager to restart its dnsmasq (Reload DNS_FULL), "
                f"but no new dnsmasq appeared within {RESTART_TIMEOUT_S:.0f}s",
            )
        else:
            report.add(
                "restarted",
                f"NetworkManager's dnsmasq ({why}): pid {view.dnsmasq_pid} -> {new_pid}",
            )
        return report
    finally:
        if bus is not None:
            bus.disconnect()
