"""Stopping a child the way every harness piece does: SIGTERM, wait, then SIGKILL."""

from __future__ import annotations

import signal
import subprocess
from typing import Any


def terminate(proc: subprocess.Popen[Any] | None, timeout: float = 5.0) -> int | None:
    """Stop ``proc`` (if still running) and reap it; returns its exit code."""
    if proc is None:
        return None
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return proc.returncode
