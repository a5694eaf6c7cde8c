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

The lookups block (passwd may be LDAP/sssd): ``lookup`` runs in a thread; the
rest runs on the loop and only reads what the lookups brought back.
"""

from __future__ import annotations

import pwd
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from agent.model.names import InvalidName, normalise_label

# Logins found per uid are trusted this long: a flood of connections from one
# uid costs one lookup, and a renamed login is seen within this.
LOGIN_TTL_S = 10.0
# How often passwd is listed again (new users, and so new collisions).
LISTING_TTL_S = 30.0
# Uids remembered without a passwd entry: each one a user can become is one
# entry, so they are capped (oldest forgotten first).
MAX_CACHED = 4096


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
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._getpwuid = getpwuid or pwd.getpwuid
        self._getpwall = getpwall or pwd.getpwall
        self._getpwnam = getpwnam or pwd.getpwnam
        self._clock = clock
        self._logins: dict[int, tuple[str | None, float]] = {}  # uid -> (login, when)
        self._listed: dict[int, str] = {}  # uid -> login, from the last listing
        self._listed_at: float | None = None
        self._seen: dict[int, str] = {}  # uid -> login, of every uid that connected
        self._spelled: dict[int, str] = {}  # uid -> login, found spelled like a label
        self._owners: dict[str, frozenset[int]] = {}
        self.lookups = 0  # passwd lookups made (status; tests count them)
        self.generation = 0  # bumped whenever which labels are whose changes

    # --- the blocking part (a thread) ----------------------------------------

    def needs_lookup(self, uid: int) -> bool:
        found = self._logins.get(uid)
        return found is None or self._clock() - found[1] > LOGIN_TTL_S or self._stale()

    def _stale(self) -> bool:
        return self._listed_at is None or self._clock() - self._listed_at > LISTING_TTL_S

    def lookup(self, uid: int) -> Lookup:
        """Blocking: passwd for ``uid`` (and the whole listing when it is due)."""
        self.lookups += 1
        try:
            login: str | None = self._getpwuid(uid).pw_name
        except KeyError:
            login = None
        listing = None
        if self._stale():
            listing = tuple((p.pw_uid, p.pw_name) for p in self._getpwall())
        same = None
        label = _label(login) if login is not None else None
        if label is not None and label != login:
            try:
                found = self._getpwnam(label)
                same = (found.pw_uid, found.pw_name)
            except KeyError:
                same = None
        return Lookup(uid, login, listing, same)

    # --- on the loop -----------------------------------------------------------

    def learn(self, found: Lookup) -> bool:
        """Take what ``lookup`` found; True if which labels are whose changed."""
        now = self._clock()
        self._logins[found.uid] = (found.login, now)
        while len(self._logins) > MAX_CACHED:
            del self._logins[next(iter(self._logins))]
        if found.listing is not None:
            self._listed = dict(found.listing)
            self._listed_at = now
        if found.login is not None:
            self._seen[found.uid] = found.login
        else:
            self._seen.pop(found.uid, None)  # removed from passwd: its label is free
        if found.same_spelling is not None:
            uid, login = found.same_spelling
            self._spelled[uid] = login
        return self._rebuild()

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
        yield from self._spelled.items()
        yield from self._seen.items()

    def seen(self, uid: int) -> bool:
        """``uid`` connected before with a login (the login may be out of date)."""
        return uid in self._seen

    def login_of(self, uid: int) -> str | None:
        found = self._logins.get(uid)
        if found is not None:
            return found[0]
        return self._seen.get(uid)

    def _known_login(self, uid: int) -> str | None:
        return self._seen.get(uid) or self._listed.get(uid) or self._spelled.get(uid)

    def _login_named(self, uid: int) -> str:
        login = self._known_login(uid)
        return f"{login!r} (uid {uid})" if login else f"uid {uid}"

    def identity(self, uid: int) -> Identity:
        """What ``uid`` is and may do, from what the lookups found so far."""
        login = self.login_of(uid)
        if login is None:
            return Identity(uid, None, None, f"uid {uid} has no passwd entry (no user name)")
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
