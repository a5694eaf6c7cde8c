"""Who a peer is: uid -> login -> sub-zone label, and which labels belong to someone.

SO_PEERCRED gives a uid, passwd gives its login, and the login normalised to
one DNS label (RFC 1123) names its sub-zone: ``j.smith`` -> ``j-smith``. The
way back is never taken to decide ownership: a label looked up as a login
(``getpwnam("j-smith")``) finds nobody, or somebody else. Which labels are
taken is known from the uid side only: every entry passwd lists (getpwall:
/etc/passwd, and a directory that enumerates) and every uid that connected.

Collisions. Logins that normalise to one label (j.smith, j_smith, J.Smith)
would share a sub-zone, so such a label is refused to *every* uid that spells
it, not given to the first one to connect: who connects first changes with
every boot and agent restart, so first-come would let a user take another's
sub-zone by connecting first, and names would move between users across
restarts. Refusing all of them depends on passwd alone, never flaps, and is
fixed by renaming one login. (A directory that does not enumerate shows a
colliding login only once its uid connects; from then on both are refused
and what the first published is withdrawn.)

A uid with no passwd entry (a subordinate uid from /etc/subuid, which any
rootless user can become with newuidmap) has no login and so no sub-zone: it
can never publish, and the peer socket refuses it at accept, before reading
anything, so such uids cannot hold connection slots (control/server.py).
Which uids need no lookup is decided at once: one the listing (or an earlier
connection) gave a login is admitted on it and looked up again behind its
connection; one in a range of /etc/subuid (root's file, re-read when it
changes) and not listed is refused. Only the others wait for passwd, and
only they count against the cap on lookups in flight, so a rootless user's
flood of subordinate uids costs no lookup and turns nobody else away.

What was learnt is forgotten when passwd forgets it: the login spelled like
a label is replaced (or dropped) whenever that label is looked up again, and
every listing re-checks (a bounded number of) the uids remembered from
connections or spellings that it does not list, so a removed user's label is
free again and a recreated login is its new uid's.

The lookups block (passwd may be LDAP/sssd): ``lookup`` runs in a thread; the
rest runs on the loop and only reads what the lookups brought back.
"""

from __future__ import annotations

import bisect
import pwd
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from agent.model.names import InvalidName, normalise_label

# Logins found per uid are trusted this long: a flood of connections from one
# uid costs one lookup, and a renamed login is seen within this.
LOGIN_TTL_S = 10.0
# How often passwd is listed again (new users, and so new collisions).
LISTING_TTL_S = 30.0
# Uids remembered, each one a user can become is one entry, so they are capped
# (oldest forgotten first). Those without a passwd entry are remembered as runs
# of consecutive uids as well (as many runs at most): a flood cycling through
# 65,536 uids is one run, looked up once per LOGIN_TTL_S, not once per connect.
MAX_CACHED = 4096
# Remembered uids a listing does not show, re-checked with getpwuid per listing
# (the longest unchecked first): a directory that does not enumerate lists none.
MAX_RECHECK = 64
SUBUID = Path("/etc/subuid")


@dataclass(frozen=True, slots=True)
class Identity:
    uid: int
    login: str | None  # None: no passwd entry; refused at accept
    label: str | None  # the sub-zone label; None when the login has no DNS spelling
    why_not: str | None = None  # None: may publish under ``label``

    @property
    def admitted(self) -> bool:
        return self.login is not None


@dataclass(frozen=True, slots=True)
class Lookup:
    """What the blocking part found, handed to the loop."""

    uid: int
    login: str | None
    listing: tuple[tuple[int, str], ...] | None  # (uid, login) of all entries, if listed
    # The uid of the login spelled exactly like this uid's label, when the login is
    # not already its label: only ever more refusals, never an owner.
    same_spelling: tuple[int, str] | None = None  # (uid, login)
    spelled: str | None = None  # the label looked up as a login (None: not looked up)
    # Remembered uids the listing does not show, as getpwuid has them now.
    rechecked: tuple[tuple[int, str | None], ...] = ()
    # /etc/subuid's ranges (first, count), when it was (re-)read: (mtime, ranges).
    subuid: tuple[float, tuple[tuple[int, int], ...]] | None = None


Ranges = tuple[tuple[int, int], ...]  # (first, count) of /etc/subuid's lines


def read_subuid(path: Path, known: float | None) -> tuple[float, Ranges] | None:
    """``path``'s ranges, if its mtime is not ``known``; a missing file has none."""
    try:
        st = path.stat()
    except OSError:
        return None if known == 0.0 else (0.0, ())
    if st.st_mtime == known:
        return None
    ranges = []
    try:
        with path.open(encoding="utf-8", errors="replace") as f:
            for line in f:
                fields = line.strip().split(":")
                if len(fields) == 3 and fields[1].isdigit() and fields[2].isdigit():
                    ranges.append((int(fields[1]), int(fields[2])))
    except OSError:
        return None
    return st.st_mtime, tuple(ranges)


def _label(login: str) -> str | None:
    try:
        return normalise_label(login)
    except InvalidName:
        return None


class Directory:
    """The peers' identities as the system agent knows them; one per peer source."""

    def __init__(self, *, getpwuid: Callable[[int], pwd.struct_passwd] | None = None,
                 getpwall: Callable[[], list[pwd.struct_passwd]] | None = None,
                 getpwnam: Callable[[str], pwd.struct_passwd] | None = None,
                 clock: Callable[[], float] = time.monotonic,
                 subuid: Path = SUBUID) -> None:
        self._getpwuid = getpwuid or pwd.getpwuid
        self._getpwall = getpwall or pwd.getpwall
        self._getpwnam = getpwnam or pwd.getpwnam
        self._clock = clock
        self._logins: dict[int, tuple[str | None, float]] = {}  # uid -> (login, when)
        self._listed: dict[int, str] = {}  # uid -> login, from the last listing
        self._listed_at: float | None = None
        self._seen: dict[int, str] = {}  # uid -> login, of every uid that connected
        # label -> (uid, login): the login spelled exactly like that label, as last found
        self._spelled: dict[str, tuple[int, str]] = {}
        self._subuid_path = subuid
        self._subuid: tuple[float, tuple[tuple[int, int], ...]] | None = None
        # Runs of uids found without a passwd entry: (first, last, when the first
        # was found), sorted; ``_nobody_firsts`` is their firsts, for bisect.
        self._nobody: list[tuple[int, int, float]] = []
        self._nobody_firsts: list[int] = []
        self._owners: dict[str, frozenset[int]] = {}
        self.lookups = 0  # passwd lookups made (status; tests count them)
        self.generation = 0  # bumped whenever which labels are whose changes

    # --- the blocking part (a thread) ----------------------------------------

    def needs_lookup(self, uid: int) -> bool:
        if self._stale():
            return True
        found = self._logins.get(uid)
        if found is not None and self._clock() - found[1] <= LOGIN_TTL_S:
            return False
        return self._nobody_run(uid) is None

    def _nobody_run(self, uid: int) -> int | None:
        """The index of the fresh run of uids without an entry that holds ``uid``."""
        i = bisect.bisect_right(self._nobody_firsts, uid) - 1
        if i < 0:
            return None
        first, last, when = self._nobody[i]
        if first <= uid <= last and self._clock() - when <= LOGIN_TTL_S:
            return i
        return None

    def _note_nobody(self, uid: int, now: float) -> None:
        """``uid`` has no entry: it joins a fresh run next to it, or starts one."""
        if self._nobody_run(uid) is not None:
            return
        i = bisect.bisect_right(self._nobody_firsts, uid)
        if i > 0 and self._nobody[i - 1][1] >= uid:
            # A stale run holds it: dropped, so that no two runs overlap.
            del self._nobody[i - 1], self._nobody_firsts[i - 1]
            i -= 1
        left = self._nobody[i - 1] if i > 0 else None
        right = self._nobody[i] if i < len(self._nobody) else None
        fresh_left = left is not None and left[1] == uid - 1 and now - left[2] <= LOGIN_TTL_S
        fresh_right = (right is not None and right[0] == uid + 1
                       and now - right[2] <= LOGIN_TTL_S)
        if fresh_left and left is not None:
            if fresh_right and right is not None:
                self._nobody[i - 1] = (left[0], right[1], min(left[2], right[2]))
                del self._nobody[i], self._nobody_firsts[i]
            else:
                self._nobody[i - 1] = (left[0], uid, left[2])
        elif fresh_right and right is not None:
            self._nobody[i] = (uid, right[1], right[2])
            self._nobody_firsts[i] = uid
        else:
            self._nobody.insert(i, (uid, uid, now))
            self._nobody_firsts.insert(i, uid)
        if len(self._nobody) > MAX_CACHED:
            oldest = min(range(len(self._nobody)), key=lambda j: self._nobody[j][2])
            del self._nobody[oldest], self._nobody_firsts[oldest]

    def _stale(self) -> bool:
        return self._listed_at is None or self._clock() - self._listed_at > LISTING_TTL_S

    def remembered(self) -> tuple[int, ...]:
        """On the loop: the uids known from connections and spellings, the longest
        unchecked first (what ``lookup`` re-checks when it lists)."""
        uids = set(self._seen) | {uid for uid, _ in self._spelled.values()}
        return tuple(sorted(uids, key=lambda u: self._logins.get(u, (None, -1.0))[1]))

    def _login(self, uid: int) -> str | None:
        try:
            return self._getpwuid(uid).pw_name
        except KeyError:
            return None

    def lookup(self, uid: int, remembered: tuple[int, ...] | None = None) -> Lookup:
        """Blocking: passwd for ``uid`` (and the whole listing when it is due).

        ``remembered`` is ``remembered()`` taken on the loop (by default, here)."""
        self.lookups += 1
        login = self._login(uid)
        listing = None
        rechecked: tuple[tuple[int, str | None], ...] = ()
        subuid = None
        if self._stale():
            listing = tuple((p.pw_uid, p.pw_name) for p in self._getpwall())
            listed = {u for u, _ in listing}
            if remembered is None:
                remembered = self.remembered()
            unlisted = [u for u in remembered if u not in listed and u != uid]
            rechecked = tuple((u, self._login(u)) for u in unlisted[:MAX_RECHECK])
            subuid = read_subuid(self._subuid_path,
                                 None if self._subuid is None else self._subuid[0])
        same = None
        label = _label(login) if login is not None else None
        spelled = None
        if label is not None and label != login:
            spelled = label
            try:
                found = self._getpwnam(label)
                same = (found.pw_uid, found.pw_name)
            except KeyError:
                same = None
        return Lookup(uid, login, listing, same, spelled, rechecked, subuid)

    # --- on the loop -----------------------------------------------------------

    def learn(self, found: Lookup) -> bool:
        """Take what ``lookup`` found; True if which labels are whose changed."""
        now = self._clock()
        if found.listing is not None:
            self._listed = dict(found.listing)
            self._listed_at = now
        if found.subuid is not None:
            self._subuid = found.subuid
        self._relearn(found.uid, found.login, now, connected=True)
        if found.login is None:
            self._note_nobody(found.uid, now)
        for uid, login in found.rechecked:
            self._relearn(uid, login, now, connected=False)
        if found.spelled is not None:
            # Replaced, never only added to: a colliding login removed or renamed (as
            # the refusal advises) frees the label once it is looked up again.
            if found.same_spelling is not None:
                self._spelled[found.spelled] = found.same_spelling
            else:
                self._spelled.pop(found.spelled, None)
        while len(self._logins) > MAX_CACHED:
            del self._logins[next(iter(self._logins))]
        return self._rebuild()

    def _relearn(self, uid: int, login: str | None, now: float, *, connected: bool) -> None:
        """``uid``'s login as passwd has it now, wherever it was remembered."""
        self._logins[uid] = (login, now)
        if login is not None:
            if connected or uid in self._seen:
                self._seen[uid] = login
        else:
            self._seen.pop(uid, None)  # removed from passwd: its label is free
        for label, (owner, spelled) in list(self._spelled.items()):
            if owner == uid and spelled != login:
                del self._spelled[label]

    def _rebuild(self) -> bool:
        owners: dict[str, set[int]] = {}
        for uid, login in self._pairs():
            label = _label(login)
            if label is not None:
                owners.setdefault(label, set()).add(uid)
        new = {label: frozenset(uids) for label, uids in owners.items()}
        changed = new != self._owners
        self._owners = new
        self.generation += changed
        return changed

    def _pairs(self) -> Iterable[tuple[int, str]]:
        yield from self._listed.items()
        yield from self._spelled.values()
        yield from self._seen.items()

    def seen(self, uid: int) -> bool:
        """``uid`` connected before with a login (the login may be out of date)."""
        return uid in self._seen

    def known(self, uid: int) -> bool:
        """``uid`` has a login from a connection or the listing (maybe out of date):
        it is decided on that, and looked up again behind its connection."""
        return self.login_of(uid) is not None

    def subordinate(self, uid: int) -> bool:
        """``uid`` is in a range of /etc/subuid (as of the last listing)."""
        ranges = self._subuid[1] if self._subuid is not None else ()
        return any(first <= uid < first + count for first, count in ranges)

    def login_of(self, uid: int) -> str | None:
        found = self._logins.get(uid)
        if found is not None:
            return found[0]
        return self._seen.get(uid) or self._listed.get(uid)

    def _known_login(self, uid: int) -> str | None:
        spelled = next((login for owner, login in self._spelled.values() if owner == uid),
                       None)
        return self._seen.get(uid) or self._listed.get(uid) or spelled

    def _login_named(self, uid: int) -> str:
        login = self._known_login(uid)
        return f"{login!r} (uid {uid})" if login else f"uid {uid}"

    def identity(self, uid: int) -> Identity:
        """What ``uid`` is and may do, from what the lookups found so far."""
        login = self.login_of(uid)
        if login is None:
            sub = " (a subordinate uid, /etc/subuid)" if self.subordinate(uid) else ""
            return Identity(uid, None, None,
                            f"uid {uid}{sub} has no passwd entry (no user name)")
        try:
            label = normalise_label(login)
        except InvalidName as e:
            return Identity(uid, login, None,
                            f"user name {login!r} has no DNS spelling: {e.reason}")
        others = sorted(self._owners.get(label, frozenset()) - {uid})
        if others:
            names = ", ".join(self._login_named(o) for o in others)
            return Identity(uid, login, label,
                            f"user name {login!r} and {names} all spell the sub-zone "
                            f"label {label!r}: refused to each of them (rename one)")
        return Identity(uid, login, label)

    def owned_labels(self) -> frozenset[str]:
        """Every label that is some uid's sub-zone (collided ones too)."""
        return frozenset(self._owners)
