"""What every bench does first: a private namespace, its tools, a work dir."""

from __future__ import annotations

import contextlib
import shutil
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

from tests.harness.isolation import enter_private_namespaces


def isolate(prog: str, tools: tuple[str, ...]) -> bool:
    """Enter the tests' private mount + net namespace and check ``tools``; say why not."""
    why = enter_private_namespaces()
    missing = [t for t in tools if shutil.which(t) is None]
    if why is None and missing:
        why = f"not found: {', '.join(missing)}"
    if why:
        print(f"{prog}: {why}", file=sys.stderr)
        return False
    return True


@contextlib.contextmanager
def bench_root() -> Iterator[Path]:
    # Under /tmp with 0755, not a 0700 pytest dir: dnsmasq reads as nobody.
    root = Path(tempfile.mkdtemp(prefix="namesync-bench-", dir="/tmp"))
    root.chmod(0o755)
    try:
        yield root
    finally:
        shutil.rmtree(root, ignore_errors=True)
