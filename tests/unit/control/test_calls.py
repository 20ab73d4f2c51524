"""The B2BUA's basic call flows, message by message (softswitch/calls/manager.py)."""

from __future__ import annotations

import pytest

from softswitch.model.cdr import Disposition
from softswitch.protocol import Allocate, Delete, Update
from softswitch.sip.message import Request, Response
from tests.unit.control.calls_harness import (
    BEARER_ADDRESS,
    BEARER_PORTS,
    T0,
    Switch,
    header,
    media_of,
)


def statuses(inbox: list[Request | Response]) -> list[int]:
    """The status codes of an inbox that holds only responses."""
    codes = []
    for m in inbox:
        assert isinstance(m, Response), m
        codes.append(m.status)
    return codes


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


def test_bye_from_callee_is_relayed_to_caller_and_ends_the_call(sw: Switch) -> None:
    alice = sw.phone("alice", "198.51.100.10")
    bob = sw.phone("bob", "198.51.100.20")
    sw.register(bob)
    call = sw.establish(alice, bob)
    bob.take("ACK")
    sw.now += 12
    bob.send(call.dialog_b.create_request("BYE", via=bob.via()))
    assert bob.take(200).cseq_method == "BYE"
    bye_a = alice.take("BYE")
    assert bye_a.call_id == call.invite_a.call_id
    assert bye_a.to.tag == alice.tag and bye_a.from_.tag == call.ok_a.to.tag
    assert str(bye_a.uri) == "sip:alice@198.51.100.10:5060"  # alice's Contact
    alice.send(alice.answer(bye_a, 200))
    assert [type(m).__name__ for m in sw.pool.of(Delete)] == ["Delete"]
    (cdr,) = sw.cdrs
    assert cdr.disposition is Disposition.ANSWERED and cdr.duration == 12


def test_callee_busy_relays_486_and_writes_cdr(sw: Switch) -> None:
    alice = sw.phone("alice", "198.51.100.10")
    bob = sw.phone("bob", "198.51.100.20")
    sw.register(bob)
    invite_a = sw.authenticated_invite(alice, "bob")
    invite_b = bob.take("INVITE")
    bob.send(bob.answer(invite_b, 486))
    assert bob.take("ACK").via.branch == invite_b.via.branch  # the layer's own ACK (§17.1.1.3)
    busy = alice.take(486)
    assert busy.to.tag is not None and busy.call_id == invite_a.call_id
    alice.send(alice.ack_failure(invite_a, busy))
    assert len(sw.pool.of(Delete)) == 1
    (cdr,) = sw.cdrs
    assert (cdr.disposition, cdr.sip_code, cdr.answer) == (Disposition.BUSY, 486, None)
    assert sw.calls.active_calls("bob", "example.com") == 0


def test_callee_decline_603_relays_603_and_cdr_rejected(sw: Switch) -> None:
    alice = sw.phone("alice", "198.51.100.10")
    bob = sw.phone("bob", "198.51.100.20")
    sw.register(bob)
    sw.authenticated_invite(alice, "bob")
    bob.send(bob.answer(bob.take("INVITE"), 603))
    alice.take(603)
    assert sw.cdrs[0].disposition is Disposition.REJECTED and sw.cdrs[0].sip_code == 603


def test_callee_200_without_sdp_is_acked_and_byed_and_the_caller_gets_502(sw: Switch) -> None:
    """Regression: with no early media before it, the callee leg had no peer yet, so
    the hang-up raised AttributeError building the ACK: no BYE, no DELETE, no CDR."""
    alice = sw.phone("alice", "198.51.100.10")
    bob = sw.phone("bob", "198.51.100.20")
    sw.register(bob)
    sw.authenticated_invite(alice, "bob")
    invite_b = bob.take("INVITE")
    bob.send(bob.answer(invite_b, 200))  # no SDP answer, and none in a 183 before
    alice.take(502)
    assert bob.take("ACK").cseq == invite_b.cseq
    assert bob.take("BYE").call_id == invite_b.call_id
    assert len(sw.pool.of(Delete)) == 1
    (cdr,) = sw.cdrs
    assert (cdr.disposition, cdr.sip_code) == (Disposition.FAILED, 502)
    assert sw.calls.active_calls("bob", "example.com") == 0


def test_caller_cancel_while_ringing_cancels_forks_and_deletes_session(sw: Switch) -> None:
    alice = sw.phone("alice", "198.51.100.10")
    bob = sw.phone("bob", "198.51.100.20")
    sw.register(bob)
    invite_a, invite_b = sw.ringing(alice, bob)
    alice.take(180)
    sw.now += 3
    alice.send(alice.cancel(invite_a))
    assert alice.take(200).cseq_method == "CANCEL"
    terminated = alice.take(487)
    assert terminated.cseq_method == "INVITE"
    cancel_b = bob.take("CANCEL")
    assert cancel_b.via.branch == invite_b.via.branch and cancel_b.cseq == invite_b.cseq
    bob.send(bob.answer(cancel_b, 200))
    bob.send(bob.answer(invite_b, 487))
    bob.take("ACK")
    alice.send(alice.ack_failure(invite_a, terminated))
    assert len(sw.pool.of(Delete)) == 1
    (cdr,) = sw.cdrs
    assert (cdr.disposition, cdr.sip_code, cdr.end) == (Disposition.CANCELLED, 487, T0 + 3)
    assert statuses(alice.inbox) == [100, 100] and not bob.inbox


def test_cancel_before_the_callee_rings_waits_for_a_provisional(sw: Switch) -> None:
    """§9.1: no CANCEL before a provisional response; it goes when the 180 comes."""
    alice = sw.phone("alice", "198.51.100.10")
    bob = sw.phone("bob", "198.51.100.20")
    sw.register(bob)
    invite_a = sw.authenticated_invite(alice, "bob")
    invite_b = bob.take("INVITE")
    alice.send(alice.cancel(invite_a))
    alice.take(487)
    assert not bob.has("CANCEL")
    bob.send(bob.answer(invite_b, 180))
    assert bob.take("CANCEL").via.branch == invite_b.via.branch


def test_no_answer_gives_480_after_exactly_the_timeout(sw: Switch) -> None:
    sw = Switch(no_answer_timeout=25)
    alice = sw.phone("alice", "198.51.100.10")
    bob = sw.phone("bob", "198.51.100.20")
    sw.register(bob)
    _, invite_b = sw.ringing(alice, bob)
    alice.take(180)
    sw.advance(24.999)
    assert not alice.has(480) and not bob.has("CANCEL")
    sw.advance(0.001)
    assert sw.now == T0 + 25
    assert alice.take(480).cseq_method == "INVITE"
    assert bob.take("CANCEL").via.branch == invite_b.via.branch
    (cdr,) = sw.cdrs
    assert (cdr.disposition, cdr.sip_code, cdr.end) == (Disposition.NO_ANSWER, 480, T0 + 25)


def test_unknown_user_gets_404_and_a_rejected_cdr(sw: Switch) -> None:
    alice = sw.phone("alice", "198.51.100.10")
    sw.authenticated_invite(alice, "zoe")
    alice.take(404)
    assert sw.pool.sent == []
    (cdr,) = sw.cdrs
    assert (cdr.disposition, cdr.sip_code, cdr.callee) == (
        Disposition.REJECTED,
        404,
        "zoe@example.com",
    )


def test_known_but_unregistered_user_gets_480(sw: Switch) -> None:
    alice = sw.phone("alice", "198.51.100.10")
    sw.authenticated_invite(alice, "bob")
    alice.take(480)
    assert sw.pool.sent == [] and sw.cdrs[0].sip_code == 480


def test_expired_binding_counts_as_unregistered(sw: Switch) -> None:
    alice = sw.phone("alice", "198.51.100.10")
    bob = sw.phone("bob", "198.51.100.20")
    sw.register(bob, expires=10)
    sw.now += 11
    sw.authenticated_invite(alice, "bob")
    alice.take(480)


def test_callee_over_its_call_limit_gets_486(sw: Switch) -> None:
    sw = Switch(max_calls={"bob": 1})
    alice = sw.phone("alice", "198.51.100.10")
    carol = sw.phone("carol", "198.51.100.30")
    bob = sw.phone("bob", "198.51.100.20")
    sw.register(bob)
    sw.establish(alice, bob)
    assert sw.calls.active_calls("bob", "example.com") == 1
    sw.authenticated_invite(carol, "bob", call_id="call-2@carol")
    assert carol.take(486).cseq_method == "INVITE"
    assert len(sw.pool.of(Allocate)) == 1
    assert sw.cdrs[-1].disposition is Disposition.REJECTED and sw.cdrs[-1].sip_code == 486


def test_caller_over_its_call_limit_gets_486(sw: Switch) -> None:
    sw = Switch(max_calls={"alice": 1})
    alice = sw.phone("alice", "198.51.100.10")
    bob = sw.phone("bob", "198.51.100.20")
    carol = sw.phone("carol", "198.51.100.30")
    sw.register(bob)
    sw.register(carol)
    sw.establish(alice, bob)
    sw.authenticated_invite(alice, "carol", call_id="call-2@alice")
    alice.take(486)
    assert not carol.has("INVITE")


def test_no_bearer_gives_503_with_retry_after(sw: Switch) -> None:
    alice = sw.phone("alice", "198.51.100.10")
    bob = sw.phone("bob", "198.51.100.20")
    sw.register(bob)
    for bearer in sw.pool.bearers:
        bearer.up = False
    sw.authenticated_invite(alice, "bob")
    unavailable = alice.take(503)
    assert unavailable.get("Retry-After") == "5"
    assert not bob.has("INVITE")
    assert sw.cdrs[0].disposition is Disposition.FAILED and sw.cdrs[0].sip_code == 503


def test_bearer_allocate_timeout_gives_503_and_no_invite_to_callee(sw: Switch) -> None:
    alice = sw.phone("alice", "198.51.100.10")
    bob = sw.phone("bob", "198.51.100.20")
    sw.register(bob)
    sw.pool.silent.add(Allocate)
    sw.authenticated_invite(alice, "bob")
    assert not alice.has(503)
    sw.now += 2
    sw.timeout_bearer_request(Allocate)
    alice.take(503)
    assert not bob.has("INVITE")
    assert sw.pool.of(Delete) == []  # nothing was allocated
    (cdr,) = sw.cdrs
    assert (cdr.disposition, cdr.sip_code, cdr.bearer) == (Disposition.FAILED, 503, "1")


def test_bearer_allocate_refused_gives_503(sw: Switch) -> None:
    from softswitch.protocol import ErrorCode

    alice = sw.phone("alice", "198.51.100.10")
    bob = sw.phone("bob", "198.51.100.20")
    sw.register(bob)
    sw.pool.errors[Allocate] = ErrorCode.NO_PORTS
    sw.authenticated_invite(alice, "bob")
    alice.take(503)
    assert not bob.has("INVITE")


def test_wrong_password_gets_407_again_and_is_never_forwarded(sw: Switch) -> None:
    alice = sw.phone("alice", "198.51.100.10")
    bob = sw.phone("bob", "198.51.100.20")
    sw.register(bob)
    first = alice.invite("bob")
    alice.send(first)
    challenge = alice.take(407)
    assert [c.split()[0] for c in challenge.get_all("Proxy-Authenticate")] == ["Digest"] * 2
    assert "SHA-256" in challenge.get_all("Proxy-Authenticate")[0]
    alice.send(alice.ack_failure(first, challenge))
    second = alice.invite("bob", cseq=2)
    second.add("Proxy-Authorization", alice.credentials(challenge, second, password="guess"))
    alice.send(second)
    again = alice.take(407)
    assert again.get_all("Proxy-Authenticate")
    assert not bob.inbox and sw.pool.sent == [] and sw.cdrs == []


def test_credentials_of_another_user_are_forbidden(sw: Switch) -> None:
    """Authenticated as carol but calling From alice: 403, the caller id cannot be spoofed."""
    carol = sw.phone("carol", "198.51.100.30")
    bob = sw.phone("bob", "198.51.100.20")
    sw.register(bob)
    sw.authenticated_invite(carol, "bob", from_user="alice")
    carol.take(403)
    assert not bob.inbox


def test_disabled_caller_is_forbidden(sw: Switch) -> None:
    sw = Switch(disabled=("alice",))
    alice = sw.phone("alice", "198.51.100.10")
    bob = sw.phone("bob", "198.51.100.20")
    sw.register(bob)
    sw.authenticated_invite(alice, "bob")
    alice.take(403)
    assert sw.cdrs[0].disposition is Disposition.REJECTED and sw.cdrs[0].sip_code == 403


def test_max_forwards_zero_gets_483(sw: Switch) -> None:
    alice = sw.phone("alice", "198.51.100.10")
    alice.send(alice.invite("bob", max_forwards=0))
    alice.take(483)
    assert not alice.has(407)


def test_offer_without_a_common_codec_gets_488(sw: Switch) -> None:
    alice = sw.phone("alice", "198.51.100.10")
    bob = sw.phone("bob", "198.51.100.20")
    sw.register(bob)
    sw.authenticated_invite(alice, "bob", alice.offer(codecs=((18, "G729"),)))
    alice.take(488)
    assert sw.pool.sent == [] and sw.cdrs[0].sip_code == 488


def test_invite_without_sdp_gets_488(sw: Switch) -> None:
    alice = sw.phone("alice", "198.51.100.10")
    bob = sw.phone("bob", "198.51.100.20")
    sw.register(bob)
    sw.authenticated_invite(alice, "bob", b"")
    assert "SDP offer required" in alice.take(488).reason


def test_retransmitted_invite_does_not_create_a_second_call(sw: Switch) -> None:
    alice = sw.phone("alice", "198.51.100.10")
    bob = sw.phone("bob", "198.51.100.20")
    sw.register(bob)
    invite_a = sw.authenticated_invite(alice, "bob")
    bob.take("INVITE")
    alice.clear()
    alice.send(invite_a)  # the same bytes again: the layer absorbs it, answers 100 again
    assert statuses(alice.inbox) == [100]
    again = alice.invite("bob", cseq=invite_a.cseq)  # same request, another branch (§8.2.2.2)
    again.add("Proxy-Authorization", header(invite_a, "Proxy-Authorization"))
    alice.send(again)
    alice.take(482)
    assert len(sw.pool.of(Allocate)) == 1
    assert not bob.has("INVITE")
    assert len(sw.calls.snapshot()) == 1


def test_caller_2xx_is_retransmitted_until_the_ack_then_bye_both_sides(sw: Switch) -> None:
    """§13.3.1.4: the 2xx goes again at T1, 2T1 ... capped at T2; no ACK in 64*T1 ends it."""
    alice = sw.phone("alice", "198.51.100.10")
    bob = sw.phone("bob", "198.51.100.20")
    sw.register(bob)
    sw.authenticated_invite(alice, "bob")
    invite_b = bob.take("INVITE")
    bob.send(bob.answer(invite_b, 200, bob.offer()))
    alice.take(200)
    times = []
    for _ in range(32):
        sw.advance(0.25)
        while alice.has(200):
            alice.take(200)
            times.append(sw.now - T0)
    assert times == [0.5, 1.5, 3.5, 7.5]
    sw.advance(40)
    assert alice.take("BYE") and bob.take("BYE")
    assert not bob.has("ACK") or bob.take("ACK")  # B's 2xx is ACKed before its BYE (§15)
    assert sw.cdrs[0].disposition is Disposition.ANSWERED


def test_lost_ack_to_callee_is_resent_for_each_2xx_copy(sw: Switch) -> None:
    alice = sw.phone("alice", "198.51.100.10")
    bob = sw.phone("bob", "198.51.100.20")
    sw.register(bob)
    call = sw.establish(alice, bob)
    first = bob.take("ACK")
    bob.send(bob.answer(call.invite_b, 200, bob.offer()))  # bob did not get the ACK
    again = bob.take("ACK")
    assert bytes(again) == bytes(first)


def test_in_dialog_info_is_relayed_and_its_answer_comes_back(sw: Switch) -> None:
    alice = sw.phone("alice", "198.51.100.10")
    bob = sw.phone("bob", "198.51.100.20")
    sw.register(bob)
    call = sw.establish(alice, bob)
    bob.take("ACK")
    info = call.dialog_a.create_request(
        "INFO",
        via=alice.via(),
        body=b"Signal=5\r\nDuration=160\r\n",
        content_type="application/dtmf-relay",
    )
    alice.send(info)
    relayed = bob.take("INFO")
    assert relayed.body == b"Signal=5\r\nDuration=160\r\n"
    assert relayed.get("Content-Type") == "application/dtmf-relay"
    bob.send(bob.answer(relayed, 200))
    assert alice.take(200).cseq_method == "INFO"


def test_bye_for_an_unknown_dialog_gets_481(sw: Switch) -> None:
    alice = sw.phone("alice", "198.51.100.10")
    bye = alice.invite("bob")
    bye = type(bye)("BYE", bye.uri, headers=[[n, v] for n, v in bye.headers if n != "Content-Type"])
    bye.set("CSeq", "2 BYE")
    bye.set("To", "<sip:bob@example.com>;tag=nosuch")
    alice.send(bye)
    alice.take(481)


def test_shutdown_hangs_up_every_call_with_cdrs(sw: Switch) -> None:
    alice = sw.phone("alice", "198.51.100.10")
    bob = sw.phone("bob", "198.51.100.20")
    carol = sw.phone("carol", "198.51.100.30")
    dave = sw.phone("dave", "198.51.100.40")
    sw.register(bob)
    sw.register(dave)
    sw.establish(alice, bob)
    sw.ringing(carol, dave, call_id="call-2@carol")
    sw.calls.shutdown(sw.now)
    sw.pump()
    assert alice.has("BYE") and bob.has("BYE")
    assert carol.has(503) and dave.has("CANCEL")
    assert sorted(c.disposition for c in sw.cdrs) == [Disposition.ANSWERED, Disposition.FAILED]
    sw.authenticated_invite(carol, "dave", call_id="call-3@carol")
    assert carol.has(503)


def test_cancel_while_allocating_deletes_the_session_once_allocated(sw: Switch) -> None:
    alice = sw.phone("alice", "198.51.100.10")
    bob = sw.phone("bob", "198.51.100.20")
    sw.register(bob)
    sw.pool.silent.add(Allocate)
    invite_a = sw.authenticated_invite(alice, "bob")
    alice.send(alice.cancel(invite_a))
    alice.take(487)
    assert sw.pool.of(Delete) == [] and sw.cdrs == []  # the session may exist: wait for it
    sw.release()
    assert len(sw.pool.of(Delete)) == 1
    assert not bob.has("INVITE")
    assert sw.cdrs[0].disposition is Disposition.CANCELLED


def test_in_dialog_options_and_update_without_sdp_are_answered_here(sw: Switch) -> None:
    alice = sw.phone("alice", "198.51.100.10")
    bob = sw.phone("bob", "198.51.100.20")
    sw.register(bob)
    call = sw.establish(alice, bob)
    bob.take("ACK")
    alice.send(call.dialog_a.create_request("OPTIONS", via=alice.via()))
    assert "INVITE" in alice.take(200).get("Allow")
    alice.send(call.dialog_a.create_request("UPDATE", via=alice.via()))
    assert alice.take(200).cseq_method == "UPDATE"
    offer = call.dialog_a.create_request(
        "UPDATE", via=alice.via(), body=alice.offer(), content_type="application/sdp"
    )
    alice.send(offer)
    alice.take(488)  # RFC 3311 §5.2: the session stays as it was
    assert not bob.inbox


def test_out_of_dialog_message_is_not_allowed(sw: Switch) -> None:
    alice = sw.phone("alice", "198.51.100.10")
    invite = alice.invite("bob")
    message = type(invite)("MESSAGE", invite.uri, headers=[list(h) for h in invite.headers])
    message.set("CSeq", "1 MESSAGE")
    alice.send(message)
    assert "INVITE" in alice.take(405).get("Allow")


def test_calls_settings_are_read_live_after_a_reload(sw: Switch) -> None:
    """core.reconfigure() changes [calls] in place on SIGHUP: no restart needed."""
    alice = sw.phone("alice", "198.51.100.10")
    bob = sw.phone("bob", "198.51.100.20")
    sw.register(bob)
    sw.config.calls.no_answer_timeout = 7
    sw.authenticated_invite(alice, "bob")
    bob.take("INVITE")
    sw.advance(7)
    alice.take(480)
