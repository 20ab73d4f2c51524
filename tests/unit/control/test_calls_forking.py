"""Forking to every device of the callee (softswitch/calls/manager.py) and the §16.7 choice."""

from __future__ import annotations

import pytest

from softswitch.calls.state import best_response
from softswitch.model.cdr import Disposition
from softswitch.protocol import Allocate, Delete, Update
from softswitch.sip.dialog import Dialog
from tests.unit.control.calls_harness import Switch


@pytest.fixture
def sw() -> Switch:
    return Switch()


def two_devices(sw: Switch):
    alice = sw.phone("alice", "198.51.100.10")
    desk = sw.phone("bob", "198.51.100.20")
    mobile = sw.phone("bob", "203.0.113.77", 41234)  # behind NAT: the source port it came from
    sw.register(desk)
    sw.register(mobile)
    return alice, desk, mobile


def test_two_bindings_both_ring_first_200_wins_other_gets_cancel(sw: Switch) -> None:
    alice, desk, mobile = two_devices(sw)
    invite_a = sw.authenticated_invite(alice, "bob")
    to_desk = desk.take("INVITE")
    to_mobile = mobile.take("INVITE")
    assert str(to_mobile.uri) == "sip:bob@203.0.113.77:41234"
    assert to_desk.body == to_mobile.body  # one bearer leg, one offer
    assert to_desk.call_id != to_mobile.call_id
    assert len(sw.pool.of(Allocate)) == 1
    desk.send(desk.answer(to_desk, 180))
    mobile.send(mobile.answer(to_mobile, 180, tag="mobiletag"))
    assert [m.status for m in alice.inbox if m.status != 100] == [180, 180]
    mobile.send(mobile.answer(to_mobile, 200, mobile.offer(), tag="mobiletag"))
    cancel = desk.take("CANCEL")
    assert cancel.via.branch == to_desk.via.branch
    (update,) = sw.pool.of(Update)
    assert (update.spec.address, update.spec.port) == ("203.0.113.77", mobile.media_port)
    ok = alice.take(200)
    alice.send(Dialog.from_uac(invite_a, ok).create_ack(invite_a.cseq, via=alice.via()))
    assert mobile.take("ACK").to.tag == "mobiletag"
    desk.send(desk.answer(cancel, 200))
    desk.send(desk.answer(to_desk, 487))
    desk.take("ACK")
    assert not desk.inbox
    assert sw.calls.snapshot()[0]["state"] == "confirmed"


def test_late_second_2xx_gets_ack_and_bye(sw: Switch) -> None:
    alice, desk, mobile = two_devices(sw)
    sw.authenticated_invite(alice, "bob")
    to_desk = desk.take("INVITE")
    to_mobile = mobile.take("INVITE")
    desk.send(desk.answer(to_desk, 180))
    mobile.send(mobile.answer(to_mobile, 180, tag="mobiletag"))
    desk.send(desk.answer(to_desk, 200, desk.offer()))
    mobile.take("CANCEL")
    # The CANCEL crossed the mobile's answer on the wire (§13.2.2.4).
    late = mobile.answer(to_mobile, 200, mobile.offer(), tag="mobiletag")
    mobile.send(late)
    ack = mobile.take("ACK")
    bye = mobile.take("BYE")
    assert ack.cseq == to_mobile.cseq and ack.to.tag == "mobiletag"
    assert bye.call_id == to_mobile.call_id and bye.to.tag == "mobiletag"
    mobile.send(late)  # its 2xx again: ACKed again, no second BYE
    assert bytes(mobile.take("ACK")) == bytes(ack)
    assert not mobile.has("BYE")
    mobile.send(mobile.answer(bye, 200))
    assert alice.has(200) and len(sw.pool.of(Update)) == 1


def test_all_devices_failing_relay_the_best_response(sw: Switch) -> None:
    alice, desk, mobile = two_devices(sw)
    sw.authenticated_invite(alice, "bob")
    to_desk = desk.take("INVITE")
    to_mobile = mobile.take("INVITE")
    mobile.send(mobile.answer(to_mobile, 480, tag="mobiletag"))
    assert not alice.has(480)  # the desk phone may still answer
    desk.send(desk.answer(to_desk, 486))
    alice.take(486)
    assert sw.cdrs[0].disposition is Disposition.BUSY
    assert len(sw.pool.of(Delete)) == 1


def test_a_fork_that_never_answers_times_out_as_408(sw: Switch) -> None:
    alice, desk, mobile = two_devices(sw)
    sw.authenticated_invite(alice, "bob")
    to_desk = desk.take("INVITE")
    mobile.take("INVITE")  # and never a word back: timer B (64*T1 = 32 s)
    desk.send(desk.answer(to_desk, 603))
    sw.advance(31.9)
    assert not alice.has(603)
    sw.advance(0.2)
    alice.take(603)  # 6xx wins over the timeout's 408


def test_a_2xx_after_the_caller_cancelled_is_acked_and_hung_up(sw: Switch) -> None:
    alice, desk, mobile = two_devices(sw)
    invite_a = sw.authenticated_invite(alice, "bob")
    to_desk = desk.take("INVITE")
    mobile.take("INVITE")
    desk.send(desk.answer(to_desk, 180))
    alice.send(alice.cancel(invite_a))
    alice.take(487)
    desk.take("CANCEL")
    desk.send(desk.answer(to_desk, 200, desk.offer()))
    desk.take("ACK")
    desk.take("BYE")
    assert [m.cseq_method for m in alice.inbox if m.status == 200] == ["CANCEL"]
    assert sw.cdrs[0].disposition is Disposition.CANCELLED


@pytest.mark.parametrize(
    ("statuses", "best"),
    [
        ([486, 480], 486),
        ([480, 408], 480),
        ([404, 500], 404),
        ([503], 500),  # §16.7: a 503 is not relayed as such
        ([302], 480),  # a B2BUA cannot hand its callee's redirect to the caller
        ([407, 408], 403),
        ([486, 603, 480], 603),  # 6xx wins
        ([487, 408], 408),
        ([], 480),
    ],
)
def test_best_response_follows_16_7(statuses: list[int], best: int) -> None:
    assert best_response(statuses) == best
