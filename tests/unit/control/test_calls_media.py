"""Media through the bearer: codecs, transcoding, hold, early media, events,
recording and conferences (softswitch/calls/manager.py, softswitch/calls/media.py)."""

from __future__ import annotations

import pytest

from softswitch.model.cdr import Disposition
from softswitch.protocol import (
    Allocate,
    AllocFlags,
    Delete,
    Direction,
    Dtmf,
    ErrorCode,
    Join,
    Leave,
    MediaTimeout,
    Record,
    Update,
    needs_transcoding,
)
from softswitch.sip.dialog import Dialog
from tests.unit.control.calls_harness import (
    BEARER_ADDRESS,
    BEARER_PORTS,
    Established,
    Phone,
    Switch,
    media_of,
)

PCMU_ONLY = ((0, "PCMU"), (101, "telephone-event"))
PCMA_ONLY = ((8, "PCMA"), (101, "telephone-event"))


@pytest.fixture
def sw() -> Switch:
    return Switch()


def test_pcmu_only_caller_to_pcma_only_callee_is_transcoded(sw: Switch) -> None:
    alice = sw.phone("alice", "198.51.100.10")
    bob = sw.phone("bob", "198.51.100.20")
    sw.register(bob)
    sw.authenticated_invite(alice, "bob", alice.offer(codecs=PCMU_ONLY))
    invite_b = bob.take("INVITE")
    # PCMA offered beside the caller's lone PCMU, so a PCMA-only phone can answer.
    assert media_of(invite_b)[3] == ["PCMU", "PCMA", "telephone-event"]
    bob.send(bob.answer(invite_b, 200, bob.offer(codecs=PCMA_ONLY)))
    (update,) = sw.pool.of(Update)  # alice's leg keeps PCMU: one UPDATE
    (allocate,) = sw.pool.of(Allocate)
    assert update.leg == 1 and update.spec.selected.name == "PCMA"
    assert allocate.legs[0].selected.name == "PCMU"
    assert needs_transcoding(allocate.legs[0], update.spec)
    assert media_of(alice.take(200))[3] == ["PCMU", "telephone-event"]


def test_callee_choosing_the_callers_second_codec_moves_the_caller_too(sw: Switch) -> None:
    alice = sw.phone("alice", "198.51.100.10")
    bob = sw.phone("bob", "198.51.100.20")
    sw.register(bob)
    sw.authenticated_invite(alice, "bob")  # PCMU, PCMA, telephone-event
    invite_b = bob.take("INVITE")
    bob.send(bob.answer(invite_b, 200, bob.offer(codecs=PCMA_ONLY)))
    updates = {u.leg: u.spec for u in sw.pool.of(Update)}
    assert updates[0].selected.name == updates[1].selected.name == "PCMA"
    assert not needs_transcoding(updates[0], updates[1])
    assert media_of(alice.take(200))[3] == ["PCMA", "telephone-event"]


def test_callee_without_telephone_event_drops_it_from_the_callers_answer(sw: Switch) -> None:
    alice = sw.phone("alice", "198.51.100.10")
    bob = sw.phone("bob", "198.51.100.20")
    sw.register(bob)
    sw.authenticated_invite(alice, "bob")
    invite_b = bob.take("INVITE")
    bob.send(bob.answer(invite_b, 200, bob.offer(codecs=((0, "PCMU"),))))
    assert media_of(alice.take(200))[3] == ["PCMU"]
    assert sw.pool.of(Update)[0].spec.dtmf_pt is None


def hold_and_resume(sw: Switch, holder: str) -> tuple[Phone, Phone, Established]:
    alice = sw.phone("alice", "198.51.100.10")
    bob = sw.phone("bob", "198.51.100.20")
    sw.register(bob)
    call = sw.establish(alice, bob)
    bob.take("ACK")
    if holder == "alice":
        x, y, dx, dy, x_leg = alice, bob, call.dialog_a, call.dialog_b, 0
    else:
        x, y, dx, dy, x_leg = bob, alice, call.dialog_b, call.dialog_a, 1
    sw.pool.sent.clear()
    for direction, answer_direction, bearer_x, bearer_y in (
        ("sendonly", "recvonly", Direction.SENDONLY, Direction.RECVONLY),
        ("sendrecv", "sendrecv", Direction.SENDRECV, Direction.SENDRECV),
    ):
        reinvite = dx.create_request(
            "INVITE",
            via=x.via(),
            body=x.offer(direction=direction, version=2),
            content_type="application/sdp",
        )
        x.send(reinvite)
        relayed = y.take("INVITE")
        assert relayed.to.tag == y.tag  # in y's dialog, not x's
        addr, port, sent_direction, _ = media_of(relayed)
        assert (addr, port, sent_direction) == (BEARER_ADDRESS, BEARER_PORTS[1 - x_leg], direction)
        dy.receive_request(relayed)
        y.send(y.answer(relayed, 200, y.offer(direction=answer_direction, version=2)))
        updates = {u.leg: u.spec for u in sw.pool.of(Update)}
        assert updates[x_leg].direction is bearer_x
        assert updates[1 - x_leg].direction is bearer_y
        sw.pool.sent.clear()
        ok = x.take(200)
        addr, port, got_direction, _ = media_of(ok)
        assert (addr, port, got_direction) == (
            BEARER_ADDRESS,
            BEARER_PORTS[x_leg],
            answer_direction,
        )
        assert not y.has("ACK")  # the ACK is end to end: it waits for x's
        x.send(dx.create_ack(reinvite.cseq, via=x.via()))
        assert y.take("ACK").cseq == relayed.cseq
    held = sw.calls.snapshot()[0]["held"]
    assert held == [False, False]
    return alice, bob, call


def test_hold_and_resume_from_the_caller(sw: Switch) -> None:
    hold_and_resume(sw, "alice")


def test_hold_and_resume_from_the_callee(sw: Switch) -> None:
    hold_and_resume(sw, "bob")


@pytest.mark.parametrize("holder", ["alice", "bob"])
def test_a_call_with_reinvites_leaves_nothing_behind(sw: Switch, holder: str) -> None:
    """Our re-INVITEs stay in the transaction table for their 2xx
    retransmissions; once the call is over they must go with it."""
    alice, bob, call = hold_and_resume(sw, holder)
    alice.send(call.dialog_a.create_request("BYE", via=alice.via()))
    alice.take(200)
    bob.send(bob.answer(bob.take("BYE"), 200))
    sw.advance(64 * 0.5 + 1)  # Timer M/K/FORGET: everything of the call settled
    assert sw.cdrs and sw.cdrs[-1].disposition is Disposition.ANSWERED
    assert sw.calls.table.txs == {}
    assert sw.calls.table.sessions == {} and sw.calls.table.dialogs == {}


def test_reinvite_glare_gets_491(sw: Switch) -> None:
    alice = sw.phone("alice", "198.51.100.10")
    bob = sw.phone("bob", "198.51.100.20")
    sw.register(bob)
    call = sw.establish(alice, bob)
    bob.take("ACK")
    hold = call.dialog_a.create_request(
        "INVITE",
        via=alice.via(),
        body=alice.offer(direction="sendonly"),
        content_type="application/sdp",
    )
    alice.send(hold)
    bob.take("INVITE")
    glare = call.dialog_b.create_request(
        "INVITE",
        via=bob.via(),
        body=bob.offer(direction="sendonly"),
        content_type="application/sdp",
    )
    bob.send(glare)
    assert bob.take(491).cseq == glare.cseq


def test_early_media_183_goes_through_the_bearer(sw: Switch) -> None:
    alice = sw.phone("alice", "198.51.100.10")
    bob = sw.phone("bob", "198.51.100.20")
    sw.register(bob)
    sw.authenticated_invite(alice, "bob")
    invite_b = bob.take("INVITE")
    bob.send(bob.answer(invite_b, 183, bob.offer()))
    (update,) = sw.pool.of(Update)
    assert (update.leg, update.spec.port) == (1, bob.media_port)
    progress = alice.take(183)
    assert media_of(progress)[:2] == (BEARER_ADDRESS, BEARER_PORTS[0])
    bob.send(bob.answer(invite_b, 200, bob.offer()))
    assert len(sw.pool.of(Update)) == 1  # same media: nothing new to tell the bearer
    ok = alice.take(200)
    assert ok.body == progress.body  # §13.2.1: the answer does not change


def test_media_timeout_event_hangs_up_both_sides(sw: Switch) -> None:
    alice = sw.phone("alice", "198.51.100.10")
    bob = sw.phone("bob", "198.51.100.20")
    sw.register(bob)
    sw.establish(alice, bob)
    bob.take("ACK")
    (allocate,) = sw.pool.of(Allocate)
    sw.now += 40
    sw.event(MediaTimeout(allocate.session_id, 0))
    assert alice.has("BYE") and bob.has("BYE")
    assert len(sw.pool.of(Delete)) == 1
    (cdr,) = sw.cdrs
    assert cdr.disposition is Disposition.ANSWERED and cdr.duration == 40
    assert cdr.a_packets == 1500


def test_dtmf_events_are_counted_per_call(sw: Switch) -> None:
    alice = sw.phone("alice", "198.51.100.10")
    bob = sw.phone("bob", "198.51.100.20")
    sw.register(bob)
    sw.establish(alice, bob)
    session = sw.pool.of(Allocate)[0].session_id
    for digit in "12#":
        sw.event(Dtmf(session, 0, digit, 120))
    assert sw.calls.snapshot()[0]["dtmf"] == "12#"


def test_bearer_down_with_no_other_bearer_tears_its_calls_down_with_byes(sw: Switch) -> None:
    alice = sw.phone("alice", "198.51.100.10")
    bob = sw.phone("bob", "198.51.100.20")
    sw.register(bob)
    sw.establish(alice, bob)
    bob.take("ACK")
    sw.pool.bearers[1].up = False  # nowhere to move the call to (softswitch/calls/failover.py)
    sw.bearer_down(0)
    assert alice.has("BYE") and bob.has("BYE")
    assert sw.pool.of(Delete) == []  # the session died with the bearer
    assert sw.cdrs[0].disposition is Disposition.ANSWERED
    assert sw.calls.snapshot() == []


def test_recording_flag_sends_record_with_a_path_and_the_cdr_has_it(sw: Switch) -> None:
    """Used to break: ALLOCATE also carried AllocFlags.RECORD, so the bearer had
    already started a file under its own default name and ignored our RECORD;
    the CDR named a file that never existed.  One start, with our path."""
    sw = Switch(recording_users=("bob",))
    alice = sw.phone("alice", "198.51.100.10")
    bob = sw.phone("bob", "198.51.100.20")
    sw.register(bob)
    call = sw.establish(alice, bob)
    (allocate,) = sw.pool.of(Allocate)
    assert not allocate.flags & AllocFlags.RECORD
    (record,) = sw.pool.of(Record)
    assert record.start and record.session_id == allocate.session_id
    assert record.path == "/var/spool/softswitch/recordings/call-1_alice-20231114T221320Z.wav"
    alice.send(call.dialog_a.create_request("BYE", via=alice.via()))
    assert sw.cdrs[0].recording == record.path


def test_recording_refused_by_the_bearer_leaves_no_path_in_the_cdr(sw: Switch) -> None:
    sw = Switch(recording_users=("alice",))
    sw.pool.errors[Record] = ErrorCode.BAD_REQUEST
    alice = sw.phone("alice", "198.51.100.10")
    bob = sw.phone("bob", "198.51.100.20")
    sw.register(bob)
    call = sw.establish(alice, bob)  # the call goes on, unrecorded
    alice.send(call.dialog_a.create_request("BYE", via=alice.via()))
    (cdr,) = sw.cdrs
    assert cdr.disposition is Disposition.ANSWERED and cdr.recording is None


def test_no_recording_without_the_flag(sw: Switch) -> None:
    alice = sw.phone("alice", "198.51.100.10")
    bob = sw.phone("bob", "198.51.100.20")
    sw.register(bob)
    sw.establish(alice, bob)
    assert sw.pool.of(Record) == [] and not sw.pool.of(Allocate)[0].flags & AllocFlags.RECORD


def test_conference_join_and_leave(sw: Switch) -> None:
    alice = sw.phone("alice", "198.51.100.10")
    invite = sw.authenticated_invite(alice, "conf1")
    (allocate,) = sw.pool.of(Allocate)
    assert allocate.flags & AllocFlags.CONFERENCE and len(allocate.legs) == 1
    (join,) = sw.pool.of(Join)
    assert (join.room_id, join.session_id) == ("conf1", allocate.session_id)
    ok = alice.take(200)
    assert media_of(ok)[:3] == (BEARER_ADDRESS, BEARER_PORTS[0], "sendrecv")
    dialog = Dialog.from_uac(invite, ok)
    alice.send(dialog.create_ack(invite.cseq, via=alice.via()))
    assert sw.calls.snapshot()[0]["state"] == "confirmed"
    sw.now += 5
    alice.send(dialog.create_request("BYE", via=alice.via()))
    alice.take(200)
    assert [type(m).__name__ for _, m, _ in sw.pool.sent][-2:] == ["Leave", "Delete"]
    assert sw.pool.of(Leave)[0].room_id == "conf1"
    (cdr,) = sw.cdrs
    assert (cdr.callee, cdr.disposition, cdr.duration) == (
        "conf1@example.com",
        Disposition.ANSWERED,
        5,
    )


def test_bearer_restart_hangs_up_an_unanswered_call_with_503(sw: Switch) -> None:
    from softswitch.protocol.endpoint import PeerRestarted

    alice = sw.phone("alice", "198.51.100.10")
    bob = sw.phone("bob", "198.51.100.20")
    sw.register(bob)
    _, invite_b = sw.ringing(alice, bob)
    sw.bearer_event(PeerRestarted(sw.pool.bearers[0].peer, 1, 2))
    alice.take(503)
    assert bob.take("CANCEL").via.branch == invite_b.via.branch
    assert sw.cdrs[0].disposition is Disposition.FAILED


def test_tcp_phones_get_tcp_via_and_contact_and_no_2xx_retransmission(sw: Switch) -> None:
    alice = sw.phone("alice", "198.51.100.10", 40001, transport="tcp")
    bob = sw.phone("bob", "198.51.100.20", 40002, transport="tcp")
    sw.register(bob)
    sw.authenticated_invite(alice, "bob")
    invite_b = bob.take("INVITE")
    assert invite_b.via.transport == "TCP"
    assert invite_b.contacts[0].uri.params.get("transport") == "tcp"
    bob.send(bob.answer(invite_b, 200, bob.offer()))
    alice.take(200)
    sw.advance(10)
    assert not alice.has(200)  # §13.3.1.4: reliable transports are not retransmitted to
    sw.advance(22)  # 64*T1 without an ACK: the call is over
    assert alice.has("BYE") and bob.has("BYE")


def test_conference_hold_is_answered_by_the_switch_and_updates_the_bearer(sw: Switch) -> None:
    alice = sw.phone("alice", "198.51.100.10")
    invite = sw.authenticated_invite(alice, "conf9")
    ok = alice.take(200)
    dialog = Dialog.from_uac(invite, ok)
    alice.send(dialog.create_ack(invite.cseq, via=alice.via()))
    hold = dialog.create_request(
        "INVITE",
        via=alice.via(),
        body=alice.offer(direction="sendonly", version=2),
        content_type="application/sdp",
    )
    alice.send(hold)
    (update,) = sw.pool.of(Update)
    assert (update.leg, update.spec.direction) == (0, Direction.SENDONLY)
    answer = alice.take(200)
    assert media_of(answer)[2] == "recvonly"
    assert answer.cseq == hold.cseq


def join_conference(sw: Switch, phone, room: str) -> Dialog:
    """``phone`` dials ``room`` and is in (200 and ACK); returns its dialog."""
    invite = sw.authenticated_invite(phone, room, call_id=f"{phone.name}-{room}")
    ok = phone.take(200)
    dialog = Dialog.from_uac(invite, ok)
    phone.send(dialog.create_ack(invite.cseq, via=phone.via()))
    return dialog


def test_conference_members_all_go_to_the_bearer_hosting_the_room(sw: Switch) -> None:
    """Used to break: each member went to the least-loaded bearer, so with two
    bearers a room was split in two halves that could not hear each other."""
    phones = [sw.phone(n, f"198.51.100.{10 + i}") for i, n in enumerate(("alice", "bob", "carol"))]
    for p in phones:
        join_conference(sw, p, "conf7")
    allocated_on = [b.id for b, m, _ in sw.pool.sent if isinstance(m, Allocate)]
    assert allocated_on == [1, 1, 1]
    joined_on = [b.id for b, m, _ in sw.pool.sent if isinstance(m, Join)]
    assert joined_on == [1, 1, 1]
    other = sw.phone("dave", "198.51.100.40")
    join_conference(sw, other, "conf8")  # another room may start on another bearer
    assert [b.id for b, m, _ in sw.pool.sent if isinstance(m, Allocate)][-1] == 2


def test_conference_bearer_full_gets_503_retry_after_not_a_room_elsewhere(sw: Switch) -> None:
    alice = sw.phone("alice", "198.51.100.10")
    bob = sw.phone("bob", "198.51.100.20")
    join_conference(sw, alice, "conf7")
    host = sw.pool.bearers[0]
    host.sessions = host.capacity
    sw.authenticated_invite(bob, "conf7", call_id="bob-conf7")
    refused = bob.take(503)
    assert refused.get("Retry-After") == "5"
    assert len(sw.pool.of(Allocate)) == 1  # nothing on the other bearer
    assert sw.calls.counters["refused_room_bearer_unavailable"] == 1
    assert sw.cdrs[-1].disposition is Disposition.FAILED


def test_conference_room_forgotten_with_its_last_member_may_move(sw: Switch) -> None:
    alice = sw.phone("alice", "198.51.100.10")
    bob = sw.phone("bob", "198.51.100.20")
    dialog = join_conference(sw, alice, "conf7")
    sw.pool.bearers[1].sessions = -5  # bearer 2 is now the least loaded
    alice.send(dialog.create_request("BYE", via=alice.via()))
    alice.take(200)
    join_conference(sw, bob, "conf7")
    assert [b.id for b, m, _ in sw.pool.sent if isinstance(m, Allocate)] == [1, 2]


def test_conference_bearer_down_ends_the_room_and_the_next_member_starts_it_anew(
    sw: Switch,
) -> None:
    alice = sw.phone("alice", "198.51.100.10")
    bob = sw.phone("bob", "198.51.100.20")
    join_conference(sw, alice, "conf7")
    sw.bearer_down(0)
    assert alice.has("BYE")
    join_conference(sw, bob, "conf7")
    assert [b.id for b, m, _ in sw.pool.sent if isinstance(m, Allocate)] == [1, 2]
