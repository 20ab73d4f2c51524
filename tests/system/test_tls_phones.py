"""Real pjsua2 phones registered and calling over SIP over TLS (RFC 3261 §26).

The switch serves TLS with a self-signed certificate made as ``make run``
makes it; each phone trusts exactly that certificate (pjsua2's CaListFile,
verifyServer on), registers over TLS and is reached through its own TLS
connection.  The call is judged by ear (each side hears the other's tone)
and by its CDR; the certificate is renewed and reloaded in the middle of
the call, which carries on.  Another call is SRTP on both legs over TLS
(the configuration the issue asks a company to be able to run: signalling
and audio both encrypted).
"""

from __future__ import annotations

import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from bench.harness.control import free_sip_port
from softswitch.daemon.tls import make_self_signed
from tests.system.loopback_switch import (
    DOMAIN,
    USERS,
    E2eSwitch,
    assert_cdr,
    assert_two_way,
    hang_up,
    start_phones,
)

TALK = 2.5


class TlsSwitch(E2eSwitch):
    tls_port: int
    cert: Path

    @property
    def tls_registrar(self) -> str:
        return f"sip:{DOMAIN}:{self.tls_port};transport=tls"

    def tls_uri(self, user: str) -> str:
        return f"sip:{user}@{DOMAIN}:{self.tls_port};transport=tls"


@pytest.fixture(scope="module")
def tls_switch(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TlsSwitch]:
    tmp = tmp_path_factory.mktemp("tls-switch")
    cert, key = tmp / "certs" / "tls.crt", tmp / "certs" / "tls.key"
    cert.parent.mkdir()
    make_self_signed(cert, key, ["127.0.0.1", "localhost"])
    port = free_sip_port()
    sw = TlsSwitch(tmp, sip={"tls_port": port, "tls_certificate": str(cert), "tls_key": str(key)})
    sw.tls_port, sw.cert = port, cert
    sw.start()
    try:
        yield sw
    finally:
        problems = sw.stop()
    assert not problems, f"{problems}\n{sw.logs()}"


def test_two_phones_register_and_call_over_tls_and_hear_each_other(
    tls_switch: TlsSwitch, tmp_path: Path
) -> None:
    sw = tls_switch
    a, b = start_phones(
        [
            {"name": "alice", "tone_hz": USERS["alice"]["tone"], "tls_ca": str(sw.cert)},
            {
                "name": "bob",
                "tone_hz": USERS["bob"]["tone"],
                "tls_ca": str(sw.cert),
                "auto_answer": 0.3,
            },
        ],
        tmp_path,
    )
    try:
        for phone in (a, b):
            user = phone.name
            code = phone.register(
                sw.tls_registrar, user, USERS[user]["password"], DOMAIN, timeout=8
            )
            assert code == 200, f"{user}: {code} {phone.last_reason}\n{sw.logs()}"
        rows = {r["aor"].split("@")[0]: r for r in sw.ctl_json("registrations")}
        assert rows["alice"]["source"].startswith("tls:127.0.0.1:"), rows
        assert rows["bob"]["source"].startswith("tls:127.0.0.1:"), rows
        mark = sw.cdr_mark()
        ca = a.call(sw.tls_uri("bob"))
        info = a.wait_state("CONFIRMED", 8, call=ca)
        assert info["state"] == "CONFIRMED", f"{info}\n{sw.logs()}\n{a.log_tail()}"
        cb = b.incoming(2)
        a.pump(TALK / 2)
        # Mid-call certificate renewal and reload: the call and both phones'
        # TLS connections carry on (the BYE below travels on them).
        assert sw.control is not None
        make_self_signed(sw.cert, sw.cert.with_name("tls.key"), ["127.0.0.1", "renewed"])
        sw.control.send_signal(signal.SIGHUP)
        sw.control.wait_log("TLS certificate reloaded")
        a.pump(TALK / 2)
        sa, sb = a.stats(ca), b.stats(cb)
        hang_up(a, ca, b, cb)
        assert sa["codec"] == sb["codec"] == "PCMU", (sa, sb)
        assert_two_way(a, ca, b, cb)
        (row,) = sw.wait_cdrs(mark, caller="alice@", callee="bob@")
        assert_cdr(row, "answered", 200, answered=True)
        # The switch saw the whole call over TLS: no SIP from the phones on UDP/TCP.
        status = sw.control.admin("status") if sw.control else {}
        assert status.get("drop_tls_no_connection", 0) == 0, status
    finally:
        for p in (a, b):
            p.close()


def test_srtp_mandatory_phones_over_tls_hear_each_other(
    tls_switch: TlsSwitch, tmp_path: Path
) -> None:
    """alice and sam: SIP over TLS, SRTP mandatory (RTP/SAVP) on both phones;
    sam's user is mandatory, so both legs are SRTP with the bearer's keys."""
    sw = tls_switch
    a, b = start_phones(
        [
            {
                "name": "alice",
                "tone_hz": USERS["alice"]["tone"],
                "tls_ca": str(sw.cert),
                "srtp": "mandatory",
            },
            {
                "name": "sam",
                "tone_hz": USERS["sam"]["tone"],
                "tls_ca": str(sw.cert),
                "srtp": "mandatory",
                "auto_answer": 0.3,
            },
        ],
        tmp_path,
    )
    try:
        for phone in (a, b):
            user = phone.name
            code = phone.register(
                sw.tls_registrar, user, USERS[user]["password"], DOMAIN, timeout=8
            )
            assert code == 200, f"{user}: {code} {phone.last_reason}\n{sw.logs()}"
        mark = sw.cdr_mark()
        ca = a.call(sw.tls_uri("sam"))
        info = a.wait_state("CONFIRMED", 8, call=ca)
        assert info["state"] == "CONFIRMED", f"{info}\n{sw.logs()}\n{a.log_tail()}"
        cb = b.incoming(2)
        live = [c for c in sw.ctl_json("calls") if c["caller"].startswith("alice@")]
        a.pump(TALK)
        hang_up(a, ca, b, cb)
        assert len(live) == 1 and live[0]["srtp"] == ["AES_CM_128_HMAC_SHA1_80"] * 2, live
        assert_two_way(a, ca, b, cb)
        (row,) = sw.wait_cdrs(mark, caller="alice@", callee="sam@")
        assert_cdr(row, "answered", 200, answered=True)
        assert "inline:" not in sw.logs()
    finally:
        for p in (a, b):
            p.close()


def test_a_phone_that_does_not_trust_the_certificate_refuses_to_register(
    tls_switch: TlsSwitch, tmp_path: Path
) -> None:
    other = tmp_path / "other"
    other.mkdir()
    make_self_signed(other / "ca.crt", other / "ca.key", ["127.0.0.1"])
    (phone,) = start_phones(
        [{"name": "mallory", "tone_hz": 700, "tls_ca": str(other / "ca.crt")}], tmp_path
    )
    try:
        code = phone.register(
            tls_switch.tls_registrar, "alice", USERS["alice"]["password"], DOMAIN, timeout=8
        )
        # pjsip finishes the handshake, then checks the certificate and hangs
        # up: the phone gives up with 503, and nothing was registered.
        assert code == 503 and "verification" in phone.last_reason, phone.log_tail()
        assert tls_switch.ctl_json("registrations") == []
    finally:
        phone.close()
