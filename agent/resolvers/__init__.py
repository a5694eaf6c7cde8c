"""Who resolves names on this host, and which dnsmasq serves namesync's file.

Each watcher here follows one resolver (NetworkManager now; systemd-resolved
next) under the shared lifecycle and publishes what it learned as a typed
``ResolverView`` (view.py) that the dnsmasq sink reads.
"""
