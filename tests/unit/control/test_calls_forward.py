"""Call forwarding and do-not-disturb (softswitch/calls/routing.py and setup.py)."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest

from softswitch.calls.routing import MAX_FORWARD_HOPS
from softswitch.model.cdr import Disposition
from softswitch.model.users import Forwarding, User
from softswitch.protocol import Allocate, Delete, Update
from softswitch.sip.dialog import Dialog
from tests.unit.control.calls_harness import DOMAIN, T0, Switch


@pytest.fixture
def sw() -> Switch:
    return Switch(no_answer_timeout=60)


_FORWARDING = {
    "forward_always": "always",
    "forward_busy": "busy",
    "forward_noanswer": "noanswer",
    "noanswer_after": "noanswer_after",
    "dnd": "dnd",
}


def changed(user: User, **values: Any) -> User:
    """``user`` with columns changed, as the DB thread would load it."""
    fw = {short: getattr(user, name) for name, short in _FORWARDING.items()}
    fw.update({_FORWARDING[k]: values.pop(k) for k in list(values) if k in _FORWARDING})
    return replace(user, forwarding=Forwarding.of(**fw), **values)


def settings(sw: Switch, name: str, **values: Any) -> None:
    """Change a user as a DB sync would (UsersChanged -> UserDirectory.apply)."""
    user = sw.directory.lookup(name, DOMAIN)
    assert user is not None
    sw.directory.apply([changed(user, **values)], [])


def add_user(sw: Switch, name: str, **values: Any) -> None:
    alice = sw.directory.lookup("alice", DOMAIN)
    assert alice is not None
    user = replace(alice, id=100 + len(sw.directory), username=name, display_name=name)
    sw.directory.apply([changed(user, **values)], [])


def world(sw: Switch):
    phones = {
        n: sw.phone(n, f"198.51.100.{10 + i}")
        for i, n in enumerate(("alice", "bob", "carol", "dave"))
    }
    for name in ("bob", "carol", "dave"):
        sw.register(phones[name])
    return phones


def answer(sw: Switch, caller, callee, invite_a) -> None:
    invite = callee.take("INVITE")
    callee.send(callee.answer(invite, 180))
    callee.send(callee.answer(invite, 200, callee.offer()))
    ok = caller.take(200)
    caller.send(Dialog.from_uac(invite_a, ok).create_ack(invite_a.cseq, via=caller.via()))
    callee.take("ACK")


def test_forward_always_rings_the_target_and_the_cdr_says_so(sw: Switch) -> None:
    p = world(sw)
    settings(sw, "bob", forward_always="carol")
    invite_a = sw.authenticated_invite(p["alice"], "bob")
    assert not p["bob"].has("INVITE")
    invite_c = p["carol"].take("INVITE")
    assert invite_c.to.uri.user == "bob"  # the dialled user, as a PBX shows it
    p["carol"].send(p["carol"].answer(invite_c, 200, p["carol"].offer()))
    ok = p["alice"].take(200)
    dialog = Dialog.from_uac(invite_a, ok)
    p["alice"].send(dialog.create_ack(invite_a.cseq, via=p["alice"].via()))
    assert sw.calls.active_calls("carol", DOMAIN) == 1
    assert sw.calls.active_calls("bob", DOMAIN) == 0
    p["alice"].send(dialog.create_request("BYE", via=p["alice"].via()))
    cdr = sw.cdrs[0]
    assert (cdr.callee, cdr.forwarded_from) == (f"carol@{DOMAIN}", f"bob@{DOMAIN}")
    assert cdr.disposition is Disposition.ANSWERED
    assert sw.calls.counters["call_forwarded"] == 1


def test_a_chain_of_forwards_is_followed(sw: Switch) -> None:
    p = world(sw)
    settings(sw, "bob", forward_always="carol")
    settings(sw, "carol", forward_always="dave")
    sw.authenticated_invite(p["alice"], "bob")
    assert p["dave"].has("INVITE") and not p["carol"].has("INVITE")


def test_dnd_answers_486_and_writes_a_busy_cdr(sw: Switch) -> None:
    p = world(sw)
    settings(sw, "bob", dnd=True)
    sw.authenticated_invite(p["alice"], "bob")
    p["alice"].take(486)
    assert not p["bob"].has("INVITE")
    assert not sw.pool.of(Allocate)  # refused before it cost a bearer session
    assert (sw.cdrs[0].disposition, sw.cdrs[0].sip_code) == (Disposition.BUSY, 486)


def test_dnd_with_a_busy_forward_goes_there(sw: Switch) -> None:
    p = world(sw)
    settings(sw, "bob", dnd=True, forward_busy="carol")
    sw.authenticated_invite(p["alice"], "bob")
    assert p["carol"].has("INVITE") and not p["bob"].has("INVITE")


def test_a_loop_is_refused_with_482(sw: Switch) -> None:
    p = world(sw)
    settings(sw, "bob", forward_always="carol")
    settings(sw, "carol", forward_always="bob")
    sw.authenticated_invite(p["alice"], "bob")
    p["alice"].take(482)
    assert not p["bob"].has("INVITE") and not p["carol"].has("INVITE")
    assert sw.cdrs[0].disposition is Disposition.REJECTED


def test_a_forward_to_oneself_is_a_loop(sw: Switch) -> None:
    p = world(sw)
    settings(sw, "bob", forward_always="bob")
    sw.authenticated_invite(p["alice"], "bob")
    p["alice"].take(482)


def test_more_than_the_maximum_hops_is_refused(sw: Switch) -> None:
    p = world(sw)
    names = [f"u{i}" for i in range(MAX_FORWARD_HOPS + 1)]
    for i, name in enumerate(names):
        nxt = names[i + 1] if i + 1 < len(names) else "carol"
        add_user(sw, name, forward_always=nxt)
    sw.authenticated_invite(p["alice"], "u0")
    p["alice"].take(482)
    # One hop fewer is fine.
    p["alice"].clear()
    sw2 = Switch()
    q = world(sw2)
    for i, name in enumerate(names[1:]):
        nxt = names[i + 2] if i + 2 < len(names) else "carol"
        add_user(sw2, name, forward_always=nxt)
    sw2.authenticated_invite(q["alice"], "u1")
    assert q["carol"].has("INVITE")


def test_a_forward_to_an_unknown_user_is_404(sw: Switch) -> None:
    p = world(sw)
    settings(sw, "bob", forward_always="nobody")
    sw.authenticated_invite(p["alice"], "bob")
    p["alice"].take(404)


def test_not_registered_goes_to_the_noanswer_forward(sw: Switch) -> None:
    p = world(sw)
    add_user(sw, "erin", forward_noanswer="carol")  # no phone registered
    sw.authenticated_invite(p["alice"], "erin")
    assert p["carol"].has("INVITE")


def test_the_callee_at_its_call_limit_goes_to_the_busy_forward(sw: Switch) -> None:
    p = world(sw)
    settings(sw, "bob", max_calls=1, forward_busy="carol")
    sw.establish(p["dave"], p["bob"])
    p["alice"].clear()
    sw.authenticated_invite(p["alice"], "bob", call_id="call-2@alice")
    assert p["carol"].has("INVITE") and not p["bob"].has("INVITE")


def test_busy_phones_forward_to_forward_busy_same_bearer_session(sw: Switch) -> None:
    p = world(sw)
    settings(sw, "bob", forward_busy="carol")
    invite_a = sw.authenticated_invite(p["alice"], "bob")
    to_bob = p["bob"].take("INVITE")
    p["bob"].send(p["bob"].answer(to_bob, 180))
    p["alice"].take(180)
    p["bob"].send(p["bob"].answer(to_bob, 486))
    p["bob"].take("ACK")
    assert not p["alice"].has(486)
    to_carol = p["carol"].take("INVITE")
    assert to_carol.body == to_bob.body  # the same offer: the same bearer leg
    p["carol"].send(p["carol"].answer(to_carol, 200, p["carol"].offer()))
    ok = p["alice"].take(200)
    p["alice"].send(Dialog.from_uac(invite_a, ok).create_ack(invite_a.cseq, via=p["alice"].via()))
    assert len(sw.pool.of(Allocate)) == 1 and not sw.pool.of(Delete)
    (update,) = [u for u in sw.pool.of(Update) if u.spec.address == p["carol"].host]
    assert update.spec.port == p["carol"].media_port
    assert sw.calls.active_calls("carol", DOMAIN) == 1
    assert sw.calls.active_calls("bob", DOMAIN) == 0


def test_busy_without_a_forward_is_486_as_before(sw: Switch) -> None:
    p = world(sw)
    sw.authenticated_invite(p["alice"], "bob")
    to_bob = p["bob"].take("INVITE")
    p["bob"].send(p["bob"].answer(to_bob, 486))
    p["alice"].take(486)


def test_no_answer_after_noanswer_after_cancels_and_forwards(sw: Switch) -> None:
    p = world(sw)
    settings(sw, "bob", forward_noanswer="carol", noanswer_after=8)
    invite_a = sw.authenticated_invite(p["alice"], "bob")
    to_bob = p["bob"].take("INVITE")
    p["bob"].send(p["bob"].answer(to_bob, 180))
    sw.advance(7.9)
    assert not p["bob"].has("CANCEL") and not p["carol"].has("INVITE")
    sw.advance(0.2)
    cancel = p["bob"].take("CANCEL")
    p["bob"].send(p["bob"].answer(cancel, 200))
    p["bob"].send(p["bob"].answer(to_bob, 487))
    to_carol = p["carol"].take("INVITE")
    assert not p["alice"].has(487) and not p["alice"].has(480)
    p["carol"].send(p["carol"].answer(to_carol, 200, p["carol"].offer()))
    ok = p["alice"].take(200)
    dialog = Dialog.from_uac(invite_a, ok)
    p["alice"].send(dialog.create_ack(invite_a.cseq, via=p["alice"].via()))
    p["alice"].send(dialog.create_request("BYE", via=p["alice"].via()))
    cdr = sw.cdrs[0]
    assert (cdr.callee, cdr.forwarded_from) == (f"carol@{DOMAIN}", f"bob@{DOMAIN}")
    assert cdr.answer == pytest.approx(T0 + 8.1)


def test_the_target_then_rings_for_the_configured_timeout(sw: Switch) -> None:
    p = world(sw)
    settings(sw, "bob", forward_noanswer="carol", noanswer_after=5)
    sw.authenticated_invite(p["alice"], "bob")
    to_bob = p["bob"].take("INVITE")
    p["bob"].send(p["bob"].answer(to_bob, 180))
    sw.advance(5.1)
    to_carol = p["carol"].take("INVITE")
    p["carol"].send(p["carol"].answer(to_carol, 180))
    sw.advance(59.8)
    assert not p["alice"].has(480)
    sw.advance(0.2)
    p["alice"].take(480)
    assert sw.cdrs[0].disposition is Disposition.NO_ANSWER


def test_noanswer_loop_back_to_the_dialled_user_is_not_followed(sw: Switch) -> None:
    p = world(sw)
    settings(sw, "bob", forward_noanswer="carol", noanswer_after=5)
    settings(sw, "carol", forward_noanswer="bob", noanswer_after=5)
    sw.authenticated_invite(p["alice"], "bob")
    to_bob = p["bob"].take("INVITE")
    p["bob"].send(p["bob"].answer(to_bob, 180))
    sw.advance(5.1)
    to_carol = p["carol"].take("INVITE")
    p["carol"].send(p["carol"].answer(to_carol, 180))
    p["bob"].clear()
    sw.advance(5.1)  # carol -> bob: a loop, so the caller hears what it would have
    assert not p["bob"].has("INVITE")
    p["alice"].take(480)


def test_a_user_change_takes_effect_on_the_next_call(sw: Switch) -> None:
    p = world(sw)
    settings(sw, "bob", dnd=True)
    sw.authenticated_invite(p["alice"], "bob")
    p["alice"].take(486)
    settings(sw, "bob", dnd=False)
    sw.authenticated_invite(p["alice"], "bob", call_id="call-2@alice")
    assert p["bob"].has("INVITE")


def test_user_defaults_mean_no_forwarding() -> None:
    user = User(1, "u", DOMAIN, "", "", "", True, False, 0)
    assert (user.forward_always, user.forward_busy, user.forward_noanswer, user.dnd) == (
        "",
        "",
        "",
        False,
    )
    assert user.noanswer_after == 20 and user.forwarding is None
    assert Forwarding.of() is None and Forwarding.of(dnd=True) == Forwarding(dnd=True)


def test_the_forwarded_from_phone_answering_late_is_acked_and_hung_up(sw: Switch) -> None:
    p = world(sw)
    settings(sw, "bob", forward_noanswer="carol", noanswer_after=5)
    sw.authenticated_invite(p["alice"], "bob")
    to_bob = p["bob"].take("INVITE")
    p["bob"].send(p["bob"].answer(to_bob, 180))
    sw.advance(5.1)
    p["bob"].take("CANCEL")
    to_carol = p["carol"].take("INVITE")
    # bob picked up as the CANCEL crossed on the wire: it must not win the call
    p["bob"].send(p["bob"].answer(to_bob, 200, p["bob"].offer()))
    p["bob"].take("ACK")
    p["bob"].take("BYE")
    assert not p["alice"].has(200)
    p["carol"].send(p["carol"].answer(to_carol, 200, p["carol"].offer()))
    p["alice"].take(200)


def test_the_caller_hanging_up_during_the_forward_cancels_the_target(sw: Switch) -> None:
    p = world(sw)
    settings(sw, "bob", forward_busy="carol")
    invite_a = sw.authenticated_invite(p["alice"], "bob")
    to_bob = p["bob"].take("INVITE")
    p["bob"].send(p["bob"].answer(to_bob, 486))
    to_carol = p["carol"].take("INVITE")
    p["carol"].send(p["carol"].answer(to_carol, 180))
    p["alice"].send(p["alice"].cancel(invite_a))
    p["alice"].take(487)
    cancel = p["carol"].take("CANCEL")
    p["carol"].send(p["carol"].answer(cancel, 200))
    p["carol"].send(p["carol"].answer(to_carol, 487))
    assert sw.cdrs[0].disposition is Disposition.CANCELLED
    assert sw.cdrs[0].forwarded_from == f"bob@{DOMAIN}"
    assert sw.calls.active_calls("carol", DOMAIN) == 0
