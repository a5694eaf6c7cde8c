"""libvirt domains as names: ``<domain>.<zone>`` from lifecycle events and DHCP leases."""
