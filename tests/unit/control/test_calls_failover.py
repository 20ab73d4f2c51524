"""An answered call survives the death of its bearer (softswitch/calls/failover.py):
a new session elsewhere, a re-INVITE to each phone, or the old hang-up."""

from __future__ import annotations

import pytest

from softswitch.model.cdr import Disposition
from softswitch.protocol import Allocate, Delete, Record, Update
from softswitch.protocol.endpoint import PeerRestarted
from softswitch.sip.message import Request, Response
from softswitch.sip.sdp import SessionDescription
from tests.unit.control.calls_harness import (
    BEARER_ADDRESS,
    BEARER_PORTS,
    T0,
    Established,
    Phone,
    Switch,
    media_of,
)

NEW_ADDRESS = "203.0.113.9"
NEW_PORTS = (41000, 41002)


@pytest.fixture
def sw() -> Switch:
    s = Switch()
    s.pool.bearers[1].address, s.pool.bearers[1].ports = NEW_ADDRESS, NEW_PORTS
    return s


def answered(sw: Switch) -> tuple[Phone, Phone, Established]:
    alice = sw.phone("alice", "198.51.100.10")
    bob = sw.phone("bob", "198.51.100.20")
    sw.register(bob)
    call = sw.establish(alice, bob)
    bob.take("ACK")
    alice.clear()
    bob.clear()
    return alice, bob, call


def origin_version(message: Request | Response) -> tuple[str, int]:
    origin = SessionDescription.parse(message.body).origin
    return origin.sess_id, origin.sess_version


def test_answered_call_moves_to_another_bearer_and_goes_on(sw: Switch) -> None:
    alice, bob, call = answered(sw)
    first = sw.pool.of(Allocate)[0]
    a_origin = origin_version(call.ok_a)
    b_origin = origin_version(call.invite_b)
    sw.now += 10
    sw.bearer_down(0)

    # One ALLOCATE on the other bearer, a new session, both legs as they were.
    allocate = sw.pool.of(Allocate)[1]
    assert next(b for b, m, _ in sw.pool.sent if m is allocate) is sw.pool.bearers[1]
    assert allocate.session_id != first.session_id
    assert allocate.legs[0].port == alice.media_port and allocate.legs[1].port == bob.media_port
    assert allocate.legs[0].selected.name == "PCMU" and allocate.legs[1].selected.name == "PCMU"
    # Each phone: a re-INVITE to the new bearer, same codecs, its o= with the version + 1.
    ri_a, ri_b = alice.take("INVITE"), bob.take("INVITE")
    assert media_of(ri_a) == (NEW_ADDRESS, NEW_PORTS[0], "sendrecv", ["PCMU", "telephone-event"])
    assert media_of(ri_b) == (NEW_ADDRESS, NEW_PORTS[1], "sendrecv", ["PCMU", "telephone-event"])
    assert origin_version(ri_a) == (a_origin[0], a_origin[1] + 1)
    assert origin_version(ri_b) == (b_origin[0], b_origin[1] + 1)
    assert ri_a.call_id == call.invite_a.call_id and ri_a.to.tag == alice.tag
    assert ri_b.call_id == call.invite_b.call_id
    assert not alice.has("BYE") and not bob.has("BYE")

    # Both answer with their media unchanged: ACKs, and no UPDATE is needed.
    alice.send(alice.answer(ri_a, 200, alice.offer(version=2)))
    bob.send(bob.answer(ri_b, 200, bob.offer(version=2)))
    assert alice.take("ACK").cseq == ri_a.cseq and bob.take("ACK").cseq == ri_b.cseq
    assert sw.pool.of(Update)[1:] == []  # the set-up's own UPDATE only
    (snap,) = sw.calls.snapshot()
    assert (snap["state"], snap["bearer"], snap["session"]) == ("confirmed", 2, allocate.session_id)
    assert sw.calls.counters["bearer_moved"] == 1

    # The call goes on: Alice hangs up later, the new session is deleted, one CDR.
    sw.now += 20
    alice.send(call.dialog_a.create_request("BYE", via=alice.via()))
    bob.send(bob.answer(bob.take("BYE"), 200))
    (delete,) = sw.pool.of(Delete)
    assert delete.session_id == allocate.session_id
    (cdr,) = sw.cdrs
    assert cdr.disposition is Disposition.ANSWERED and cdr.bearer == "2"
    assert cdr.answer == T0 and cdr.duration == 30  # its answer time kept
    assert cdr.a_packets == 1500  # the new session's stats: the lost one's are gone
    assert sw.calls.snapshot() == []
    sw.advance(64 * 0.5 + 1)
    assert sw.calls.table.txs == {}  # the move's re-INVITEs went with the call


def test_a_changed_answer_updates_the_new_bearer(sw: Switch) -> None:
    alice, bob, _ = answered(sw)
    sw.bearer_down(0)
    ri_a, ri_b = alice.take("INVITE"), bob.take("INVITE")
    alice.send(alice.answer(ri_a, 200, alice.offer()))
    bob.media_port = 30000  # Bob's phone moved its media when asked
    bob.send(bob.answer(ri_b, 200, bob.offer()))
    update = sw.pool.of(Update)[-1]
    assert update.session_id == sw.pool.of(Allocate)[1].session_id
    assert (update.leg, update.spec.port) == (1, 30000)
    assert sw.calls.snapshot()[0]["state"] == "confirmed"


def test_a_phone_refusing_the_move_hangs_both_up(sw: Switch) -> None:
    alice, bob, _ = answered(sw)
    sw.bearer_down(0)
    ri_a, ri_b = alice.take("INVITE"), bob.take("INVITE")
    alice.send(alice.answer(ri_a, 200, alice.offer()))
    alice.take("ACK")
    bob.send(bob.answer(ri_b, 488))
    alice.take("BYE")
    bob.take("BYE")
    (delete,) = sw.pool.of(Delete)  # the new session goes too
    assert delete.session_id == sw.pool.of(Allocate)[1].session_id
    (cdr,) = sw.cdrs
    assert cdr.disposition is Disposition.ANSWERED and cdr.bearer == "2"
    assert sw.calls.counters["bearer_lost"] == 1 and "bearer_moved" not in sw.calls.counters


def test_a_phone_not_answering_the_move_hangs_both_up(sw: Switch) -> None:
    alice, _bob, _ = answered(sw)
    sw.bearer_down(0)
    ri_a = alice.take("INVITE")
    alice.send(alice.answer(ri_a, 200, alice.offer()))
    sw.advance(64 * 0.5 + 1)  # Bob never answers: timer B
    assert alice.has("BYE")
    assert sw.cdrs and sw.cdrs[0].disposition is Disposition.ANSWERED


def test_no_bearer_left_hangs_up_as_before(sw: Switch) -> None:
    alice, bob, _ = answered(sw)
    sw.pool.bearers[1].up = False
    sw.bearer_down(0)
    assert not alice.has("INVITE") and alice.has("BYE") and bob.has("BYE")
    assert len(sw.pool.of(Allocate)) == 1 and sw.pool.of(Delete) == []
    (cdr,) = sw.cdrs
    assert cdr.disposition is Disposition.ANSWERED and cdr.bearer == "1"
    assert sw.calls.counters["bearer_lost"] == 1


def test_allocate_refused_on_the_new_bearer_hangs_up(sw: Switch) -> None:
    from softswitch.protocol import ErrorCode

    alice, bob, _ = answered(sw)
    sw.pool.errors[Allocate] = ErrorCode.NO_CAPACITY
    sw.bearer_down(0)
    assert not alice.has("INVITE") and alice.has("BYE") and bob.has("BYE")
    assert sw.pool.of(Delete) == []
    assert sw.cdrs[0].disposition is Disposition.ANSWERED


def test_unanswered_call_is_hung_up_as_before(sw: Switch) -> None:
    alice = sw.phone("alice", "198.51.100.10")
    bob = sw.phone("bob", "198.51.100.20")
    sw.register(bob)
    sw.ringing(alice, bob)
    sw.bearer_down(0)
    alice.take(503)
    bob.take("CANCEL")
    assert len(sw.pool.of(Allocate)) == 1
    assert sw.cdrs[0].disposition is Disposition.FAILED


def test_restarted_bearer_takes_the_call_back_itself(sw: Switch) -> None:
    alice, bob, _ = answered(sw)
    sw.pool.bearers[1].up = False
    sw.pool.bearers[0].sessions = 0  # a new epoch: it has nothing
    sw.bearer_event(PeerRestarted(sw.pool.bearers[0].peer, 1, 2))
    first, again = sw.pool.of(Allocate)
    assert again.session_id != first.session_id
    assert next(b for b, m, _ in sw.pool.sent if m is again) is sw.pool.bearers[0]
    ri_a, ri_b = alice.take("INVITE"), bob.take("INVITE")
    assert media_of(ri_a)[:2] == (BEARER_ADDRESS, BEARER_PORTS[0])
    alice.send(alice.answer(ri_a, 200, alice.offer()))
    bob.send(bob.answer(ri_b, 200, bob.offer()))
    (snap,) = sw.calls.snapshot()
    assert (snap["state"], snap["bearer"]) == ("confirmed", 1)


def test_recorded_call_records_again_on_the_new_session(sw: Switch) -> None:
    sw = Switch(recording_users=("bob",))
    sw.pool.bearers[1].address, sw.pool.bearers[1].ports = NEW_ADDRESS, NEW_PORTS
    alice, bob, call = answered(sw)
    sw.now += 3
    sw.bearer_down(0)
    first, second = sw.pool.of(Record)
    assert second.session_id == sw.pool.of(Allocate)[1].session_id
    assert second.path != first.path
    alice.send(alice.answer(alice.take("INVITE"), 200, alice.offer()))
    bob.send(bob.answer(bob.take("INVITE"), 200, bob.offer()))
    alice.send(call.dialog_a.create_request("BYE", via=alice.via()))
    assert sw.cdrs[0].recording == second.path


def test_reinvite_from_a_phone_during_the_move_gets_491(sw: Switch) -> None:
    alice, _bob, call = answered(sw)
    sw.bearer_down(0)
    alice.take("INVITE")
    alice.send(
        call.dialog_a.create_request(
            "INVITE", via=alice.via(), body=alice.offer(), content_type="application/sdp"
        )
    )
    assert alice.has(491)


def test_bye_during_the_move_ends_the_call_once(sw: Switch) -> None:
    alice, bob, call = answered(sw)
    sw.bearer_down(0)
    ri_b = bob.take("INVITE")
    alice.take("INVITE")
    alice.send(call.dialog_a.create_request("BYE", via=alice.via()))
    bob.send(bob.answer(ri_b, 200, bob.offer()))  # crossed with our BYE: ACKed all the same
    assert bob.has("ACK") and bob.has("BYE")
    (cdr,) = sw.cdrs
    assert cdr.disposition is Disposition.ANSWERED
    assert "bearer_lost" not in sw.calls.counters
