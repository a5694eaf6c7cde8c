"""Where libvirt keeps its state (inside the session's private mounts), and its module."""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

LXC_URI = "lxc:///system"
QEMU_URI = "qemu:///system"
ETC_DIR = Path("/etc/libvirt")
STATE_DIRS = (Path("/var/lib/libvirt"), Path("/var/log/libvirt"), Path("/var/cache/libvirt"))
LEASE_DIR = Path("/var/lib/libvirt/dnsmasq")  # <bridge>.status: libvirt's lease file
RUN_DIR = Path("/run/libvirt")
LIBVIRTD_PID_FILE = Path("/run/libvirtd.pid")
VIRTLOGD_PID_FILE = Path("/run/virtlogd.pid")
VIRTLOGD_SOCK = RUN_DIR / "virtlogd-sock"
IP_FORWARD = Path("/proc/sys/net/ipv4/ip_forward")
CGROUP_ROOT = Path("/sys/fs/cgroup")
UNIFIED = CGROUP_ROOT / "unified"
DNSMASQ_XMLNS = "http://libvirt.org/schemas/network/dnsmasq/1.0"


def libvirt() -> Any:
    """The libvirt module, imported on use: conftest imports the harness even where the
    ``libvirt`` marker skips everything because libvirt-python is missing."""
    return importlib.import_module("libvirt")
