"""The one way a value someone else supplied is quoted in a message: short, bounded.

A refusal quotes what it refused so the user can find it, but the value may be
anything a config file or a source can hold: a 10 MB string, a list nested
hundreds deep. An error message (and so ``agentctl status`` and the log) must
stay small whatever the value is, so every quote goes through here.
"""

from __future__ import annotations

import reprlib

# Long enough to recognise a name or a path, short enough that a list of
# problems stays readable.
MAX_CHARS = 80


def _repr() -> reprlib.Repr:
    r = reprlib.Repr()
    r.maxstring = MAX_CHARS
    r.maxother = MAX_CHARS
    r.maxlist = r.maxtuple = r.maxdict = r.maxset = 6
    r.maxlevel = 3
    return r


def quote(value: object) -> str:
    """``repr(value)``, shortened in the middle when long; says how long a long string was."""
    if isinstance(value, str) and len(value) > MAX_CHARS:
        half = (MAX_CHARS - 5) // 2
        return f"{value[:half]!r}...{value[-half:]!r} ({len(value)} characters)"
    if isinstance(value, bytes | bytearray) and len(value) > MAX_CHARS:
        half = (MAX_CHARS - 5) // 2
        return f"{bytes(value[:half])!r}...{bytes(value[-half:])!r} ({len(value)} bytes)"
    try:
        text = _repr().repr(value)
    except RecursionError:  # reprlib bounds the depth it shows, not what __repr__ does
        return f"<{type(value).__name__}, nested too deeply to show>"
    if len(text) > 4 * MAX_CHARS:
        return text[: 4 * MAX_CHARS] + "..."
    return text
