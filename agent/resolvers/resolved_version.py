"""Which systemd-resolved runs: its version decides whether static.d records exist.

resolved's bus API has no version property (262 checked), and PID 1's
``org.freedesktop.systemd1`` Version is another binary's (an upgraded
resolved runs next to an old PID 1 until the next boot). So the installed
resolved binary is asked (``--version`` prints "systemd 262 (262.1-1)" and
exits), again each time resolved gets a new bus owner (a restart may be an
upgrade). Blocking: run it in a thread.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

from agent.sinks.static_rr import RESOLVED_BINARIES

# systemd.rr(5): resolved reads static.d/*.rr from this release on.
STATIC_RECORDS_SINCE = 261
PROBE_TIMEOUT_S = 5.0
_VERSION = re.compile(rb"^systemd (\d+)\b")


def parse_version(output: bytes) -> int | None:
    m = _VERSION.match(output)
    return int(m.group(1)) if m else None


def resolved_version(binaries: tuple[str, ...] = RESOLVED_BINARIES) -> tuple[int | None, str]:
    """(major version or None, how it was found or why not)."""
    for binary in binaries:
        if not Path(binary).is_file():
            continue
        try:
            r = subprocess.run([binary, "--version"], capture_output=True,
                               timeout=PROBE_TIMEOUT_S, check=False)
        except (OSError, subprocess.TimeoutExpired) as e:
            return None, f"{binary} --version failed: {e}"
        version = parse_version(r.stdout)
        if version is None:
            return None, f"{binary} --version printed {r.stdout[:60]!r}"
        return version, f"{binary} --version"
    return None, f"no systemd-resolved binary at {', '.join(binaries)}"
