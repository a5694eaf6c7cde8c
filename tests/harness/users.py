"""Real unprivileged Unix users for tests (the control socket's hostile locals, rootless Podman).

/etc/passwd is the machine's, not the test namespace's: every name made here
is unique to this run (``nst<tag><pid>``), creation is serialised by a host-
wide flock (concurrent ``useradd`` runs fail with "cannot lock /etc/passwd"),
``sep``/``capital`` spell a name that needs normalising to be a DNS label
(``nst.coll123``, ``nst_coll123``, ``Nst.coll123`` all spell ``nst-coll123``),
asking twice for the same tag returns the same user, and users left behind by
a killed run (their pid no longer alive) are removed the next time anyone
creates one. ``remove()`` deletes the user and its home by name.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import pwd
import re
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

PREFIX = "nst"
LOCK = Path("/var/cache/namesync-tests/users.lock")
_NAME = re.compile(rf"^{PREFIX}[-._]?([a-z]+)(\d+)$", re.IGNORECASE)
SEPARATORS = ("", ".", "_", "-")


@dataclass(frozen=True)
class User:
    name: str
    uid: int
    gid: int
    home: Path


@contextlib.contextmanager
def _locked() -> Iterator[None]:
    LOCK.parent.mkdir(parents=True, exist_ok=True)
    with LOCK.open("a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        yield


def user_name(tag: str, pid: int | None = None, *, sep: str = "", capital: bool = False
              ) -> str:
    """The name of this run's user for ``tag`` (lowercase letters only, <= 12 of them)."""
    if not re.fullmatch(r"[a-z]{1,12}", tag):
        raise ValueError(f"tag must be 1-12 lowercase letters, got {tag!r}")
    if sep not in SEPARATORS:
        raise ValueError(f"sep must be one of {SEPARATORS}, got {sep!r}")
    prefix = PREFIX.capitalize() if capital else PREFIX
    return f"{prefix}{sep}{tag}{os.getpid() if pid is None else pid}"


def _lookup(name: str) -> User | None:
    try:
        pw = pwd.getpwnam(name)
    except KeyError:
        return None
    return User(pw.pw_name, pw.pw_uid, pw.pw_gid, Path(pw.pw_dir))


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _userdel(name: str) -> None:
    # -r: home and mail spool too; a process still running as the user is the
    # caller's to stop first (userdel refuses, and that is reported).
    subprocess.run(["userdel", "-r", name], capture_output=True, timeout=60)


def _reap_stale() -> None:
    for pw in pwd.getpwall():
        m = _NAME.match(pw.pw_name)
        if m and not _alive(int(m.group(2))):
            _userdel(pw.pw_name)


def ensure_user(tag: str, *, home: bool = True, sep: str = "", capital: bool = False) -> User:
    """This run's user for ``tag``, created if needed (with a home and subuid/subgid ranges).

    Needs root. Idempotent: the same tag (and spelling) in the same process is the same user.
    """
    name = user_name(tag, sep=sep, capital=capital)
    with _locked():
        found = _lookup(name)
        if found is not None:
            return found
        _reap_stale()
        args = ["useradd", "--user-group", "--shell", "/bin/sh"]
        args += ["--create-home"] if home else ["--no-create-home", "--home-dir", "/nonexistent"]
        done = subprocess.run([*args, name], capture_output=True, text=True, timeout=60)
        if done.returncode != 0:
            raise RuntimeError(f"useradd {name} failed: {done.stderr.strip()}")
        created = _lookup(name)
        assert created is not None, f"useradd {name} succeeded but getpwnam does not find it"
        return created


def subuid_range(user: User) -> tuple[int, int]:
    """(first, count) of the user's /etc/subuid range (useradd makes one)."""
    for line in Path("/etc/subuid").read_text().splitlines():
        owner, _, rest = line.partition(":")
        if owner in (user.name, str(user.uid)):
            first, _, count = rest.partition(":")
            return int(first), int(count)
    raise LookupError(f"{user.name} has no /etc/subuid range")


def remove(user: User) -> None:
    with _locked():
        if _lookup(user.name) is not None:
            _userdel(user.name)
