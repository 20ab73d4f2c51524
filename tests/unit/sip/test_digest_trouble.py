"""Log lines for digest attempts that cannot work (softswitch/sip/digest/trouble.py).

Each reason gets one WARNING naming the source, the user when known and what
to change; repeats are held back per source and reason, and over all sources.
Wrong passwords and unknown users leave no line here (the brute-force
defence counts them), and the answers on the wire are not changed: the
registrar tests at the end check both through the real Registrar.
"""

from __future__ import annotations

import logging
from dataclasses import replace

import pytest

from softswitch.registrar import ANSWERS, RegisterResult, Registrar
from softswitch.sip.digest import (
    AuthFailure,
    DigestServer,
    authorize,
    ha1,
    parse_credentials,
)
from softswitch.sip.digest.trouble import DigestTrouble
from softswitch.sip.message import Request, parse
from tests.unit.control.phones import DOMAIN, NOW, Phone, make_user, make_users, sip_config

REALM = "example.com"
SECRET = b"0123456789abcdef0123456789abcdef"
T0 = 1_700_000_000.0
SRC = "192.0.2.7"
USERS = {
    "alice": {"MD5": ha1("alice", REALM, "pw"), "SHA-256": ha1("alice", REALM, "pw", "SHA-256")},
    "legacy": {"MD5": ha1("legacy", REALM, "pw")},
}


def lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.name == "softswitch.sip.digest" and r.levelno == logging.WARNING
    ]


def answer(srv: DigestServer, user: str = "alice", **changes: object) -> str:
    """Good credentials for a fresh challenge, then ``changes`` applied."""
    good = authorize(
        srv.challenge(T0),
        method="REGISTER",
        uri=f"sip:{REALM}",
        username=user,
        password="pw",
        cnonce="c0ffee",
    )
    return str(replace(parse_credentials(good), **changes))  # type: ignore[arg-type]


def attempt(srv: DigestServer, credentials: str, now: float = T0, src: str = SRC) -> None:
    """What the registrar and call setup do with a credential (see registrar.py)."""
    result = srv.verify(credentials, "REGISTER", now, USERS.get)
    assert not result.ok
    srv.trouble.refused(src, credentials, result, now)


@pytest.fixture
def srv() -> DigestServer:
    return DigestServer(SECRET, REALM, algorithms=("MD5", "SHA-256"))


# ------------------------------------------------------------------ one line per reason


def test_an_algorithm_not_offered_is_named_with_what_is_offered(
    srv: DigestServer, caplog: pytest.LogCaptureFixture
) -> None:
    md5_only = DigestServer(SECRET, REALM, algorithms=("MD5",))
    attempt(md5_only, answer(srv, algorithm="SHA-256"))
    assert lines(caplog) == [
        'digest auth from 192.0.2.7 (user "alice") cannot succeed: the phone answered with '
        "algorithm SHA-256, which is not offered (offered: MD5): set [sip] digest_algorithms "
        "or the phone's algorithm"
    ]


def test_an_unknown_algorithm_is_quoted_as_sent(
    srv: DigestServer, caplog: pytest.LogCaptureFixture
) -> None:
    attempt(srv, answer(srv, algorithm="SHA-1"))
    (line,) = lines(caplog)
    assert 'algorithm "SHA-1", which is not offered (offered: MD5, SHA-256)' in line


def test_a_user_without_a_hash_for_the_algorithm_is_told_to_reset_the_password(
    srv: DigestServer, caplog: pytest.LogCaptureFixture
) -> None:
    attempt(srv, answer(srv, user="legacy", algorithm="SHA-256"))
    (line,) = lines(caplog)
    assert '(user "legacy")' in line
    assert "no SHA-256 password hash stored: set the password again" in line


def test_a_wrong_realm_names_both_realms(
    srv: DigestServer, caplog: pytest.LogCaptureFixture
) -> None:
    attempt(srv, answer(srv, realm="pbx.example.net"))
    (line,) = lines(caplog)
    assert 'answered for realm "pbx.example.net", but this switch\'s realm is "example.com"' in line


def test_userhash_and_an_unknown_qop_are_explained(
    srv: DigestServer, caplog: pytest.LogCaptureFixture
) -> None:
    attempt(srv, answer(srv, userhash=True))
    attempt(srv, answer(srv, qop="auth-conf"))
    userhash, qop = lines(caplog)
    assert "asked for userhash=true" in userhash and "turn username hashing off" in userhash
    assert 'answered with qop="auth-conf"; this switch supports qop=auth and qop=auth-int' in qop


def test_unparseable_credentials_are_said_without_a_user(
    srv: DigestServer, caplog: pytest.LogCaptureFixture
) -> None:
    attempt(srv, 'Digest username="alice", realm=')
    assert lines(caplog) == [
        "digest auth from 192.0.2.7 cannot succeed: the phone sent digest credentials "
        "that cannot be parsed"
    ]


def test_phone_supplied_text_is_cut_short_and_made_printable(
    srv: DigestServer, caplog: pytest.LogCaptureFixture
) -> None:
    attempt(srv, answer(srv, realm="r\u0085" + "x" * 500))
    (line,) = lines(caplog)
    assert 'realm "r?' + "x" * 38 + '..."' in line and len(line) < 300


def test_wrong_password_unknown_user_and_stale_nonce_leave_no_line(
    srv: DigestServer, caplog: pytest.LogCaptureFixture
) -> None:
    wrong = authorize(
        srv.challenge(T0), method="REGISTER", uri=f"sip:{REALM}", username="alice",
        password="guess", cnonce="c0ffee",
    )  # fmt: skip
    attempt(srv, wrong)
    attempt(srv, answer(srv, username="mallory"))
    attempt(srv, answer(srv), now=T0 + 301)  # stale: the phone retries at once
    assert lines(caplog) == []


# ------------------------------------------------------------------ no answer at all


def test_two_unanswered_challenges_in_five_minutes_name_the_offered_algorithms(
    srv: DigestServer, caplog: pytest.LogCaptureFixture
) -> None:
    t = srv.trouble
    t.challenged(SRC, "alice@example.com", T0)
    assert lines(caplog) == []
    t.challenged(SRC, "alice@example.com", T0 + 45)  # baresip 1.0 retries after 30-60 s
    assert lines(caplog) == [
        'digest auth from 192.0.2.7 (user "alice") cannot succeed: the phone was challenged '
        "2 times within 300 s and never answered with credentials: it may support none of "
        "the offered algorithms: MD5, SHA-256"
    ]


def test_challenges_spread_over_more_than_five_minutes_or_answered_are_normal(
    srv: DigestServer, caplog: pytest.LogCaptureFixture
) -> None:
    t = srv.trouble
    for i in range(5):  # a phone refreshing without credentials every 301 s
        t.challenged(SRC, "alice@example.com", T0 + 301 * i)
    for i in range(5):  # a phone that answers each challenge
        t.challenged(SRC, "bob@example.com", T0 + i)
        t.answered(SRC, "bob@example.com")
    # one challenge each for another AOR from the same source, and the same
    # AOR from another source: counted apart
    t.challenged(SRC, "carol@example.com", T0)
    t.challenged("192.0.2.8", "alice@example.com", T0)
    assert lines(caplog) == []


# ------------------------------------------------------------------ rate limits


def test_one_line_per_source_and_reason_per_quiet_period(
    srv: DigestServer, caplog: pytest.LogCaptureFixture
) -> None:
    bad = answer(srv, algorithm="SHA-1")
    for i in range(100):
        attempt(srv, bad, now=T0 + i)
    attempt(srv, answer(srv, realm="other"), now=T0 + 100)  # another reason
    attempt(srv, bad, now=T0 + 100, src="192.0.2.8")  # another source
    for i in range(10):
        srv.trouble.challenged(SRC, "alice@example.com", T0 + i)
    assert len(lines(caplog)) == 4  # algorithm, realm, other source, no credentials
    attempt(srv, bad, now=T0 + 299)
    assert len(lines(caplog)) == 4
    attempt(srv, bad, now=T0 + 300)  # quiet (300 s) has passed since the first
    assert len(lines(caplog)) == 5


def test_many_sources_are_capped_per_minute_and_the_rest_counted(
    caplog: pytest.LogCaptureFixture,
) -> None:
    t = DigestTrouble(("MD5",), REALM, burst=5, max_entries=50)
    for i in range(200):  # a scanner on 200 addresses, within a second
        t.challenged(f"198.51.100.{i}", "alice@x", T0 + i / 1000)
        t.challenged(f"198.51.100.{i}", "alice@x", T0 + i / 1000)
    assert len(lines(caplog)) == 5
    assert t.suppressed == 195
    t.challenged("203.0.113.1", "bob@x", T0 + 61)  # a minute later: room again
    t.challenged("203.0.113.1", "bob@x", T0 + 61)
    assert lines(caplog)[-1].endswith(" [195 similar lines suppressed]")
    assert t.suppressed == 0
    assert len(t._unanswered) <= 50 and len(t._said) <= 50  # bounded tables


# ------------------------------------------------------------------ through the registrar


class Rig:
    def __init__(self, algorithms: tuple[str, ...] = ("MD5",)) -> None:
        from softswitch.location import Location
        from softswitch.model.users import UserDirectory

        self.config = sip_config()
        directory = UserDirectory()
        directory.load(make_users(make_user("alice", "secret")))
        self.auth = DigestServer(b"k" * 32, DOMAIN, algorithms=algorithms)
        self.registrar = Registrar(
            location=Location(),
            directory=directory,
            auth=self.auth,
            config=self.config.sip,
            domain=DOMAIN,
            local_hosts=["127.0.0.1"],
        )

    def send(self, data: bytes, now: float = NOW) -> RegisterResult:
        from softswitch.sip.transaction import Peer

        request = parse(data)
        assert isinstance(request, Request)
        return self.registrar.handle(request, Peer("udp", "203.0.113.9", 5060), now)


def test_registrar_logs_an_unsupported_algorithm_and_still_answers_401_with_a_challenge(
    caplog: pytest.LogCaptureFixture,
) -> None:
    sha = Rig(("SHA-256",))
    md5_only = Rig(("MD5",))
    phone = Phone(algorithm="SHA-256")
    phone.challenged(sha.send(phone.register(auth=False)).response)
    result = md5_only.send(phone.register())
    assert result.refusal is AuthFailure.UNSUPPORTED_ALGORITHM
    assert result.response.status == 401 and result.response.get_all("WWW-Authenticate")
    assert ANSWERS[AuthFailure.UNSUPPORTED_ALGORITHM][0] == 401
    (line,) = lines(caplog)
    assert line.startswith('digest auth from 203.0.113.9 (user "alice") cannot succeed')
    assert "algorithm SHA-256, which is not offered (offered: MD5)" in line


def test_registrar_logs_a_phone_that_never_answers_the_challenge(
    caplog: pytest.LogCaptureFixture,
) -> None:
    rig = Rig(("SHA-256", "MD5"))
    phone = Phone()
    for i in range(2):  # e.g. baresip 1.0 (libre) retrying against a SHA-256 challenge
        assert rig.send(phone.register(auth=False), NOW + 45 * i).response.status == 401
    (line,) = lines(caplog)
    assert '203.0.113.9 (user "alice")' in line
    assert "it may support none of the offered algorithms: SHA-256, MD5" in line
