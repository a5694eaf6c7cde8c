"""The machine-wide build cache: one directory per key under /var/cache/namesync-tests/.

Everything the tests build once per machine is built here, the same way: the
Debian root filesystems (rootfs.py), the QEMU guest's kernel + initramfs
(qemu_image.py), the dependency wheels (installed.py), the RPM build's sdists
and its venv (rpm.py), test_rpm.py's setuptools wheels. Several test runs
share a machine (CI jobs side by side, engineers' suites), and runs get killed
(a timeout, ^C, SIGKILL), so:

* The check and the build run under an flock on CACHE/NAME.lock: one run
  builds, the others wait and then use its result. The lock file is never
  removed: a waiter would hold the lock on an unlinked file while a newcomer
  locks a new one, and both would build. The kernel drops an flock when its
  holder dies, so a killed run blocks nobody; the lock is opened close-on-exec
  (Python's default), so a build's children do not hold it after their parent
  died.
* A finished build has CACHE/NAME/.complete; a directory without it is never
  used but removed and built again (a crashed in-place build, or a directory
  from before the marker).
* A build runs in CACHE/NAME.building-XXXXXXXX/NAME, a directory of its own
  for each attempt, and is renamed to CACHE/NAME when complete. A killed run
  leaves that directory, and maybe a child still writing into it (subprocess's
  timeout kills mmdebstrap, not the dpkg under it; SIGKILL of pytest kills
  neither): the next build removes the leftovers and builds in a new
  directory, so a stray writer can never add to a tree that is then marked
  complete, which a fixed temporary name would allow.
* The data is flushed (os.sync, ~0.1 s) before .complete is written: after a
  power cut a tree is absent or incomplete, never marked complete with files
  still unwritten.

The key is the caller's: NAME must change whenever anything that goes into the
build does (rootfs.cache_key, qemu_image.cache_key, ...), since a complete
directory is reused as it is, for ever. Nothing evicts old keys.

    path = cached_build(f"thing-{key}", lambda out: make_thing_in(out))
"""

from __future__ import annotations

import fcntl
import os
import re
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

CACHE = Path("/var/cache/namesync-tests")
COMPLETE = ".complete"
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]*")


def cached_build(name: str, build: Callable[[Path], None], *, note: str = "",
                 cache: Path = CACHE, in_place: bool = False) -> Path:
    """CACHE/NAME, made by ``build(out)`` once per machine, then reused as it is.

    ``out`` does not exist yet: ``build`` creates it (a directory) and fills it;
    its parent is this attempt's own and removed afterwards, so scratch files may
    go there. An exception from ``build`` removes what it made and propagates.
    ``note`` is written into .complete, for people looking at the cache.
    ``in_place``: ``out`` is CACHE/NAME itself, for a tree that must be built
    where it will be used (a venv: its scripts name its path); a crash there
    leaves no .complete, so the next call removes it and builds again, but a
    stray writer from a killed attempt is not kept out as with a rename.
    """
    if not _NAME.fullmatch(name):
        raise ValueError(f"cache name {name!r}: one path component of [A-Za-z0-9._+-]")
    cache.mkdir(parents=True, exist_ok=True)
    target = cache / name
    with open(cache / f"{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (target / COMPLETE).exists():
            return target
        # Under the lock nobody else is building this name: whatever is here is left
        # over from a killed or failed attempt.
        for stale in cache.glob(f"{name}.building*"):
            shutil.rmtree(stale, ignore_errors=True)
        shutil.rmtree(target, ignore_errors=True)
        if in_place:
            _build(build, target, note or name)
        else:
            attempt = Path(tempfile.mkdtemp(prefix=f"{name}.building-", dir=cache))
            try:
                # mkdtemp makes it 0700; a build may run tools as another user that
                # must reach ``out`` (apt's sandbox user downloading into a rootfs).
                attempt.chmod(0o755)
                _build(build, attempt / name, note or name)
                (attempt / name).rename(target)
            finally:
                shutil.rmtree(attempt, ignore_errors=True)
        return target


def _build(build: Callable[[Path], None], out: Path, note: str) -> None:
    try:
        build(out)
        if not out.is_dir():
            raise RuntimeError(f"the build of {out.name} made no directory {out}")
        os.sync()  # what .complete vouches for is on disk before it (module docstring)
        (out / COMPLETE).write_text(note.rstrip("\n") + "\n")
    except BaseException:
        shutil.rmtree(out, ignore_errors=True)
        raise
