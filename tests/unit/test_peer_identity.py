"""Who a peer is (agent/peer/identity.py): uid -> login -> label, collisions refused to all.

passwd here is a table handed to the Directory (the real one is the machine's,
and LDAP-like directories that do not enumerate cannot be made on demand);
tests/integration/test_user_session.py runs the same rules on real users.
"""

from __future__ import annotations

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
