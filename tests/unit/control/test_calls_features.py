"""Feature codes from the phone: *72<user>/*73 forward-always, *78/*79 DND (calls/features.py)."""

from __future__ import annotations

import pytest

from softswitch.db.messages import UpdateUser
from softswitch.protocol import Allocate
from softswitch.sip.dialog import Dialog
from softswitch.sip.sdp import SessionDescription
from tests.unit.control.calls_harness import DOMAIN, Switch


@pytest.fixture
def sw() -> Switch:
    return Switch()


def dial_code(sw: Switch, phone, code: str, call_id: str = "code-1@bob") -> None:
    """The phone dials ``code``: 200 with the audio rejected, ACK, then our BYE."""
    invite = sw.authenticated_invite(phone, code, call_id=call_id)
    ok = phone.take(200)
    answer = SessionDescription.parse(ok.body)
    assert [m.port for m in answer.media] == [0]  # RFC 3264 §6: stream rejected
    assert not phone.has("BYE")  # §15: not before the ACK
    dialog = Dialog.from_uac(invite, ok)
    phone.send(dialog.create_ack(invite.cseq, via=phone.via()))
    bye = phone.take("BYE")
    assert bye.call_id == call_id
    phone.send(phone.answer(bye, 200))


def test_star72_forwards_bobs_calls_to_carol_at_once_and_writes_the_db(sw: Switch) -> None:
    alice = sw.phone("alice", "198.51.100.10")
    bob = sw.phone("bob", "198.51.100.20")
    carol = sw.phone("carol", "198.51.100.30")
    for p in (bob, carol):
        sw.register(p)
    dial_code(sw, bob, "*72carol")
    assert sw.db == [UpdateUser("bob", DOMAIN, (("forward_always", "carol"),))]
    assert not sw.pool.of(Allocate) and not sw.cdrs  # a setting, not a call
    sw.authenticated_invite(alice, "bob")
    assert carol.has("INVITE") and not bob.has("INVITE")


def test_star73_stops_forwarding(sw: Switch) -> None:
    alice = sw.phone("alice", "198.51.100.10")
    bob = sw.phone("bob", "198.51.100.20")
    sw.register(bob)
    dial_code(sw, bob, "*72carol")
    dial_code(sw, bob, "*73", call_id="code-2@bob")
    assert sw.db[-1] == UpdateUser("bob", DOMAIN, (("forward_always", ""),))
    sw.authenticated_invite(alice, "bob")
    assert bob.has("INVITE")


def test_star78_and_star79_dnd(sw: Switch) -> None:
    alice = sw.phone("alice", "198.51.100.10")
    bob = sw.phone("bob", "198.51.100.20")
    sw.register(bob)
    dial_code(sw, bob, "*78")
    sw.authenticated_invite(alice, "bob")
    alice.take(486)
    dial_code(sw, bob, "*79", call_id="code-2@bob")
    assert sw.db == [
        UpdateUser("bob", DOMAIN, (("dnd", True),)),
        UpdateUser("bob", DOMAIN, (("dnd", False),)),
    ]
    sw.authenticated_invite(alice, "bob", call_id="call-2@alice")
    assert bob.has("INVITE")


def test_a_forward_to_nobody_is_404_and_to_oneself_482(sw: Switch) -> None:
    bob = sw.phone("bob", "198.51.100.20")
    sw.authenticated_invite(bob, "*72nobody")
    bob.take(404)
    sw.authenticated_invite(bob, "*72bob", call_id="code-2@bob")
    bob.take(482)
    assert sw.db == []


def test_codes_need_credentials_like_calls(sw: Switch) -> None:
    bob = sw.phone("bob", "198.51.100.20")
    bob.send(bob.invite("*78"))
    bob.take(407)
    bob_user = sw.directory.lookup("bob", DOMAIN)
    assert sw.db == [] and bob_user is not None and not bob_user.dnd


def test_an_empty_code_is_switched_off(sw: Switch) -> None:
    sw.config.calls.feature_dnd_on = ""
    alice = sw.phone("alice", "198.51.100.10")
    sw.authenticated_invite(alice, "*78")
    alice.take(404)  # an ordinary (unknown) user now
    assert sw.db == []
