"""The B2BUA's basic call flows, message by message (softswitch/calls.py)."""

from __future__ import annotations

import pytest

from bearer.protocol import Allocate, Update
from softswitch.cdr import Disposition
from tests.unit.control.test_calls_harness import (
    BEARER_ADDRESS,
    BEARER_PORTS,
    T0,
    Switch,
    media_of,
)


@pytest.fixture
def sw() -> Switch:
    return Switch()


def test_basic_call_sequence_from_invite_to_bye_and_cdr(sw: Switch) -> None:
    alice = sw.phone("alice", "198.51.100.10")
    bob = sw.phone("bob", "198.51.100.20")
    sw.register(bob)

    invite_a = sw.authenticated_invite(alice, "bob")
    invite_b = bob.take("INVITE")
    # B's INVITE: its own dialog, our Via/Contact, the bearer's B-leg media.
    assert invite_b.call_id != invite_a.call_id
    assert invite_b.from_.tag != invite_a.from_.tag
    assert invite_b.via.host == "192.0.2.1" and invite_b.via.branch.startswith("z9hG4bK")
    assert len(invite_b.vias) == 1
    assert invite_b.max_forwards == 69
    assert str(invite_b.uri) == "sip:bob@198.51.100.20:5060"
    assert invite_b.from_.uri.user == "alice"
    assert media_of(invite_b) == (
        BEARER_ADDRESS,
        BEARER_PORTS[1],
        "sendrecv",
        ["PCMU", "PCMA", "telephone-event"],
    )
    (allocate,) = sw.pool.of(Allocate)
    assert allocate.legs[0].address == "198.51.100.10"
    assert allocate.legs[0].port == alice.media_port
    assert allocate.legs[0].selected_pt == 0

    bob.send(bob.answer(invite_b, 180))
    ringing = alice.take(180)
    assert ringing.to.tag is not None and ringing.contacts

    bob.send(bob.answer(invite_b, 200, bob.offer()))
    (update,) = sw.pool.of(Update)
    assert update.leg == 1
    assert (update.spec.address, update.spec.port) == ("198.51.100.20", bob.media_port)
    assert update.spec.selected.name == "PCMU" and update.spec.dtmf_pt == 101
    ok = alice.take(200)
    assert ok.to.tag == ringing.to.tag
    address, port, direction, codecs = media_of(ok)
    assert (address, port, direction) == (BEARER_ADDRESS, BEARER_PORTS[0], "sendrecv")
    assert codecs == ["PCMU", "telephone-event"]

    from softswitch.sip.dialog import Dialog

    dialog_a = Dialog.from_uac(invite_a, ok)
    alice.send(dialog_a.create_ack(invite_a.cseq, via=alice.via()))
    ack_b = bob.take("ACK")
    assert ack_b.cseq == invite_b.cseq and ack_b.to.tag == bob.tag

    sw.now += 30
    alice.send(dialog_a.create_request("BYE", via=alice.via()))
    alice.take(200)
    bye_b = bob.take("BYE")
    bob.send(bob.answer(bye_b, 200))

    assert sw.trace == [
        ("alice", 100),
        ("alice", 407),
        ("alice", 100),
        ("bearer", "Allocate"),
        ("bob", "INVITE"),
        ("alice", 180),
        ("bearer", "Update"),
        ("alice", 200),
        ("bob", "ACK"),
        ("alice", 200),
        ("bob", "BYE"),
        ("bearer", "Delete"),
    ]
    (cdr,) = sw.cdrs
    assert cdr.disposition is Disposition.ANSWERED and cdr.sip_code == 200
    assert (cdr.caller, cdr.callee) == ("alice@example.com", "bob@example.com")
    assert cdr.start == T0 and cdr.answer == T0 and cdr.end == T0 + 30 and cdr.duration == 30
    assert cdr.bearer == "1"
    assert (cdr.a_packets, cdr.a_lost, cdr.a_jitter_ms) == (1500, 3, 2.5)
    assert (cdr.b_packets, cdr.b_lost, cdr.b_jitter_ms) == (1490, 1, 1.2)
    assert sw.calls.snapshot() == []
    assert sw.calls.active_calls("alice", "example.com") == 0
