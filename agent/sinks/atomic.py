"""Replace a file without ever exposing a partial one, keeping its metadata.

Temp file in the same directory (name starts with ``.`` so no tool that
globs the directory picks it up), fsync, rename, fsync the directory; the
replacement gets the original's mode, owner and SELinux label. A target
that is a bind mount (containers' /etc/hosts) cannot be renamed over
(EBUSY/EXDEV): there the bytes are rewritten in place under an exclusive
flock, which is not atomic for readers but is the only thing possible. The
in-place path never leaves less than the old file: the space for a longer
file is reserved (fallocate) before a byte is changed, and if a write fails
anyway the old bytes are put back.

With ``check_expect`` (the hosts file, which people and tools edit too) the
file must still be the one that was read: its identity (inode, size, mtime,
ctime) is checked right before the replace, and the replace itself is an
atomic exchange (renameat2 RENAME_EXCHANGE) after which the file that was
swapped out is checked once more; if another program renamed its version in
between, that version is swapped back and ConcurrentEdit raised, so the
caller re-reads and retries. See README "hosts file" for what remains.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import functools
import os
import stat
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

SELINUX_XATTR = "security.selinux"
AT_FDCWD = -100
RENAME_NOREPLACE = 1
RENAME_EXCHANGE = 2
FALLOC_FL_KEEP_SIZE = 1
# The filesystem or kernel cannot do it: fall back to the plain call.
_UNSUPPORTED = frozenset({errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP})


class ConcurrentEdit(RuntimeError):
    """The file changed between our read and our replace: someone else is writing it."""


def temp_prefix(path: Path) -> str:
    return f".{path.name}.namesync-"


# What read_bytes() returns for anything but a regular file of a sane size: no file
# namesync renders holds a NUL, so it never equals what is wanted, and the caller
# replaces it (a rename replaces the directory entry; it never follows or opens it).
NOT_A_FILE = b"\0"
MAX_COMPARE_BYTES = 256 << 20  # 100,000 names render to ~3 MiB


def read_bytes(path: Path, max_bytes: int = MAX_COMPARE_BYTES, *,
               follow: bool = True) -> bytes | None:
    """The bytes of the regular file at ``path`` (None: nothing there), to compare
    with what should be there. A FIFO, device or an oversized file is not opened
    for blocking or read whole, and without ``follow`` neither is a symlink: it
    reads as NOT_A_FILE. ``follow`` as replace_file() writes (a symlinked file
    that already holds the bytes must compare equal, or every sync rewrites it)."""
    flags = os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK | (0 if follow else os.O_NOFOLLOW)
    try:
        fd = os.open(path, flags)
    except FileNotFoundError:
        return None
    except OSError as e:
        if e.errno in (errno.ELOOP, errno.ENXIO, errno.EISDIR):  # symlink, socket, dir
            return NOT_A_FILE
        raise
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_size > max_bytes:
            return NOT_A_FILE
        chunks = []
        left = max_bytes + 1
        while left > 0 and (chunk := os.read(fd, min(left, 1 << 20))):
            chunks.append(chunk)
            left -= len(chunk)
    finally:
        os.close(fd)
    return NOT_A_FILE if left <= 0 else b"".join(chunks)


@dataclass(frozen=True)
class Snapshot:
    """A file's bytes and the identity of the inode they were read from."""

    data: bytes | None  # None: there was no file
    ident: tuple[int, ...] | None = None


def _ident(st: os.stat_result) -> tuple[int, ...]:
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def read_snapshot(path: Path) -> Snapshot:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return Snapshot(None)
    try:
        before = os.fstat(fd)
        chunks = []
        while chunk := os.read(fd, 1 << 20):
            chunks.append(chunk)
        after = os.fstat(fd)
    finally:
        os.close(fd)
    # Written to while we read: report an identity no later check can match.
    ident = _ident(after) if _ident(before) == _ident(after) else (-1,)
    return Snapshot(b"".join(chunks), ident)


@functools.cache
def _libc() -> Any:
    return ctypes.CDLL(None, use_errno=True)


def _renameat2(src: Path, dst: Path, flags: int) -> bool:
    """renameat2(2); False where it is not supported (the caller falls back)."""
    fn = getattr(_libc(), "renameat2", None)
    if fn is None:
        return False
    if fn(AT_FDCWD, os.fsencode(src), AT_FDCWD, os.fsencode(dst), flags) == 0:
        return True
    err = ctypes.get_errno()
    if err in _UNSUPPORTED:
        return False
    raise OSError(err, os.strerror(err), str(dst))


def _reserve(fd: int, size: int) -> None:
    """Allocate blocks for ``size`` bytes without changing the file: ENOSPC now, not mid-write."""
    fn = getattr(_libc(), "fallocate64", None) or getattr(_libc(), "fallocate", None)
    if fn is None:
        return
    fn.argtypes = (ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64)
    if fn(fd, FALLOC_FL_KEEP_SIZE, 0, size) == 0:
        return
    err = ctypes.get_errno()
    if err not in _UNSUPPORTED:
        raise OSError(err, os.strerror(err))


def cleanup_stale_temps(path: Path) -> list[Path]:
    """Remove temp files a killed writer left next to ``path``; returns what was removed."""
    removed: list[Path] = []
    path = Path(os.path.realpath(path))  # temps are made beside the real file
    try:
        candidates = list(path.parent.glob(temp_prefix(path) + "*"))
    except OSError:
        return removed
    for tmp in candidates:
        with contextlib.suppress(OSError):
            tmp.unlink()
            removed.append(tmp)
    return removed


def _copy_selinux_label(src: Path, fd: int) -> None:
    try:
        label = os.getxattr(src, SELINUX_XATTR)
    except OSError:
        return  # no SELinux, or unlabeled: nothing to keep
    # A filesystem without xattrs: the policy default label applies.
    with contextlib.suppress(OSError):
        os.setxattr(fd, SELINUX_XATTR, label)


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _pread_all(fd: int) -> bytes:
    chunks = []
    offset = 0
    while chunk := os.pread(fd, 1 << 20, offset):
        chunks.append(chunk)
        offset += len(chunk)
    return b"".join(chunks)


def _pwrite_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    offset = 0
    while offset < len(data):
        offset += os.pwrite(fd, view[offset:], offset)


def _rewrite_in_place(path: Path, data: bytes, expect: Snapshot | None) -> None:
    """Overwrite ``path``'s bytes; on any failure the old bytes are back in place."""
    fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        old = _pread_all(fd)
        if expect is not None and old != expect.data:
            raise ConcurrentEdit(f"{path} changed while namesync was writing it")
        if len(data) > len(old):
            _reserve(fd, len(data))
        try:
            _pwrite_all(fd, data)
            os.ftruncate(fd, len(data))
            os.fsync(fd)
        except OSError:
            # Overwriting blocks the old bytes already had needs no new space.
            _pwrite_all(fd, old)
            os.ftruncate(fd, len(old))
            os.fsync(fd)
            raise
    finally:
        os.close(fd)


def _same_file(path: Path, expect: Snapshot, *, renamed: bool = False) -> bool:
    """Is ``path`` still the inode ``expect`` was read from, unmodified?

    ``renamed``: we just moved it ourselves, which changes its ctime.
    """
    try:
        now = _ident(os.stat(path))
    except FileNotFoundError:
        return expect.data is None
    if expect.ident is None:
        return False
    return now[:4] == expect.ident[:4] if renamed else now == expect.ident


def _install_checked(tmp: Path, target: Path, expect: Snapshot) -> None:
    """Put ``tmp`` at ``target`` only if ``target`` is still what ``expect`` saw."""
    if not _same_file(target, expect):
        raise ConcurrentEdit(f"{target} changed while namesync was writing it")
    if expect.data is None:
        # Nothing was there: do not clobber a file created meanwhile.
        try:
            if not _renameat2(tmp, target, RENAME_NOREPLACE):
                os.rename(tmp, target)
        except FileExistsError:
            raise ConcurrentEdit(f"{target} appeared while namesync was writing it") from None
        return
    if not _renameat2(tmp, target, RENAME_EXCHANGE):
        os.rename(tmp, target)
        return
    # ``tmp`` now holds what was at ``target`` an instant ago.
    if _same_file(tmp, expect, renamed=True):
        tmp.unlink()
        return
    # Another program replaced the file between our check and our exchange:
    # give its version back (unless it has replaced ours too), then retry.
    ours = os.stat(target)
    theirs = os.stat(tmp)
    if (ours.st_dev, ours.st_ino) != (theirs.st_dev, theirs.st_ino):
        _renameat2(tmp, target, RENAME_EXCHANGE)
    tmp.unlink(missing_ok=True)
    raise ConcurrentEdit(f"{target} was replaced while namesync was writing it")


def _write_temp(
    fd: int, data: bytes, target: Path, st: os.stat_result | None, mode: int | None
) -> None:
    try:
        view = memoryview(data)
        written = 0
        while written < len(data):
            written += os.write(fd, view[written:])
        final_mode = mode if mode is not None else (st.st_mode & 0o7777 if st else 0o644)
        os.fchmod(fd, final_mode)
        if st is not None and (st.st_uid, st.st_gid) != (os.geteuid(), os.getegid()):
            os.fchown(fd, st.st_uid, st.st_gid)
        if st is not None:
            _copy_selinux_label(target, fd)
        os.fsync(fd)
    finally:
        os.close(fd)


def _open_directory(path: Path) -> int:
    # O_NOFOLLOW: a directory someone else may replace by a symlink between our
    # checks and our writes (static.d in resolved's /run/systemd/resolve).
    return os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)


def _replace_in_directory(path: Path, data: bytes, mode: int) -> str:
    """replace_file() through a descriptor of ``path``'s directory, nothing followed."""
    dfd = _open_directory(path.parent)
    try:
        tmp = f"{temp_prefix(path)}{os.urandom(6).hex()}"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                     mode, dir_fd=dfd)
        try:
            _write_temp(fd, data, path, None, mode)
            os.rename(tmp, path.name, src_dir_fd=dfd, dst_dir_fd=dfd)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp, dir_fd=dfd)
            raise
        os.fsync(dfd)
    finally:
        os.close(dfd)
    return "rename"


def remove_in_directory(path: Path) -> None:
    """Unlink ``path`` (whatever it is) through its directory, nothing followed."""
    try:
        dfd = _open_directory(path.parent)
    except FileNotFoundError:
        return
    try:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path.name, dir_fd=dfd)
    finally:
        os.close(dfd)


def replace_file(
    path: Path,
    data: bytes,
    *,
    mode: int | None = None,
    expect: Snapshot | None = None,
    follow: bool = True,
) -> str:
    """Write ``data`` to ``path`` atomically; returns "rename" or "in-place".

    ``mode`` forces the file mode (the addn-hosts file must stay 0644 for
    dnsmasq's unprivileged user); otherwise the existing mode is kept, 0644
    for a new file. With ``expect`` (from read_snapshot), the file must still
    be the one read, or ConcurrentEdit is raised and nothing is changed.
    With ``follow`` false, whatever is at ``path`` (a symlink, a FIFO) is replaced,
    never followed: for a directory someone else may write to.
    """
    if not follow:
        return _replace_in_directory(path, data, 0o644 if mode is None else mode)
    target = Path(os.path.realpath(path))  # a symlinked /etc/hosts stays a symlink
    directory = target.parent
    try:
        st: os.stat_result | None = os.stat(target)
    except FileNotFoundError:
        st = None
    if st is not None and not stat.S_ISREG(st.st_mode):
        st = None  # nothing to keep the mode and owner of
    fd, tmp_name = tempfile.mkstemp(prefix=temp_prefix(target), dir=directory)
    tmp = Path(tmp_name)
    try:
        _write_temp(fd, data, target, st, mode)
        try:
            if expect is None:
                os.rename(tmp, target)
            else:
                _install_checked(tmp, target, expect)
        except OSError as e:
            if e.errno not in (errno.EBUSY, errno.EXDEV):
                raise
            tmp.unlink()
            _rewrite_in_place(target, data, expect)
            return "in-place"
        _fsync_dir(directory)
        return "rename"
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
