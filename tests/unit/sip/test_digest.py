"""Digest authentication: RFC vectors, the server's checks, the client, the grammar."""

from __future__ import annotations

import base64
import itertools
from collections.abc import Callable
from dataclasses import replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from softswitch.sip.digest import (
    AuthFailure,
    Challenge,
    Credentials,
    DigestClient,
    DigestServer,
    authorize,
    compute_response,
    ha1,
    parse_challenge,
    parse_credentials,
)
from softswitch.sip.errors import SipError

REALM = "example.com"
SECRET = b"0123456789abcdef0123456789abcdef"
T0 = 1_700_000_000.0  # wall-clock seconds; every test drives its own clock
USERS = {
    "alice": {
        "MD5": ha1("alice", REALM, "secret"),
        "SHA-256": ha1("alice", REALM, "secret", "SHA-256"),
    },
    "legacy": {"MD5": ha1("legacy", REALM, "old")},  # provisioned before SHA-256
}


def lookup(username: str) -> dict[str, str] | None:
    return USERS.get(username)


def counter_rand() -> Callable[[int], bytes]:
    """Deterministic salts that still differ from one nonce to the next."""
    counter = itertools.count(1)
    return lambda n: next(counter).to_bytes(n, "big")


def server(**kwargs: object) -> DigestServer:
    return DigestServer(SECRET, REALM, rand=counter_rand(), **kwargs)  # type: ignore[arg-type]


def register(
    challenges: list[str] | str,
    *,
    user: str = "alice",
    password: str = "secret",
    nc: int = 1,
    algorithm: str | None = None,
) -> str:
    if algorithm is not None:
        challenges = [c for c in challenges if f"algorithm={algorithm}," in c]
    return authorize(
        challenges,
        method="REGISTER",
        uri="sip:example.com",
        username=user,
        password=password,
        cnonce="0a4f113b",
        nc=nc,
    )


# --- published vectors ---------------------------------------------------------

# RFC 7616 §3.9.1, exactly as printed (folded over several lines); the password is
# "Circle of Life" with a lower-case "of" (RFC 7616 errata 4495).
RFC7616_CHALLENGE = (
    "Digest\r\n"
    '    realm="http-auth@example.org",\r\n'
    '    qop="auth, auth-int",\r\n'
    "    algorithm={alg},\r\n"
    '    nonce="7ypf/xlj9XXwfDPEoM4URrv/xwf94BcCAzFZH4GiTo0v",\r\n'
    '    opaque="FQhe/qaU925kfnzjCev0ciny7QMkPqMAFRtzCUYo5tdS"'
)
RFC7616_CNONCE = "f2/wE4q74E6zIJEtWaHKaf5wv/H5QzzpXusqGemxURZJ"
RFC7616_RESPONSES = {
    "MD5": "8ca523f5e9506fed4657c9700eebdbec",
    "SHA-256": "753927fa0e85d155564e2e272a28d1802ca10daf4496794697cf8db5856cb6c1",
}


@pytest.mark.parametrize("alg", ["MD5", "SHA-256"])
def test_rfc7616_section_3_9_1_client_reproduces_published_response(alg: str) -> None:
    value = authorize(
        RFC7616_CHALLENGE.format(alg=alg),
        method="GET",
        uri="/dir/index.html",
        username="Mufasa",
        password="Circle of Life",
        cnonce=RFC7616_CNONCE,
        nc=1,
    )
    creds = parse_credentials(value)
    assert creds.response == RFC7616_RESPONSES[alg]
    assert creds.qop == "auth"  # auth preferred over auth-int
    assert creds.nc == 1
    assert creds.algorithm == alg
    assert creds.opaque == "FQhe/qaU925kfnzjCev0ciny7QMkPqMAFRtzCUYo5tdS"


@pytest.mark.parametrize("alg", ["MD5", "SHA-256"])
def test_rfc7616_section_3_9_1_response_from_stored_ha1(alg: str) -> None:
    stored = ha1("Mufasa", "http-auth@example.org", "Circle of Life", alg)
    response = compute_response(
        stored,
        algorithm=alg,
        nonce="7ypf/xlj9XXwfDPEoM4URrv/xwf94BcCAzFZH4GiTo0v",
        method="GET",
        uri="/dir/index.html",
        qop="auth",
        nc=1,
        cnonce=RFC7616_CNONCE,
    )
    assert response == RFC7616_RESPONSES[alg]


def test_rfc7616_section_3_9_1_authorization_header_parses_as_printed() -> None:
    value = (
        'Digest username="Mufasa",\r\n'
        '    realm="http-auth@example.org",\r\n'
        '    uri="/dir/index.html",\r\n'
        "    algorithm=MD5,\r\n"
        '    nonce="7ypf/xlj9XXwfDPEoM4URrv/xwf94BcCAzFZH4GiTo0v",\r\n'
        "    nc=00000001,\r\n"
        f'    cnonce="{RFC7616_CNONCE}",\r\n'
        "    qop=auth,\r\n"
        '    response="8ca523f5e9506fed4657c9700eebdbec",\r\n'
        '    opaque="FQhe/qaU925kfnzjCev0ciny7QMkPqMAFRtzCUYo5tdS"'
    )
    creds = parse_credentials(value)
    assert (creds.username, creds.realm, creds.uri) == (
        "Mufasa",
        "http-auth@example.org",
        "/dir/index.html",
    )
    assert (creds.algorithm, creds.qop, creds.nc, creds.cnonce) == (
        "MD5",
        "auth",
        1,
        RFC7616_CNONCE,
    )
    assert creds.response == RFC7616_RESPONSES["MD5"]


def test_rfc2617_section_3_5_example_response() -> None:
    # RFC 2617 §3.5: password "Circle Of Life" (capital O), qop=auth.
    response = compute_response(
        ha1("Mufasa", "testrealm@host.com", "Circle Of Life"),
        algorithm="MD5",
        nonce="dcd98b7102dd2f0e8b11d0f600bfb0c093",
        method="GET",
        uri="/dir/index.html",
        qop="auth",
        nc=1,
        cnonce="0a4f113b",
    )
    assert response == "6629fae49393a05397450978507c4ef1"


def test_rfc2069_example_response_without_qop_as_corrected_by_errata() -> None:
    # RFC 2069 §2.4 prints e966c932...; its errata give the right value below.
    response = compute_response(
        ha1("Mufasa", "testrealm@host.com", "CircleOfLife"),
        algorithm=None,  # absent algorithm means MD5
        nonce="dcd98b7102dd2f0e8b11d0f600bfb0c093",
        method="GET",
        uri="/dir/index.html",
    )
    assert response == "1949323746fe6a43ef61f9606e7febea"


# --- server: challenges ----------------------------------------------------------


def test_challenge_offers_sha256_then_md5_with_one_nonce_qop_auth_and_opaque() -> None:
    values = server().challenge(T0)
    parsed = [parse_challenge(v) for v in values]
    assert [c.algorithm for c in parsed] == ["SHA-256", "MD5"]  # RFC 8760: preferred first
    assert len({c.nonce for c in parsed}) == 1
    assert all(c.realm == REALM and c.qop == ("auth",) and c.opaque for c in parsed)
    assert not any(c.stale for c in parsed)
    assert "stale" not in values[0]


def test_challenge_with_stale_flag_says_stale_true() -> None:
    values = server().challenge(T0, stale=True)
    assert all("stale=true" in v for v in values)
    assert all(parse_challenge(v).stale for v in values)


def test_challenge_values_are_exactly_the_serialised_challenges() -> None:
    # The server splices nonces into templates; they must equal Challenge.__str__,
    # even for a realm that itself contains quotes and a nonce-like directive.
    realm = 'odd "realm" nonce="nonce-goes-here", x\\y'
    srv = DigestServer(SECRET, realm, rand=counter_rand())
    for stale in (False, True):
        for value in srv.challenge(T0, stale=stale):
            parsed = parse_challenge(value)
            assert parsed.realm == realm
            assert value == str(parsed)
    users = {"alice": {"SHA-256": ha1("alice", realm, "secret", "SHA-256")}}
    value = register(srv.challenge(T0), algorithm="SHA-256")
    assert srv.verify(value, "REGISTER", T0, users.get).ok


def test_successive_challenges_carry_different_nonces_even_in_the_same_millisecond() -> None:
    srv = DigestServer(SECRET, REALM)  # real os.urandom salt
    nonces = {parse_challenge(srv.challenge(T0)[0]).nonce for _ in range(50)}
    assert len(nonces) == 50


def test_nonce_from_one_process_verifies_in_another_holding_the_same_secret() -> None:
    value = register(server().challenge(T0))
    other = DigestServer(SECRET, REALM)
    assert other.verify(value, "REGISTER", T0 + 1, lookup).ok


# --- server: verify ---------------------------------------------------------------


@pytest.mark.parametrize("alg", ["SHA-256", "MD5"])
def test_round_trip_challenge_authorize_verify(alg: str) -> None:
    srv = server()
    value = register(srv.challenge(T0), algorithm=alg)
    result = srv.verify(value, "REGISTER", T0 + 0.2, lookup)
    assert result.ok
    assert (result.username, result.reason, result.algorithm) == ("alice", None, alg)


def test_wrong_password_is_bad_response() -> None:
    srv = server()
    result = srv.verify(register(srv.challenge(T0), password="guess"), "REGISTER", T0, lookup)
    assert (result.ok, result.username, result.reason) == (False, "alice", AuthFailure.BAD_RESPONSE)


def test_wrong_method_is_bad_response() -> None:
    srv = server()
    result = srv.verify(register(srv.challenge(T0)), "INVITE", T0, lookup)
    assert result.reason is AuthFailure.BAD_RESPONSE


def test_unknown_user() -> None:
    srv = server()
    result = srv.verify(register(srv.challenge(T0), user="mallory"), "REGISTER", T0, lookup)
    assert (result.ok, result.username, result.reason) == (
        False,
        "mallory",
        AuthFailure.UNKNOWN_USER,
    )


def test_credentials_for_another_realm_are_wrong_realm() -> None:
    srv = server()
    foreign = [str(replace(parse_challenge(v), realm="elsewhere.net")) for v in srv.challenge(T0)]
    result = srv.verify(register(foreign), "REGISTER", T0, lookup)
    assert result.reason is AuthFailure.WRONG_REALM


def _with_nonce(challenges: list[str], nonce: str) -> list[str]:
    return [str(replace(parse_challenge(v), nonce=nonce)) for v in challenges]


def test_tampered_nonce_is_bad_nonce_even_with_a_matching_digest() -> None:
    srv = server()
    challenges = srv.challenge(T0)
    nonce = parse_challenge(challenges[0]).nonce
    tampered = nonce[:5] + ("A" if nonce[5] != "A" else "B") + nonce[6:]
    result = srv.verify(register(_with_nonce(challenges, tampered)), "REGISTER", T0, lookup)
    assert result.reason is AuthFailure.BAD_NONCE


@pytest.mark.parametrize(
    "nonce",
    [
        "7ypf/xlj9XXwfDPEoM4URrv/xwf94BcCAzFZH4GiTo0v",  # RFC 7616's, not ours
        "dcd98b7102dd2f0e8b11d0f600bfb0c093",
        "",
        "é" * 43,
    ],
)
def test_foreign_nonce_is_bad_nonce(nonce: str) -> None:
    srv = server()
    result = srv.verify(register(_with_nonce(srv.challenge(T0), nonce)), "REGISTER", T0, lookup)
    assert result.reason is AuthFailure.BAD_NONCE


def test_nonce_minted_under_another_secret_is_bad_nonce() -> None:
    other = DigestServer(b"another secret of 32 bytes......", REALM)
    result = server().verify(register(other.challenge(T0)), "REGISTER", T0, lookup)
    assert result.reason is AuthFailure.BAD_NONCE


def test_non_canonical_base64_spelling_of_our_nonce_is_bad_nonce() -> None:
    srv = server()
    challenges = srv.challenge(T0)
    nonce = parse_challenge(challenges[0]).nonce
    # The last of 43 characters carries 4 bits of data and 2 of padding that must be
    # zero: flipping the padding bits decodes to the same bytes under another name.
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    twin = nonce[:-1] + alphabet[alphabet.index(nonce[-1]) ^ 1]
    assert base64.urlsafe_b64decode(twin + "=") == base64.urlsafe_b64decode(nonce + "=")
    result = srv.verify(register(_with_nonce(challenges, twin)), "REGISTER", T0, lookup)
    assert result.reason is AuthFailure.BAD_NONCE


def test_nonce_from_the_future_beyond_clock_skew_is_bad_nonce() -> None:
    srv = server(clock_skew=5.0)
    value = register(srv.challenge(T0 + 60))
    assert srv.verify(value, "REGISTER", T0, lookup).reason is AuthFailure.BAD_NONCE
    value = register(srv.challenge(T0 + 4))
    assert srv.verify(value, "REGISTER", T0, lookup).ok


def test_expired_nonce_with_right_password_is_stale_and_rechallenge_says_stale() -> None:
    srv = server(nonce_ttl=300.0)
    value = register(srv.challenge(T0))
    assert srv.verify(value, "REGISTER", T0 + 300.0, lookup).ok  # the last valid instant
    result = srv.verify(register(srv.challenge(T0), nc=1), "REGISTER", T0 + 300.01, lookup)
    assert (result.ok, result.reason) == (False, AuthFailure.STALE_NONCE)
    again = srv.challenge(T0 + 300.01, stale=result.reason is AuthFailure.STALE_NONCE)
    assert all(parse_challenge(v).stale for v in again)
    assert srv.verify(register(again), "REGISTER", T0 + 301, lookup).ok


def test_expired_nonce_with_wrong_password_is_bad_response_not_stale() -> None:
    # RFC 7616 §3.3: stale=true only when the digest was valid.
    srv = server()
    value = register(srv.challenge(T0), password="guess")
    assert srv.verify(value, "REGISTER", T0 + 1000, lookup).reason is AuthFailure.BAD_RESPONSE


def test_repeated_nc_is_replay_and_increasing_nc_is_accepted() -> None:
    srv = server()
    challenges = srv.challenge(T0)
    first = register(challenges, nc=1)
    assert srv.verify(first, "REGISTER", T0 + 1, lookup).ok
    assert srv.verify(first, "REGISTER", T0 + 2, lookup).reason is AuthFailure.REPLAY
    assert srv.verify(register(challenges, nc=2), "REGISTER", T0 + 3, lookup).ok
    assert srv.verify(register(challenges, nc=7), "REGISTER", T0 + 4, lookup).ok  # gaps allowed
    old = register(challenges, nc=5)
    assert srv.verify(old, "REGISTER", T0 + 5, lookup).reason is AuthFailure.REPLAY


def test_failed_attempts_do_not_advance_the_nonce_count() -> None:
    # A forged request with a huge nc must not lock the real phone out of its nonce.
    srv = server()
    challenges = srv.challenge(T0)
    forged = register(challenges, password="guess", nc=0xFFFFFFFF)
    assert srv.verify(forged, "REGISTER", T0, lookup).reason is AuthFailure.BAD_RESPONSE
    assert srv.verify(register(challenges, nc=1), "REGISTER", T0, lookup).ok
    assert srv.tracked_nonces == 1


def test_nonce_count_table_is_bounded_and_evicted_live_nonces_turn_stale() -> None:
    srv = server(max_nonces=3)
    used = []
    for i in range(10):
        challenges = srv.challenge(T0 + i)
        assert srv.verify(register(challenges), "REGISTER", T0 + i, lookup).ok
        used.append(challenges)
        assert srv.tracked_nonces <= 3
    # The first nonce's count was evicted while it was still live: reusing it cannot
    # be checked for replay, so it is refused as stale (the phone fetches a new one).
    result = srv.verify(register(used[0], nc=2), "REGISTER", T0 + 11, lookup)
    assert result.reason is AuthFailure.STALE_NONCE
    assert srv.verify(register(used[0], nc=1), "REGISTER", T0 + 11, lookup).reason is (
        AuthFailure.STALE_NONCE
    )
    # A nonce still in the table keeps counting; a fresh one is fine.
    assert srv.verify(register(used[-1], nc=2), "REGISTER", T0 + 11, lookup).ok
    assert srv.verify(register(srv.challenge(T0 + 12)), "REGISTER", T0 + 12, lookup).ok


def test_expired_nonces_leave_the_table() -> None:
    srv = server(nonce_ttl=60.0)
    for i in range(3):
        assert srv.verify(register(srv.challenge(T0 + i)), "REGISTER", T0 + i, lookup).ok
    assert srv.tracked_nonces == 3
    later = T0 + 100
    assert srv.verify(register(srv.challenge(later)), "REGISTER", later, lookup).ok
    assert srv.tracked_nonces == 1


def test_rfc2069_credentials_without_qop_are_accepted_unless_disabled() -> None:
    srv = server()
    nonce = parse_challenge(srv.challenge(T0)[1]).nonce
    old_style = str(Challenge(realm=REALM, nonce=nonce))  # no qop, no algorithm
    value = authorize(
        old_style,
        method="REGISTER",
        uri="sip:example.com",
        username="legacy",
        password="old",
        cnonce="unused",
    )
    creds = parse_credentials(value)
    assert (creds.qop, creds.nc, creds.cnonce) == (None, None, None)
    result = srv.verify(value, "REGISTER", T0, lookup)
    assert (result.ok, result.algorithm) == (True, "MD5")
    strict = server(allow_rfc2069=False)
    assert strict.verify(value, "REGISTER", T0, lookup).reason is AuthFailure.MALFORMED


def test_auth_int_covers_the_body() -> None:
    srv = server()
    nonce = parse_challenge(srv.challenge(T0)[0]).nonce
    offer = str(Challenge(realm=REALM, nonce=nonce, algorithm="SHA-256", qop=("auth-int",)))
    body = b"v=0\r\no=- 1 1 IN IP4 192.0.2.1\r\n"
    value = authorize(
        offer,
        method="INVITE",
        uri="sip:bob@example.com",
        username="alice",
        password="secret",
        cnonce="c",
        body=body,
    )
    assert parse_credentials(value).qop == "auth-int"
    assert srv.verify(value, "INVITE", T0, lookup, body=body).ok
    assert srv.verify(value, "INVITE", T0, lookup, body=b"tampered").reason is (
        AuthFailure.BAD_RESPONSE
    )


def test_algorithm_not_offered_or_not_provisioned_is_unsupported() -> None:
    sha_only = server(algorithms=("SHA-256",))
    md5_value = register(server().challenge(T0), algorithm="MD5")
    assert sha_only.verify(md5_value, "REGISTER", T0, lookup).reason is (
        AuthFailure.UNSUPPORTED_ALGORITHM
    )
    srv = server()
    sha_value = register(srv.challenge(T0), user="legacy", password="old", algorithm="SHA-256")
    assert srv.verify(sha_value, "REGISTER", T0, lookup).reason is (
        AuthFailure.UNSUPPORTED_ALGORITHM
    )
    creds = parse_credentials(sha_value)
    unknown = str(replace(creds, algorithm="SHA-1"))
    assert srv.verify(unknown, "REGISTER", T0, lookup).reason is AuthFailure.UNSUPPORTED_ALGORITHM


def test_md5_sess_is_computed_from_the_stored_ha1() -> None:
    srv = server()
    nonce = parse_challenge(srv.challenge(T0)[1]).nonce
    offer = str(Challenge(realm=REALM, nonce=nonce, algorithm="MD5-sess", qop=("auth",)))
    value = register(offer)
    assert srv.verify(value, "REGISTER", T0, lookup).algorithm == "MD5-sess"
    assert srv.verify(value, "REGISTER", T0, lookup).reason is AuthFailure.REPLAY


def test_userhash_is_refused_as_unsupported() -> None:
    srv = server()
    value = str(replace(parse_credentials(register(srv.challenge(T0))), userhash=True))
    assert "userhash=true" in value
    assert srv.verify(value, "REGISTER", T0, lookup).reason is AuthFailure.USERHASH_UNSUPPORTED


def test_digest_uri_must_match_request_uri_when_given() -> None:
    srv = server()
    challenges = srv.challenge(T0)
    value = register(challenges)
    result = srv.verify(value, "REGISTER", T0, lookup, request_uri="sip:other.example.com")
    assert result.reason is AuthFailure.URI_MISMATCH
    assert srv.verify(value, "REGISTER", T0, lookup, request_uri="sip:example.com").ok


def test_uppercase_response_hex_is_accepted() -> None:
    srv = server()
    creds = parse_credentials(register(srv.challenge(T0)))
    value = str(replace(creds, response=creds.response.upper()))
    assert srv.verify(value, "REGISTER", T0, lookup).ok


@pytest.mark.parametrize(
    "value",
    [
        'Digest username="alice", realm="example.com", nonce="abc',  # unterminated quote
        'Digest username="alice", realm="example.com", realm="example.com", nonce="n", '
        'uri="sip:x", response="0"',  # duplicate
        'Digest username="alice", Username="bob", realm="r", nonce="n", uri="u", response="0"',
        'Digest username="alice", realm="example.com", nonce="n", uri="sip:x"',  # no response
        'Digest realm="example.com", nonce="n", uri="sip:x", response="0"',  # no username
        "\x00\xff\xfe garbage \x01\x7f",
        "Basic QWxhZGRpbjpvcGVuIHNlc2FtZQ==",
        "",
        "Digest",
        "Digest ",
        "Digest ,",
        "Digest username",
        'Digest username="alice" realm="example.com"',  # missing comma
        'Digest username=alice bob, realm="r", nonce="n", uri="u", response="0"',
        'Digestusername="a", realm="r", nonce="n", uri="u", response="0"',
        'Digest username="a\r\nVia: evil", realm="r", nonce="n", uri="u", response="0"',
        'Digest username="a\x07", realm="r", nonce="n", uri="u", response="0"',
        'Digest username="a\\\x07", realm="r", nonce="n", uri="u", response="0"',
        'Digest username="a", realm="r", nonce="n", uri="u", response="0", qop=auth',  # no nc
        'Digest username="a", realm="r", nonce="n", uri="u", response="0", qop=auth, '
        'nc=1, cnonce="c"',  # nc is 8 hex digits
        'Digest username="a", realm="r", nonce="n", uri="u", response="0", qop=auth, '
        'nc=0000000g, cnonce="c"',
        'Digest username*=ISO-8859-1\'\'%E9, realm="r", nonce="n", uri="u", response="0"',
        'Digest username="a", username*=UTF-8\'\'a, realm="r", nonce="n", uri="u", response="0"',
        'Digest username="' + "a" * 5000 + '", realm="r", nonce="n", uri="u", response="0"',
        "Digest " + ", ".join(f"p{i}=v" for i in range(40)) + ', username="a", realm="r", '
        'nonce="n", uri="u", response="0"',
    ],
)
def test_malformed_credentials_are_refused_with_400_and_verify_says_malformed(value: str) -> None:
    with pytest.raises(SipError) as err:
        parse_credentials(value)
    assert (err.value.status, err.value.reason) == (400, "Bad Authorization header")
    result = server().verify(value, "REGISTER", T0, lookup)
    assert (result.ok, result.username, result.reason) == (False, None, AuthFailure.MALFORMED)


def test_unknown_qop_value_is_malformed() -> None:
    srv = server()
    creds = parse_credentials(register(srv.challenge(T0)))
    value = str(replace(creds, qop="auth-conf"))
    assert srv.verify(value, "REGISTER", T0, lookup).reason is AuthFailure.MALFORMED


def test_server_rejects_weak_configuration() -> None:
    with pytest.raises(ValueError):
        DigestServer(b"short", REALM)
    with pytest.raises(ValueError):
        DigestServer(SECRET, REALM, algorithms=("SHA-1",))
    with pytest.raises(ValueError):
        DigestServer(SECRET, REALM, algorithms=("MD5-sess",))
    with pytest.raises(ValueError):
        DigestServer(SECRET, REALM, max_nonces=0)
    with pytest.raises(ValueError):
        server().challenge(-1.0)  # not wall-clock time: a bug upstream


# --- client ------------------------------------------------------------------------


def test_client_prefers_sha256_even_when_md5_is_listed_first() -> None:
    srv = server()
    md5_first = list(reversed(srv.challenge(T0)))
    assert parse_credentials(register(md5_first)).algorithm == "SHA-256"


def test_client_ignores_challenges_it_cannot_answer() -> None:
    offers = [
        'Digest realm="r", nonce="n1", algorithm=SHA-1, qop="auth"',
        'Digest realm="r", nonce="n2", algorithm=MD5, qop="auth-conf"',
        'Digest realm="r", nonce="n3", algorithm=MD5, qop="auth"',
    ]
    assert parse_credentials(register(offers)).nonce == "n3"
    with pytest.raises(ValueError):
        register(offers[:2])


def test_client_with_stored_ha1_uses_an_algorithm_it_has() -> None:
    srv = server()
    value = authorize(
        srv.challenge(T0),
        method="REGISTER",
        uri="sip:example.com",
        username="legacy",
        ha1=USERS["legacy"],
        cnonce="c",
    )
    assert parse_credentials(value).algorithm == "MD5"
    assert srv.verify(value, "REGISTER", T0, lookup).ok


def test_client_needs_exactly_one_of_password_and_ha1() -> None:
    challenges = server().challenge(T0)
    common = {"method": "REGISTER", "uri": "sip:x", "username": "alice", "cnonce": "c"}
    with pytest.raises(ValueError):
        authorize(challenges, **common)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        authorize(challenges, password="p", ha1=USERS["alice"], **common)  # type: ignore[arg-type]


def test_client_refuses_to_put_control_characters_in_a_header() -> None:
    with pytest.raises(ValueError):
        register(server().challenge(T0), user="alice\r\nContact: <sip:evil>")


def test_digest_client_reuses_the_nonce_with_rising_nc_until_stale() -> None:
    srv = server(nonce_ttl=60.0)
    phone = DigestClient("alice", password="secret", rand=counter_rand())
    assert phone.authorization("REGISTER", "sip:example.com") is None
    phone.challenged(srv.challenge(T0))
    for i in range(1, 4):
        value = phone.authorization("REGISTER", "sip:example.com")
        assert value is not None and parse_credentials(value).nc == i
        assert srv.verify(value, "REGISTER", T0 + i, lookup).ok
    value = phone.authorization("REGISTER", "sip:example.com")
    assert value is not None
    assert srv.verify(value, "REGISTER", T0 + 61, lookup).reason is AuthFailure.STALE_NONCE
    phone.challenged(srv.challenge(T0 + 61, stale=True))
    value = phone.authorization("REGISTER", "sip:example.com")
    assert value is not None and parse_credentials(value).nc == 1
    assert srv.verify(value, "REGISTER", T0 + 62, lookup).ok


# --- grammar and serialisation ----------------------------------------------------------


def test_grammar_accepts_case_tabs_token_values_escapes_and_empty_elements() -> None:
    value = (
        'dIgEsT\tusername = "al\\"ice\\\\" ,, realm=example.com,nonce="n",\r\n\t'
        'uri="sip:example.com", response=abc, qop="auth", nc=0000000A, cnonce=c,'
        ' Algorithm=sha-256, x-vendor="kept", '
    )
    creds = parse_credentials(value)
    assert creds.username == 'al"ice\\'
    assert (creds.realm, creds.response, creds.qop, creds.nc) == ("example.com", "abc", "auth", 10)
    assert creds.algorithm == "sha-256"  # kept as sent; verify compares case-insensitively
    assert creds.params == (("x-vendor", "kept"),)


def test_username_star_is_decoded() -> None:
    creds = parse_credentials(
        'Digest username*=UTF-8\'\'J%C3%A4s%C3%B8n%20Doe, realm="r", nonce="n", '
        'uri="u", response="0"'
    )
    assert creds.username == "Jäsøn Doe"


def test_credentials_serialise_with_rfc7616_quoting_rules() -> None:
    creds = Credentials(
        username='a"b',
        realm="r",
        nonce="n",
        uri="sip:r",
        response="ff",
        algorithm="SHA-256",
        cnonce="c",
        opaque="o",
        qop="auth",
        nc=10,
        params=(("x", "y"),),
    )
    assert str(creds) == (
        'Digest username="a\\"b", realm="r", nonce="n", uri="sip:r", response="ff", '
        'algorithm=SHA-256, cnonce="c", opaque="o", qop=auth, nc=0000000a, x="y"'
    )
    assert parse_credentials(str(creds)) == creds


def test_challenge_serialises_qop_as_a_quoted_list_and_algorithm_as_a_token() -> None:
    challenge = Challenge(
        realm="r", nonce="n", algorithm="MD5", qop=("auth", "auth-int"), opaque="o", stale=True
    )
    assert str(challenge) == (
        'Digest realm="r", nonce="n", opaque="o", algorithm=MD5, qop="auth, auth-int", stale=true'
    )
    assert parse_challenge(str(challenge)) == challenge


def test_challenge_parser_accepts_quoted_algorithm_and_uppercase_stale() -> None:
    challenge = parse_challenge(
        'Digest realm="r", nonce="n", algorithm="SHA-256", stale=TRUE, domain="sip:r"'
    )
    assert (challenge.algorithm, challenge.stale, challenge.qop) == ("SHA-256", True, ())
    assert challenge.params == (("domain", "sip:r"),)


@pytest.mark.parametrize(
    "value",
    [
        'Digest nonce="n"',
        'Digest realm="r"',
        'Digest realm="r", nonce="n", qop="auth, a b"',
        "Basic",
    ],
)
def test_malformed_challenges_raise_sip_error(value: str) -> None:
    with pytest.raises(SipError):
        parse_challenge(value)


# --- properties ---------------------------------------------------------------------


@settings(max_examples=400, deadline=None)
@given(st.text(max_size=300))
def test_parse_credentials_raises_only_sip_error_and_round_trips(text: str) -> None:
    for value in (text, "Digest " + text):
        try:
            creds = parse_credentials(value)
        except SipError as err:
            assert err.status == 400
            continue
        assert parse_credentials(str(creds)) == creds


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=300))
def test_verify_never_raises(text: str) -> None:
    result = server().verify("Digest " + text, "REGISTER", T0, lookup)
    assert not result.ok


_values = st.text(
    alphabet=st.characters(blacklist_categories=("Cc", "Cs"), blacklist_characters="\x7f"),
    max_size=40,
)
_tokens = st.from_regex(r"[A-Za-z0-9.!%*_+`'~-]{1,12}", fullmatch=True)


@settings(max_examples=300, deadline=None)
@given(
    st.builds(
        Credentials,
        username=_values,
        realm=_values,
        nonce=_values,
        uri=_values,
        response=_values,
        algorithm=st.none() | _tokens,
        cnonce=_values,
        opaque=st.none() | _values,
        qop=_tokens,
        nc=st.integers(0, 0xFFFFFFFF),
        userhash=st.booleans(),
        params=st.lists(st.tuples(_tokens.map(lambda t: "x-" + t.lower()), _values), max_size=3)
        .filter(lambda ps: len({k for k, _ in ps}) == len(ps))
        .map(tuple),
    )
)
def test_any_credentials_serialise_and_parse_back_equal(creds: Credentials) -> None:
    assert parse_credentials(str(creds)) == creds


_VALID_HEAD = 'Digest username="u", realm=r, nonce="n", uri="sip:r", response=0, '


@settings(max_examples=400, deadline=None)
@given(st.text(alphabet='ab=",\\ \t\r\n\x01é', max_size=60))
def test_near_miss_grammar_raises_only_sip_error_and_round_trips(tail: str) -> None:
    # Random text over the grammar's own punctuation after a valid head reaches the
    # quoting, escaping, folding and empty-element rules far more often than free text.
    try:
        creds = parse_credentials(_VALID_HEAD + tail)
    except SipError as err:
        assert (err.status, err.reason) == (400, "Bad Authorization header")
        return
    assert parse_credentials(str(creds)) == creds


def _quoted(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


_piece = st.tuples(
    st.sampled_from(["x-a", "X-B", "opaque", "cnonce", "Qop", "nc", "algorithm", "userhash"]),
    st.sampled_from(["=", " = ", "\t=\t", "=\r\n "]),
    st.from_regex(r"[a-z0-9]{1,8}", fullmatch=True)
    | st.text(alphabet='ab"\\ \té,=', max_size=8).map(_quoted),
    st.sampled_from([", ", ",", " ,, ", ",\r\n\t", "\r\n ,", ""]),
)


@settings(max_examples=400, deadline=None)
@given(st.lists(_piece, max_size=5, unique_by=lambda p: p[0].lower()))
def test_well_formed_lists_with_odd_spacing_and_escapes_round_trip(pieces: list) -> None:
    tail = "".join(name + eq + value + sep for name, eq, value, sep in pieces)
    try:
        creds = parse_credentials(_VALID_HEAD + tail)
    except SipError as err:
        assert (err.status, err.reason) == (400, "Bad Authorization header")
        return
    assert parse_credentials(str(creds)) == creds
