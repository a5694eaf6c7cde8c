"""One agent per control socket and per managed file, checked before anything is touched.

A second agent started on the same paths (the quick start run twice, a
manual run beside the service) must refuse without changing a byte of what
the first one manages: no stale-temp cleanup, no write, no socket unlinked.
So the first thing the daemon does is take exclusive flocks:

- ``<control socket>.lock`` beside the socket (the runtime directory);
- one lock per file a sink writes, in the uid's runtime directory
  (``/run/namesync/locks/`` for root, ``$XDG_RUNTIME_DIR/namesync/locks/``
  otherwise) and named after the file's real path, so two agents with
  different sockets but the same addn-hosts or hosts file are caught too.

flock is released by the kernel when the process dies however it dies, so a
killed agent never leaves a lock that blocks the next one. Each lock file
holds the owner's pid, for the refusal message.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
from collections.abc import Iterable, Mapping
from pathlib import Path

SYSTEM_LOCKS = Path("/run/namesync/locks")


class CannotLock(RuntimeError):
    """A lock file could not be opened (e.g. another user's runtime directory)."""


class AlreadyRunning(CannotLock):
    """Another agent holds one of our locks; nothing was touched."""


def locks_dir(socket: Path, env: Mapping[str, str] | None = None) -> Path:
    env = os.environ if env is None else env
    if os.geteuid() == 0:
        return SYSTEM_LOCKS
    runtime = env.get("XDG_RUNTIME_DIR")
    return Path(runtime) / "namesync" / "locks" if runtime else socket.parent / "locks"


def _lock_name(target: Path) -> str:
    real = os.path.realpath(target)
    digest = hashlib.sha256(real.encode(errors="surrogateescape")).hexdigest()[:16]
    return f"{Path(real).name[:64]}-{digest}.lock"


def _owner(fd: int) -> str:
    with contextlib.suppress(OSError, ValueError):
        text = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
        if text.isdigit():
            return f" (pid {int(text)})"
    return ""


class InstanceLock:
    def __init__(self, socket: Path, managed: Iterable[Path]) -> None:
        self.socket = socket
        where = locks_dir(socket)
        self.paths: list[tuple[Path, str]] = [
            (socket.with_name(socket.name + ".lock"), f"control socket {socket}")
        ]
        for target in managed:
            self.paths.append((where / _lock_name(target), f"{target}"))
        self._where = where
        self._fds: list[int] = []
        self._held: set[Path] = set()

    def acquire(self) -> None:
        """Take every lock or none; AlreadyRunning names what the other agent holds."""
        try:
            for path, what in self.paths:
                self._take(path, what)
        except BaseException:
            self.release()
            raise

    def _take(self, path: Path, what: str) -> None:
        try:
            path.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as e:
            raise CannotLock(
                f"cannot lock {what} ({path}: {e.strerror}); nothing was changed"
            ) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            owner = _owner(fd)
            os.close(fd)
            raise AlreadyRunning(
                f"another namesync-agent{owner} already manages {what}; nothing was changed"
            ) from None
        except BaseException:
            os.close(fd)
            raise
        self._fds.append(fd)
        self._held.add(path)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)

    def extend(self, managed: Iterable[Path]) -> None:
        """Also lock files a reloaded config makes ours; AlreadyRunning if another agent has one.

        Locks already held stay held (a path dropped by the reload is released
        at exit): a config that points back at a file later must not race.
        """
        wanted = [(self._where / _lock_name(t), str(t)) for t in managed]
        new = [(p, what) for p, what in wanted if p not in self._held]
        taken = len(self._fds)
        try:
            for path, what in new:
                self._take(path, what)
        except BaseException:
            for fd in self._fds[taken:]:
                os.close(fd)
            del self._fds[taken:]
            self._held.difference_update(p for p, _ in new)
            raise

    def release(self) -> None:
        # The files stay: unlinking a lock file races with the next agent opening it.
        for fd in self._fds:
            os.close(fd)
        self._fds.clear()
        self._held.clear()
