"""Which mode the agent runs in, and the defaults that depend on it.

The same config keys mean the same things in both modes; only the values a
key takes when the file does not set it differ (the schema's ``per_user``
keys, load.user_defaults). A user agent (the systemd user unit, or any
non-root ``namesync-agent``) watches the user's own services and cannot
write the system's files or signal root's dnsmasq, so its defaults turn
those sinks off and publish through the system agent instead (README "User
session").
"""

from __future__ import annotations

import os
import pwd

from agent.model.names import normalise_label

from .schema import MODES


def resolve_mode(mode: str | None, euid: int | None = None) -> str:
    """``None``/"auto": root runs as the system agent, anyone else as a user agent."""
    if mode in MODES:
        return mode
    return "system" if (os.geteuid() if euid is None else euid) == 0 else "user"


def user_label(uid: int) -> str:
    """The DNS label of ``uid``'s sub-zone: its login name, normalised (RFC 1123).

    Raises KeyError for a uid with no passwd entry, InvalidName for a login
    name with no DNS spelling.
    """
    return normalise_label(pwd.getpwuid(uid).pw_name)
