"""A real libvirtd (monolithic, LXC driver) whose busybox LXC guests take real DHCP leases.

Everything lives inside the test session's private mount + network namespace
(isolation.py); nothing of the machine's own libvirt is read or touched:

    /var/lib/libvirt, /var/log/libvirt, /var/cache/libvirt   a private tmpfs each
    /etc/libvirt       bind mount of WORKDIR/etc-libvirt: a copy of the machine's
                       *.conf files and nwfilter/ only (no domains, networks,
                       hooks, secrets or autostart links: see _private_config)
    /run/libvirt, /run/libvirtd.pid, /run/virtlogd.pid       on the session's /run
    bridges nsvirbrN with 10.213.N.0/24, libvirt's dnsmasq   in the session's netns
    WORKDIR/guests/NAME/root     a guest's rootfs: static busybox, /init.sh, and
                                 /harness/ (init.log, events, udhcpc.script)

One module per concern: daemon.py (libvirtd's lifecycle and teardown),
network.py (NAT networks, lease files), guest.py (LXC guests, udhcpc, renewal),
busybox.py (the guests' rootfs), cgroups.py (the session's partition),
firewall.py (libvirt's iptables chains), reaper.py (cleanup if pytest dies).
"""

from .base import ETC_DIR, IP_FORWARD, LEASE_DIR, LXC_URI, QEMU_URI, STATE_DIRS
from .daemon import Libvirtd
from .guest import Guest, Nic
from .network import Network, lease_file, read_leases

__all__ = ["ETC_DIR", "IP_FORWARD", "LEASE_DIR", "LXC_URI", "QEMU_URI", "STATE_DIRS", "Guest",
           "Libvirtd", "Network", "Nic", "lease_file", "read_leases"]
