"""Who a peer is (agent/peer/identity.py): uid -> login -> label, collisions refused to all.

passwd here is a table handed to the Directory (the real one is the machine's,
and LDAP-like directories that do not enumerate cannot be made on demand);
tests/integration/test_user_session.py runs the same rules on real users.
"""

from __future__ import annotations

import itertools
import os
from pathlib import Path

import pytest

from agent.peer.identity import LISTING_TTL_S, Directory

from .helpers import Passwd


def identify(d: Directory, uid: int) -> None:
    if d.needs_lookup(uid):
        d.learn(d.lookup(uid))


def test_label_comes_from_the_login_and_a_plain_login_owns_its_label() -> None:
    d = Passwd({1000: "alice", 1001: "J.Smith"}).directory()
    identify(d, 1000)
    identify(d, 1001)
    alice, smith = d.identity(1000), d.identity(1001)
    assert (alice.login, alice.label, alice.why_not) == ("alice", "alice", None)
    assert (smith.login, smith.label, smith.why_not) == ("J.Smith", "j-smith", None)
    assert d.owned_labels() == {"alice", "j-smith"}


@pytest.mark.parametrize("logins", [("j.smith", "j_smith"), ("j.smith", "J.Smith"),
                                    ("j_smith", "j-smith")])
def test_logins_spelling_one_label_are_refused_to_each_of_them(logins: tuple[str, str]) -> None:
    d = Passwd({1001: logins[0], 1002: logins[1]}).directory()
    for uid in (1001, 1002):
        identify(d, uid)
    for uid, other in ((1001, 1002), (1002, 1001)):
        ident = d.identity(uid)
        assert ident.label == "j-smith" and ident.why_not is not None
        assert f"(uid {other})" in ident.why_not and "refused to each" in ident.why_not
    assert "j-smith" in d.owned_labels()  # and nobody else (a trusted user) may take it


def test_a_collision_in_a_directory_that_does_not_list_it_is_found_when_the_uid_connects(
        ) -> None:
    pw = Passwd({1001: "j.smith", 1002: "j_smith"}, listed=set())
    d = pw.directory()
    identify(d, 1001)
    assert d.identity(1001).why_not is None  # nothing says otherwise yet
    identify(d, 1002)
    assert d.identity(1001).why_not is not None and d.identity(1002).why_not is not None


def test_the_login_spelled_exactly_like_the_label_is_found_without_a_listing() -> None:
    # j-smith is the plain spelling of j.smith's label: getpwnam finds it even in a
    # directory that does not enumerate; it only ever adds a refusal.
    d = Passwd({1001: "j.smith", 1003: "j-smith"}, listed=set()).directory()
    identify(d, 1001)
    assert d.identity(1001).why_not is not None and "(uid 1003)" in d.identity(1001).why_not


def test_no_passwd_entry_is_not_admitted() -> None:
    d = Passwd({1000: "alice"}).directory()
    identify(d, 165_536)
    ident = d.identity(165_536)
    assert not ident.admitted and ident.login is None
    assert "no passwd entry" in (ident.why_not or "")


def test_one_lookup_per_uid_within_the_ttl_and_the_listing_is_refreshed() -> None:
    pw = Passwd({1000: "alice"})
    now = [0.0]
    d = pw.directory(now)
    for _ in range(100):
        identify(d, 1000)
    assert pw.calls == ["uid:1000", "all"]
    now[0] = LISTING_TTL_S + 1
    pw.known[1005] = "alice_"  # a new user whose login spells "alice" too
    pw.listed.add(1005)
    identify(d, 1000)
    assert "all" in pw.calls[2:]
    assert d.identity(1000).why_not is not None


def test_a_colliding_login_removed_or_renamed_frees_the_label() -> None:
    """What the refusal advises (rename one) works without an agent restart: the
    login spelled like the label is looked up again, and is gone."""
    pw = Passwd({1000: "j.smith", 1001: "j-smith", 1002: "k.jones", 1003: "k-jones"})
    now = [0.0]
    d = pw.directory(now)
    identify(d, 1000)
    identify(d, 1002)
    assert d.identity(1000).why_not is not None and d.identity(1002).why_not is not None
    del pw.known[1001]  # removed
    pw.listed.discard(1001)
    pw.known[1003] = "kjones"  # renamed
    now[0] = LISTING_TTL_S + 1
    identify(d, 1000)
    identify(d, 1002)
    assert d.identity(1000).why_not is None
    assert d.identity(1002).why_not is None
    assert "kjones" in d.owned_labels() and "j-smith" in d.owned_labels()


def test_a_user_removed_and_recreated_with_a_new_uid_gets_its_label() -> None:
    """userdel bob; useradd bob: the old uid, remembered from its connection, is
    re-checked by the next listing and forgotten; the new bob is not refused."""
    pw = Passwd({1001: "bob"})
    now = [0.0]
    d = pw.directory(now)
    identify(d, 1001)
    del pw.known[1001]
    pw.listed = {1002}
    pw.known[1002] = "bob"
    now[0] = LISTING_TTL_S + 1
    identify(d, 1002)
    assert "uid:1001" in pw.calls  # re-checked in the lookup, not on the loop
    assert d.identity(1002).why_not is None
    assert d.owned_labels() == {"bob"} and not d.seen(1001)


def test_the_uids_rechecked_per_listing_are_bounded_and_take_turns() -> None:
    """In a directory that does not enumerate, remembered uids are never listed: each
    listing re-checks at most MAX_RECHECK of them, the longest unchecked first."""
    from agent.peer.identity import MAX_RECHECK

    users = {2000 + i: f"u{i}" for i in range(MAX_RECHECK * 2)}
    pw = Passwd(dict(users), listed=set())
    now = [0.0]
    d = pw.directory(now)
    for uid in users:
        d.learn(d.lookup(uid))  # each connected once (the listing is fresh after the first)
    for uid in users:
        del pw.known[uid]
    checked: set[int] = set()
    for _ in (1, 2):
        pw.calls.clear()
        now[0] += LISTING_TTL_S + 1
        identify(d, 1)
        mine = {int(c[4:]) for c in pw.calls if c.startswith("uid:")} - {1}
        assert len(mine) == MAX_RECHECK and not mine & checked
        checked |= mine
    assert not any(d.seen(uid) for uid in users)


def test_subordinate_uids_come_from_etc_subuid_and_follow_its_changes(tmp_path: Path) -> None:
    subuid = tmp_path / "subuid"
    subuid.write_text("alice:200000:65536\n# comment\nbad line\n")
    pw = Passwd({1000: "alice"})
    now = [0.0]
    d = Directory(getpwuid=pw.getpwuid, getpwall=pw.getpwall, getpwnam=pw.getpwnam,
                  clock=lambda: now[0], subuid=subuid)
    assert not d.subordinate(200_000)  # nothing read before the first listing
    identify(d, 1000)
    assert d.subordinate(200_000) and d.subordinate(265_535) and not d.subordinate(265_536)
    assert "subordinate" in (d.identity(200_001).why_not or "")
    subuid.write_text("alice:300000:10\n")
    os.utime(subuid, (1, 1))
    now[0] += LISTING_TTL_S + 1
    identify(d, 1000)
    assert not d.subordinate(200_000) and d.subordinate(300_009)


def test_uids_without_an_entry_are_remembered_as_runs_not_one_by_one() -> None:
    """A flood cycling through more uids than MAX_CACHED (a rootless user's 65,536,
    where /etc/subuid does not say so): each uid costs one lookup per LOGIN_TTL_S,
    not one per connect, and a user in the middle is unaffected."""
    from agent.peer.identity import LOGIN_TTL_S, MAX_CACHED

    pw = Passwd({1000: "alice", 305_000: "carol"})
    now = [0.0]
    d = pw.directory(now)
    flood = [u for u in range(300_000, 300_000 + 2 * MAX_CACHED + 10_000) if u != 305_000]
    for _ in range(3):
        for uid in flood:
            identify(d, uid)
    assert d.lookups == len(flood)  # once each (the first one lists, too)
    assert d.identity(305_000).why_not is None  # listed: never in a run
    assert not d.identity(300_001).admitted
    now[0] += LOGIN_TTL_S + 1  # the runs expire like any login
    identify(d, 300_001)
    assert d.lookups == len(flood) + 1


def test_runs_of_uids_without_an_entry_hold_every_uid_found_in_any_order() -> None:
    import random

    from agent.peer.identity import LOGIN_TTL_S

    rng = random.Random(7)
    now = [0.0]
    d = Passwd({}).directory(now)
    lookups = 0
    for step in range(5000):
        uid = rng.randrange(5000, 5400)
        if d.needs_lookup(uid):
            d.learn(d.lookup(uid))
            lookups += 1
            assert not d.needs_lookup(uid)  # in a run now (of which it may be the first)
        now[0] += 0.005  # 25 s: the listing (30 s) stays fresh
        if step % 250 == 0:
            runs = d._nobody
            assert all(a[1] < b[0] for a, b in itertools.pairwise(runs)), runs
            assert d._nobody_firsts == [r[0] for r in runs]
    # A run expires LOGIN_TTL_S after its first uid was found: 400 uids, ~3 times each.
    assert lookups < 400 * (25 / LOGIN_TTL_S + 2)
