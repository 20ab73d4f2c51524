"""SDES a=crypto lines (RFC 4568 §9.1): what is usable, and redaction for logs."""

from __future__ import annotations

import base64

import pytest

from softswitch.sip.sdes import format_crypto, parse_crypto, redact, usable_crypto

KEY = bytes(range(30))
B64 = base64.b64encode(KEY).decode()


@pytest.mark.parametrize(
    "value",
    [
        f"1 AES_CM_128_HMAC_SHA1_80 inline:{B64}",
        f"7 AES_CM_128_HMAC_SHA1_32 inline:{B64}|2^31",
        f"1 AES_CM_128_HMAC_SHA1_80 inline:{B64.rstrip('=')}",  # unpadded base64
    ],
)
def test_usable_lines(value: str) -> None:
    crypto = parse_crypto(value)
    assert crypto is not None and crypto.key == KEY
    assert B64 not in repr(crypto)


@pytest.mark.parametrize(
    "value",
    [
        f"1 F8_128_HMAC_SHA1_80 inline:{B64}",  # a suite the bearer lacks
        f"1 AES_256_CM_HMAC_SHA1_80 inline:{B64}",
        f"1 AES_CM_128_HMAC_SHA1_80 inline:{B64}|2^31|1:4",  # MKI
        f"1 AES_CM_128_HMAC_SHA1_80 inline:{B64}|2^20",  # a lifetime shorter than a call may be
        f"1 AES_CM_128_HMAC_SHA1_80 inline:{B64};inline:{B64}",  # two keys
        f"1 AES_CM_128_HMAC_SHA1_80 inline:{B64} UNENCRYPTED_SRTP",
        "1 AES_CM_128_HMAC_SHA1_80 inline:AAAA",  # short key
        "1 AES_CM_128_HMAC_SHA1_80 inline:!!!!",
        "x AES_CM_128_HMAC_SHA1_80 inline:" + B64,
        "1 AES_CM_128_HMAC_SHA1_80",
        "",
    ],
)
def test_unusable_lines_are_skipped(value: str) -> None:
    assert parse_crypto(value) is None


def test_the_first_usable_line_wins_and_formatting_round_trips() -> None:
    line = format_crypto(2, "AES_CM_128_HMAC_SHA1_32", KEY)
    got = usable_crypto([None, "1 F8_128_HMAC_SHA1_80 inline:" + B64, line])
    assert got is not None and (got.tag, got.suite, got.key) == (2, "AES_CM_128_HMAC_SHA1_32", KEY)


def test_redact_removes_every_key() -> None:
    text = f"m=audio 4000 RTP/SAVP 0\r\na=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:{B64}|2^31\r\n"
    out = redact(text.encode()).decode()
    assert B64 not in out and "inline:<redacted>|2^31" in out
    assert redact(b"INVITE sip:bob SIP/2.0\r\n") == b"INVITE sip:bob SIP/2.0\r\n"
