"""Replace a file without ever exposing a partial one, keeping its metadata.

Temp file in the same directory (name starts with ``.`` so no tool that
globs the directory picks it up), fsync, rename, fsync the directory; the
replacement gets the original's mode, owner and SELinux label. A target
that is a bind mount (containers' /etc/hosts) cannot be renamed over
(EBUSY/EXDEV): there the bytes are rewritten in place under an exclusive
flock, which is not atomic for readers but is the only thing possible.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import tempfile
from pathlib import Path

SELINUX_XATTR = "security.selinux"


class ConcurrentEdit(RuntimeError):
    """The file changed between our read and our replace: someone else is writing it."""


def temp_prefix(path: Path) -> str:
    return f".{path.name}.namesync-"


def read_bytes(path: Path) -> bytes | None:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        return None


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


def _rewrite_in_place(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        view = memoryview(data)
        offset = 0
        while offset < len(data):
            offset += os.pwrite(fd, view[offset:], offset)
        os.ftruncate(fd, len(data))
        os.fsync(fd)
    finally:
        os.close(fd)


def replace_file(
    path: Path,
    data: bytes,
    *,
    mode: int | None = None,
    expect: bytes | None = None,
    check_expect: bool = False,
) -> str:
    """Write ``data`` to ``path`` atomically; returns "rename" or "in-place".

    ``mode`` forces the file mode (the addn-hosts file must stay 0644 for
    dnsmasq's unprivileged user); otherwise the existing mode is kept, 0644
    for a new file. With ``check_expect``, the current content is compared
    with ``expect`` right before the rename, and ConcurrentEdit raised if
    someone else changed the file meanwhile (None = must not exist).
    """
    target = Path(os.path.realpath(path))  # a symlinked /etc/hosts stays a symlink
    directory = target.parent
    try:
        st: os.stat_result | None = os.stat(target)
    except FileNotFoundError:
        st = None
    fd, tmp_name = tempfile.mkstemp(prefix=temp_prefix(target), dir=directory)
    tmp = Path(tmp_name)
    try:
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
        if check_expect and read_bytes(target) != expect:
            raise ConcurrentEdit(f"{target} changed while namesync was writing it")
        try:
            os.rename(tmp, target)
        except OSError as e:
            if e.errno not in (errno.EBUSY, errno.EXDEV):
                raise
            tmp.unlink()
            _rewrite_in_place(target, data)
            return "in-place"
        _fsync_dir(directory)
        return "rename"
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
