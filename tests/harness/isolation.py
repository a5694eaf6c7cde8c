"""Put the whole test session into a private mount + network namespace.

Done in-process with unshare(2) before any daemon starts, so every child
(dnsmasq, namesync-agent, later libvirtd and NetworkManager) inherits it:
loopback ports, bridges and mounts the tests create are invisible to the
machine's own services and vanish with the session, even if a test crashes.
"""

from __future__ import annotations

import ctypes
import os
import shutil
import subprocess
from pathlib import Path

CLONE_NEWNS = 0x00020000
CLONE_NEWNET = 0x40000000
MS_REC = 0x4000
MS_PRIVATE = 1 << 18
ENV_MARK = "NAMESYNC_TEST_ISOLATED"


def isolated() -> bool:
    return os.environ.get(ENV_MARK) == "1"


def enter_private_namespaces() -> str | None:
    """Unshare mount+net namespaces; returns why not (None on success)."""
    if isolated():
        return None
    if os.geteuid() != 0:
        return "not root: integration tests need root for private namespaces"
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.unshare(CLONE_NEWNS | CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        return f"unshare(CLONE_NEWNS|CLONE_NEWNET) failed: {os.strerror(err)}"
    # Mounts made by the tests must not propagate back to the host.
    if libc.mount(b"none", b"/", None, MS_REC | MS_PRIVATE, None) != 0:
        err = ctypes.get_errno()
        return f"making / private failed: {os.strerror(err)}"
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
    # The product's defaults point at /run/namesync, /run/NetworkManager and
    # /etc/hosts. A test that ever ran on defaults (a config read half-written,
    # a bug) must hit private copies, never the machine's own files or its
    # NetworkManager's dnsmasq.
    subprocess.run(["mount", "-t", "tmpfs", "-o", "mode=0755", "namesync-test-run", "/run"],
                   check=True)
    private_hosts = Path("/run/namesync-test-etc/hosts")  # on the private tmpfs
    private_hosts.parent.mkdir()
    shutil.copyfile("/etc/hosts", private_hosts)
    subprocess.run(["mount", "--bind", str(private_hosts), "/etc/hosts"], check=True)
    os.environ[ENV_MARK] = "1"
    return None


def original_network() -> list[str]:
    """argv prefix running a command in the network namespace pytest was started in.

    The session's own has only ``lo``. Downloads that feed the shared caches
    (mmdebstrap's packages, pip's wheels) need the machine's network, nothing
    else of it: they run there, still in the session's private mount namespace.
    The parent (the shell or CI job that started pytest) is in that namespace.
    """
    if not isolated():
        return []
    return ["nsenter", f"--net=/proc/{os.getppid()}/ns/net", "--"]
