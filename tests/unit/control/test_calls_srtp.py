"""SRTP (SDES, RFC 4568) in the B2BUA: the per-user and global policy, 488s
at once for what cannot work, per-leg keys from the bearer (never a phone's
key forwarded), re-INVITEs and failover re-keying, and no key in the trace."""

from __future__ import annotations

import base64

import pytest

from softswitch.protocol import Allocate, SrtpSuite, Update
from softswitch.sip.message import Request
from softswitch.sip.sdes import format_crypto, parse_crypto
from softswitch.sip.sdp import SessionDescription
from softswitch.switch import _text
from tests.unit.control.calls_harness import Phone, Switch, media_of

ALICE_KEY = bytes(range(30))
BOB_KEY = bytes(range(100, 130))
S80 = "AES_CM_128_HMAC_SHA1_80"


def srtp_offer(
    phone: Phone,
    key: bytes = ALICE_KEY,
    proto: str = "RTP/SAVP",
    cryptos: tuple[str, ...] | None = None,
    version: int = 1,
) -> bytes:
    """The phone's SDP with proto and a=crypto lines (tag 1, _80 by default)."""
    body = phone.offer(version=version).decode().replace("RTP/AVP", proto)
    lines = cryptos if cryptos is not None else (format_crypto(1, S80, key),)
    return (body + "".join(f"a=crypto:{c}\r\n" for c in lines)).encode()


def crypto_of(body: bytes) -> tuple[str, list[str]]:
    """(proto, a=crypto values) of the audio m-line."""
    md = SessionDescription.parse(body).media[0]
    return md.proto, [v or "" for k, v in md.attributes if k == "crypto"]


def phones(sw: Switch) -> tuple[Phone, Phone]:
    alice = sw.phone("alice", "198.51.100.10")
    bob = sw.phone("bob", "198.51.100.20")
    sw.register(bob)
    return alice, bob


def test_srtp_caller_to_plain_callee_is_rekeyed_on_the_bearer() -> None:
    sw = Switch()
    alice, bob = phones(sw)
    sw.authenticated_invite(alice, "bob", srtp_offer(alice))
    (allocate,) = sw.pool.of(Allocate)
    a_spec, b_spec = allocate.legs
    assert a_spec.srtp_remote is not None and a_spec.srtp_remote.key == ALICE_KEY
    assert a_spec.srtp_local is SrtpSuite.AES_CM_128_HMAC_SHA1_80 and not b_spec.srtp
    invite_b = bob.take("INVITE")
    # The callee (optional) is offered plain RTP, and never alice's key.
    assert crypto_of(invite_b.body) == ("RTP/AVP", [])
    assert base64.b64encode(ALICE_KEY) not in bytes(invite_b)
    bob.send(bob.answer(invite_b, 200, bob.offer()))
    ok = alice.take(200)
    proto, lines = crypto_of(ok.body)
    assert proto == "RTP/SAVP" and len(lines) == 1
    answered = parse_crypto(lines[0])
    assert answered is not None and answered.tag == 1 and answered.suite == S80
    assert answered.key != ALICE_KEY and len(answered.key) == 30  # the bearer's, for leg 0
    assert all(u.spec.srtp for u in sw.pool.of(Update) if u.leg == 0)
    assert not any(u.spec.srtp for u in sw.pool.of(Update) if u.leg == 1)


def test_the_answer_takes_the_first_usable_crypto_and_its_tag() -> None:
    sw = Switch()
    alice, bob = phones(sw)
    cryptos = (
        "1 AES_256_CM_HMAC_SHA1_80 inline:" + base64.b64encode(bytes(46)).decode(),
        "2 AES_CM_128_HMAC_SHA1_80 inline:" + base64.b64encode(ALICE_KEY).decode() + "|2^20",
        format_crypto(3, "AES_CM_128_HMAC_SHA1_32", ALICE_KEY),
    )
    sw.authenticated_invite(alice, "bob", srtp_offer(alice, cryptos=cryptos))
    spec = sw.pool.of(Allocate)[0].legs[0]
    assert spec.srtp_local is SrtpSuite.AES_CM_128_HMAC_SHA1_32
    invite_b = bob.take("INVITE")
    bob.send(bob.answer(invite_b, 200, bob.offer()))
    (line,) = crypto_of(alice.take(200).body)[1]
    assert line.startswith("3 AES_CM_128_HMAC_SHA1_32 inline:")


@pytest.mark.parametrize(
    ("policy", "body_kind", "why"),
    [
        ("optional", "savp-unsupported", "no supported SRTP crypto suite"),
        ("mandatory", "savp-unsupported", "no supported SRTP crypto suite"),
        ("mandatory", "plain", "SRTP required"),
        ("off", "savp", "SRTP is off"),
    ],
)
def test_offers_that_cannot_work_get_488_at_once(policy: str, body_kind: str, why: str) -> None:
    sw = Switch(srtp_users={"alice": policy})
    alice, bob = phones(sw)
    bodies = {
        "plain": alice.offer(),
        "savp": srtp_offer(alice),
        "savp-unsupported": srtp_offer(
            alice, cryptos=("1 F8_128_HMAC_SHA1_80 inline:" + base64.b64encode(ALICE_KEY).decode(),)
        ),
    }
    sw.authenticated_invite(alice, "bob", bodies[body_kind])
    refusal = alice.take(488)
    assert why in refusal.reason
    assert sw.pool.of(Allocate) == [] and not bob.has("INVITE")


def test_the_global_policy_applies_to_users_without_their_own() -> None:
    sw = Switch(srtp="mandatory", srtp_users={"bob": "optional"})
    alice, _bob = phones(sw)
    sw.authenticated_invite(alice, "bob", alice.offer())
    assert "SRTP required" in alice.take(488).reason


def test_off_answers_best_effort_crypto_in_rtp_avp_plainly() -> None:
    sw = Switch(srtp_users={"alice": "off"})
    alice, bob = phones(sw)
    sw.authenticated_invite(alice, "bob", srtp_offer(alice, proto="RTP/AVP"))
    assert not sw.pool.of(Allocate)[0].legs[0].srtp
    invite_b = bob.take("INVITE")
    bob.send(bob.answer(invite_b, 200, bob.offer()))
    assert crypto_of(alice.take(200).body) == ("RTP/AVP", [])


def test_best_effort_crypto_in_rtp_avp_is_srtp_when_optional() -> None:
    sw = Switch()
    alice, bob = phones(sw)
    sw.authenticated_invite(alice, "bob", srtp_offer(alice, proto="RTP/AVP"))
    assert sw.pool.of(Allocate)[0].legs[0].srtp
    invite_b = bob.take("INVITE")
    bob.send(bob.answer(invite_b, 200, bob.offer()))
    proto, lines = crypto_of(alice.take(200).body)
    assert proto == "RTP/AVP" and len(lines) == 1


def mandatory_bob_call(sw: Switch, alice: Phone, bob: Phone) -> tuple[bytes, Request]:
    """alice (plain) calls bob (mandatory); returns (the bearer's key for bob, bob's INVITE)."""
    sw.authenticated_invite(alice, "bob", alice.offer())
    (allocate,) = sw.pool.of(Allocate)
    assert not allocate.legs[0].srtp and allocate.legs[1].srtp_local is not None
    invite_b = bob.take("INVITE")
    proto, lines = crypto_of(invite_b.body)
    assert proto == "RTP/SAVP" and len(lines) == 1
    offered = parse_crypto(lines[0])
    assert offered is not None and offered.tag == 1 and offered.suite == S80
    return offered.key, invite_b


def test_a_mandatory_callee_is_offered_rtp_savp_with_the_bearers_key() -> None:
    sw = Switch(srtp_users={"bob": "mandatory"})
    alice, bob = phones(sw)
    _key, invite_b = mandatory_bob_call(sw, alice, bob)
    answer = srtp_offer(bob, BOB_KEY)
    bob.send(bob.answer(invite_b, 200, answer))
    ok = alice.take(200)
    assert crypto_of(ok.body) == ("RTP/AVP", [])  # alice stays plain
    b_update = [u for u in sw.pool.of(Update) if u.leg == 1][-1]
    assert b_update.spec.srtp_remote is not None and b_update.spec.srtp_remote.key == BOB_KEY


def test_a_mandatory_callee_answering_without_crypto_fails_the_call() -> None:
    sw = Switch(srtp_users={"bob": "mandatory"})
    alice, bob = phones(sw)
    _key, invite_b = mandatory_bob_call(sw, alice, bob)
    bob.send(bob.answer(invite_b, 200, bob.offer()))
    assert bob.has("BYE")
    assert not alice.has(200)


def test_a_reinvite_may_rekey_but_not_drop_srtp() -> None:
    sw = Switch()
    alice, bob = phones(sw)
    call = sw.establish(alice, bob, offer=srtp_offer(alice))
    bob.take("ACK")
    ours = parse_crypto(crypto_of(call.ok_a.body)[1][0])
    assert ours is not None
    new_key = bytes(range(60, 90))
    reinvite = call.dialog_a.create_request("INVITE", via=alice.via())
    reinvite.add("Content-Type", "application/sdp")
    reinvite.body = srtp_offer(alice, new_key, version=2)
    alice.send(reinvite)
    relayed = bob.take("INVITE")
    assert crypto_of(relayed.body) == ("RTP/AVP", [])
    bob.send(bob.answer(relayed, 200, bob.offer(version=2)))
    ok = alice.take(200)
    alice.send(call.dialog_a.create_ack(reinvite.cseq, via=alice.via()))
    bob.take("ACK")
    again = parse_crypto(crypto_of(ok.body)[1][0])
    assert again is not None and again.key == ours.key  # the bearer's key stays
    a_update = [u for u in sw.pool.of(Update) if u.leg == 0][-1]
    assert a_update.spec.srtp_remote is not None and a_update.spec.srtp_remote.key == new_key
    plain = call.dialog_a.create_request("INVITE", via=alice.via())
    plain.add("Content-Type", "application/sdp")
    plain.body = alice.offer(version=3)
    alice.send(plain)
    assert "SRTP" in alice.take(488).reason


def test_failover_rekeys_both_legs_in_the_reinvites() -> None:
    sw = Switch(srtp_users={"bob": "mandatory"})
    alice, bob = phones(sw)
    call = sw.establish(alice, bob, offer=srtp_offer(alice), answer_body=srtp_offer(bob, BOB_KEY))
    bob.take("ACK")
    old_a = parse_crypto(crypto_of(call.ok_a.body)[1][0])
    old_b = parse_crypto(crypto_of(call.invite_b.body)[1][0])
    assert old_a is not None and old_b is not None
    sw.bearer_down(0)
    allocate = sw.pool.of(Allocate)[1]
    assert allocate.legs[0].srtp_remote is not None and allocate.legs[1].srtp_remote is not None
    ri_a, ri_b = alice.take("INVITE"), bob.take("INVITE")
    new_a = parse_crypto(crypto_of(ri_a.body)[1][0])
    new_b = parse_crypto(crypto_of(ri_b.body)[1][0])
    assert new_a is not None and new_b is not None
    assert new_a.key != old_a.key and new_b.key != old_b.key  # the new bearer's keys
    assert crypto_of(ri_a.body)[0] == "RTP/SAVP" and new_a.tag == old_a.tag
    alice.send(alice.answer(ri_a, 200, srtp_offer(alice, version=2)))
    bob.send(bob.answer(ri_b, 200, srtp_offer(bob, bytes(range(7, 37)), version=2)))
    assert alice.take("ACK") and bob.take("ACK")
    b_update = [u for u in sw.pool.of(Update) if u.leg == 1][-1]
    assert b_update.spec.srtp_remote is not None
    assert b_update.spec.srtp_remote.key == bytes(range(7, 37))  # bob re-keyed: UPDATE
    (snap,) = sw.calls.snapshot()
    assert snap["state"] == "confirmed"


def test_the_sip_trace_never_shows_a_key() -> None:
    sw = Switch()
    alice, _bob = phones(sw)
    invite = alice.invite("bob", srtp_offer(alice))
    text = _text(bytes(invite))
    assert base64.b64encode(ALICE_KEY).decode() not in text
    assert f"a=crypto:1 {S80} inline:<redacted>" in text
    assert media_of(invite)[1] == alice.media_port
