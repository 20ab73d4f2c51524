"""The registrar on a fake clock with in-memory messages (RFC 3261 §10.3).

The phones and users come from phones.py (shared with test_core.py): a phone
builds REGISTERs as bytes, answers challenges with the stack's own
DigestClient, and reads the response back with ``parse``.
"""

from __future__ import annotations

import pytest

from softswitch.location import Location
from softswitch.model.users import UserDirectory
from softswitch.registrar import ANSWERS, Refusal, RegisterResult, Registrar, sip_date
from softswitch.sip.digest import AuthFailure, DigestServer, parse_challenge
from softswitch.sip.message import Request, Response, parse
from softswitch.sip.transaction import Peer
from tests.unit.control.phones import DOMAIN, NAT, NOW, Phone, make_user, make_users, sip_config


class Rig:
    """A registrar with its collaborators, driven like the core drives it."""

    def __init__(self, users: dict | None = None, **sip: object) -> None:
        self.config = sip_config(**sip)
        self.location = Location()
        self.directory = UserDirectory()
        self.directory.load(
            users if users is not None else make_users(make_user("alice", "secret"))
        )
        self.auth = DigestServer(b"k" * 32, DOMAIN, nonce_ttl=self.config.sip.nonce_ttl)
        self.registrar = Registrar(
            location=self.location,
            directory=self.directory,
            auth=self.auth,
            config=self.config.sip,
            domain=DOMAIN,
            local_hosts=["127.0.0.1"],
        )

    def send(self, data: bytes, now: float = NOW, peer: Peer = NAT) -> RegisterResult:
        request = parse(data)
        assert isinstance(request, Request)
        return self.registrar.handle(request, peer, now)

    def login(self, phone: Phone, now: float = NOW, **kw) -> RegisterResult:
        """Challenge then authorised REGISTER; returns the second result."""
        first = self.send(phone.register(auth=False, **kw), now)
        assert first.response.status == 401
        phone.challenged(first.response)
        return self.send(phone.register(**kw), now)


def contacts_of(response: Response) -> dict[str, int]:
    out = {}
    for c in response.contacts:
        out[str(c.uri)] = int(c.params["expires"] or 0)
    return out


# ---------------------------------------------------------------------------- digest


def test_register_without_credentials_gets_sha256_and_md5_challenges() -> None:
    rig = Rig()
    result = rig.send(Phone().register(auth=False))
    assert result.response.status == 401
    assert result.refusal is Refusal.NO_CREDENTIALS
    challenges = [parse_challenge(v) for v in result.response.get_all("WWW-Authenticate")]
    assert [c.algorithm for c in challenges] == ["SHA-256", "MD5"]
    assert {c.realm for c in challenges} == {DOMAIN} and not any(c.stale for c in challenges)
    assert result.saved == () and len(rig.location) == 0
    assert result.response.to.tag  # §8.2.6.2


@pytest.mark.parametrize("algorithm", ["SHA-256", "MD5"])
def test_answered_challenge_registers_the_contact(algorithm: str) -> None:
    rig = Rig()
    phone = Phone(algorithm=algorithm)
    result = rig.login(phone)
    assert result.response.status == 200, result.response
    assert result.refusal is None and result.aor == f"alice@{DOMAIN}"
    assert contacts_of(result.response) == {"sip:alice@10.0.0.5:5062": 3600}
    assert result.response.get("Date")
    (saved,) = result.saved
    assert saved.expires_at == NOW + 3600
    assert saved.call_id == phone.call_id and saved.cseq == 2
    assert saved.user_agent == "TestPhone/1.0"
    assert [b.contact for b in rig.location.lookup("alice", DOMAIN, NOW)] == [saved.contact]


def test_wrong_password_gets_a_fresh_401_and_no_binding() -> None:
    rig = Rig()
    phone = Phone(password="wrong")
    first = rig.send(phone.register(auth=False))
    phone.challenged(first.response)
    result = rig.send(phone.register())
    assert result.response.status == 401
    assert result.refusal is AuthFailure.BAD_RESPONSE
    assert result.response.get_all("WWW-Authenticate")
    assert len(rig.location) == 0


def test_unknown_user_is_answered_exactly_like_a_wrong_password() -> None:
    rig = Rig()
    phone = Phone("mallory", "x")
    first = rig.send(phone.register(auth=False))
    phone.challenged(first.response)
    result = rig.send(phone.register())
    assert result.refusal is AuthFailure.UNKNOWN_USER
    assert ANSWERS[AuthFailure.UNKNOWN_USER] == ANSWERS[AuthFailure.BAD_RESPONSE]
    assert result.response.status == 401 and result.response.reason == "Unauthorized"


def test_old_nonce_with_right_password_gets_stale_true() -> None:
    rig = Rig(nonce_ttl=300)
    phone = Phone()
    first = rig.send(phone.register(auth=False))
    phone.challenged(first.response)
    result = rig.send(phone.register(), NOW + 301)
    assert result.response.status == 401
    assert result.refusal is AuthFailure.STALE_NONCE
    challenges = [parse_challenge(v) for v in result.response.get_all("WWW-Authenticate")]
    assert challenges and all(c.stale for c in challenges)
    phone.challenged(result.response)
    assert rig.send(phone.register(), NOW + 302).response.status == 200


def test_reused_nonce_with_rising_nc_needs_no_new_challenge() -> None:
    rig = Rig()
    phone = Phone()
    rig.login(phone)
    for i in range(3):
        assert rig.send(phone.register(), NOW + 10 * i).response.status == 200


def test_replayed_request_gets_a_fresh_challenge() -> None:
    rig = Rig()
    phone = Phone()
    rig.send(phone.register(auth=False))
    first = rig.send(phone.register(auth=False))
    phone.challenged(first.response)
    data = phone.register()
    assert rig.send(data).response.status == 200
    # The same bytes again in a new transaction (a captured request).
    replay = data.replace(b"branch=z9hG4bK", b"branch=z9hG4bKreplay")
    result = rig.send(replay)
    assert result.refusal is AuthFailure.REPLAY and result.response.status == 401


def test_credentials_in_an_unknown_scheme_are_challenged() -> None:
    # RFC 4475 §3.3.7 (regaut01): a registrar doing auth answers 401.
    rig = Rig()
    result = rig.send(Phone().register(auth=False, extra=["Authorization: NoOneKnowsThisScheme x"]))
    assert result.response.status == 401 and result.refusal is Refusal.NO_CREDENTIALS


def test_malformed_digest_credentials_are_400() -> None:
    rig = Rig()
    result = rig.send(Phone().register(auth=False, extra=['Authorization: Digest username="a']))
    assert result.response.status == 400 and result.refusal is AuthFailure.MALFORMED


def test_disabled_user_is_403_after_authenticating() -> None:
    rig = Rig(make_users(make_user("alice", "secret", enabled=False)))
    result = rig.login(Phone())
    assert result.response.status == 403 and result.refusal is Refusal.DISABLED
    assert len(rig.location) == 0


def test_registering_someone_elses_aor_is_403() -> None:
    rig = Rig(make_users(make_user("alice", "secret"), make_user("bob", "pw", uid=2)))
    phone = Phone("alice", "secret")
    result = rig.login(phone, to=f"<sip:bob@{DOMAIN}>")
    assert result.response.status == 403 and result.refusal is Refusal.USER_MISMATCH
    assert rig.location.lookup("bob", DOMAIN, NOW) == []


def test_to_naming_a_listen_address_means_our_domain() -> None:
    rig = Rig()
    result = rig.login(Phone(), to="<sip:alice@127.0.0.1>")
    assert result.response.status == 200
    assert len(rig.location.lookup("alice", DOMAIN, NOW)) == 1


def test_escaped_user_part_is_the_same_user() -> None:
    rig = Rig()
    result = rig.login(Phone(), to=f"<sip:%61lice@{DOMAIN}>")
    assert result.response.status == 200


def test_escaped_nul_never_aliases_a_shorter_user() -> None:
    # RFC 4475 §3.1.1.4 (escnull): "alice%00x" is not alice.
    rig = Rig()
    result = rig.login(Phone(), to=f"<sip:alice%00x@{DOMAIN}>")
    assert result.response.status == 403 and result.refusal is Refusal.USER_MISMATCH


def test_non_sip_to_is_400() -> None:
    # RFC 4475 §3.3.4 (unksm2): To must be a SIP or SIPS AOR.
    rig = Rig()
    result = rig.send(Phone().register(auth=False, to="<isbn:2983792873>"))
    assert result.response.status == 400 and result.refusal is Refusal.NOT_SIP_AOR


# ---------------------------------------------------------------------------- expires


def test_interval_below_minimum_gets_423_with_min_expires() -> None:
    rig = Rig(min_expires=60)
    result = rig.login(Phone(), expires=30)
    assert result.response.status == 423
    assert result.refusal is Refusal.INTERVAL_TOO_BRIEF
    assert result.response.get("Min-Expires") == "60"
    assert len(rig.location) == 0


def test_interval_above_maximum_is_cut_down() -> None:
    rig = Rig(max_expires=600)
    result = rig.login(Phone(), expires=86400)
    assert contacts_of(result.response) == {"sip:alice@10.0.0.5:5062": 600}
    assert result.saved[0].expires_at == NOW + 600


def test_contact_expires_parameter_beats_the_header() -> None:
    rig = Rig()
    result = rig.login(Phone(contact="<sip:alice@10.0.0.5:5062>;expires=120"), expires=3000)
    assert contacts_of(result.response) == {"sip:alice@10.0.0.5:5062": 120}


def test_no_expires_at_all_gets_the_default() -> None:
    rig = Rig(default_expires=1800)
    result = rig.login(Phone(), expires=None)
    assert contacts_of(result.response) == {"sip:alice@10.0.0.5:5062": 1800}


def test_binding_expires_on_the_fake_clock() -> None:
    rig = Rig()
    rig.login(Phone(), expires=120)
    assert len(rig.location.lookup("alice", DOMAIN, NOW + 119)) == 1
    assert rig.location.lookup("alice", DOMAIN, NOW + 120) == []
    assert [b.contact for b in rig.location.expire(NOW + 120)] == ["sip:alice@10.0.0.5:5062"]


# ---------------------------------------------------------------------------- contacts


def test_two_devices_are_both_bound_and_listed() -> None:
    rig = Rig()
    desk = Phone(contact="<sip:alice@10.0.0.5:5062>")
    mobile = Phone(contact="<sip:alice@10.0.0.77:5060;transport=tcp>")
    rig.login(desk)
    result = rig.login(mobile, expires=600)
    assert contacts_of(result.response) == {
        "sip:alice@10.0.0.5:5062": 3600,
        "sip:alice@10.0.0.77:5060;transport=tcp": 600,
    }
    assert len(rig.location.lookup("alice", DOMAIN, NOW)) == 2


def test_unregistering_one_contact_keeps_the_other() -> None:
    rig = Rig()
    phone = Phone()
    rig.login(phone, contacts=["<sip:alice@10.0.0.5:5062>", "<sip:alice@10.0.0.5:5064>"])
    result = rig.send(phone.register(contacts=["<sip:alice@10.0.0.5:5064>"], expires=0))
    assert result.response.status == 200
    assert [b.contact for b in result.deleted] == ["sip:alice@10.0.0.5:5064"]
    assert contacts_of(result.response) == {"sip:alice@10.0.0.5:5062": 3600}


def test_star_with_expires_zero_removes_every_binding() -> None:
    rig = Rig()
    phone = Phone()
    rig.login(phone, contacts=["<sip:alice@10.0.0.5:5062>", "<sip:alice@10.0.0.5:5064>"])
    other = Phone(contact="<sip:alice@10.0.0.9>")
    rig.login(other)
    result = rig.send(phone.register(contacts=["*"], expires=0))
    assert result.response.status == 200
    assert len(result.deleted) == 3 and result.response.contacts == []
    assert len(rig.location) == 0


@pytest.mark.parametrize("expires", [None, 3600])
def test_star_without_expires_zero_is_400(expires: int | None) -> None:
    rig = Rig()
    phone = Phone()
    rig.login(phone)
    result = rig.send(phone.register(contacts=["*"], expires=expires))
    assert result.response.status == 400 and result.refusal is Refusal.STAR_MISUSE
    assert len(rig.location) == 1


def test_register_without_contact_is_a_query() -> None:
    rig = Rig()
    phone = Phone()
    rig.login(phone)
    result = rig.send(phone.register(contacts=[]), NOW + 100)
    assert result.response.status == 200 and result.saved == ()
    assert contacts_of(result.response) == {"sip:alice@10.0.0.5:5062": 3500}


def test_same_call_id_with_an_older_cseq_is_refused_and_changes_nothing() -> None:
    # §10.3 step 7: a late, older REGISTER must not undo a newer one.
    rig = Rig()
    phone = Phone()
    rig.login(phone, expires=3600)  # stored with CSeq 2
    result = rig.send(phone.register(cseq=2, expires=0))
    assert result.response.status == 400 and result.refusal is Refusal.OUT_OF_ORDER
    assert len(rig.location) == 1


def test_another_call_id_may_use_any_cseq() -> None:
    rig = Rig()
    rig.login(Phone())
    other = Phone()  # a second device/app instance updating the same contact
    result = rig.login(other, cseq=1, expires=100)
    assert result.response.status == 200
    assert contacts_of(result.response) == {"sip:alice@10.0.0.5:5062": 100}


def test_contact_equal_by_uri_rules_replaces_the_stored_spelling() -> None:
    rig = Rig()
    phone = Phone(contact="<sip:alice@10.0.0.5:5062>")
    rig.login(phone)
    phone.contact = "<sip:%61lice@10.0.0.5:5062>"
    result = rig.send(phone.register())
    assert [b.contact for b in result.deleted] == ["sip:alice@10.0.0.5:5062"]
    assert contacts_of(result.response) == {"sip:%61lice@10.0.0.5:5062": 3600}


def test_same_instance_id_replaces_the_old_contact() -> None:
    # RFC 5626: a rebooted phone (new port, new Call-ID) replaces itself.
    rig = Rig()
    inst = '+sip.instance="<urn:uuid:00000000-0000-1000-8000-000A95A0E128>";reg-id=1'
    rig.login(Phone(contact=f"<sip:alice@10.0.0.5:5062>;{inst}"))
    result = rig.login(Phone(contact=f"<sip:alice@10.0.0.5:6000>;{inst}"))
    assert [b.contact for b in result.deleted] == ["sip:alice@10.0.0.5:5062"]
    assert contacts_of(result.response) == {"sip:alice@10.0.0.5:6000": 3600}
    assert result.saved[0].reg_id == 1
    assert result.saved[0].instance == '"<urn:uuid:00000000-0000-1000-8000-000A95A0E128>"'


def test_nat_source_is_recorded_as_where_to_send() -> None:
    # RFC 3581: the Contact names a private address; requests go to the source.
    rig = Rig()
    result = rig.login(Phone(contact="<sip:alice@192.168.1.20:5060>"))
    b = result.saved[0]
    assert b.contact == "sip:alice@192.168.1.20:5060"
    assert (b.source_transport, b.source_host, b.source_port) == ("udp", "203.0.113.9", 61000)


def test_more_contacts_in_one_request_than_allowed_is_403() -> None:
    rig = Rig()
    many = [f"<sip:alice@10.0.1.{i}>" for i in range(11)]
    result = rig.login(Phone(), contacts=many)
    assert result.response.status == 403 and result.refusal is Refusal.TOO_MANY_CONTACTS
    assert len(rig.location) == 0


def test_non_sip_contact_is_400_and_nothing_is_committed() -> None:
    rig = Rig()
    result = rig.login(Phone(), contacts=["<sip:alice@10.0.0.1>", "<tel:+15551234>"])
    assert result.response.status == 400 and result.refusal is Refusal.BAD_CONTACT
    assert len(rig.location) == 0


def test_every_refusal_has_exactly_one_answer() -> None:
    assert set(ANSWERS) == set(Refusal) | set(AuthFailure)


def test_date_header_is_rfc1123_gmt_whatever_the_clock() -> None:
    """sip_date replaced email.utils.formatdate (which loads socket); same text."""
    import email.utils

    for epoch in (0, 951_782_400, 1_700_000_000, 4_102_444_799, 1_234_567_890):
        assert sip_date(epoch) == email.utils.formatdate(epoch, usegmt=True)
    assert sip_date(1_700_000_000) == "Tue, 14 Nov 2023 22:13:20 GMT"
