"""sips: Request-URIs in the core (RFC 3261 §26.2.2, RFC 5630): served when
the request came over TLS, refused with 416 when it came over UDP or TCP."""

from __future__ import annotations

import pytest

from softswitch.sip.message import Response, parse
from softswitch.sip.transaction import Peer
from softswitch.switch import CORE_ANSWERS, CoreRefusal
from tests.unit.control.phones import DOMAIN, NOW
from tests.unit.control.test_core import make_switch


def _options(transport: str, scheme: str) -> bytes:
    return (
        f"OPTIONS {scheme}:{DOMAIN} SIP/2.0\r\n"
        f"Via: SIP/2.0/{transport.upper()} 198.51.100.9:5999;branch=z9hG4bKsips\r\n"
        f"From: <{scheme}:alice@{DOMAIN}>;tag=1\r\nTo: <{scheme}:{DOMAIN}>\r\n"
        "Call-ID: sips-test\r\nCSeq: 1 OPTIONS\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n"
    ).encode()


@pytest.mark.parametrize("transport", ["udp", "tcp", "tls"])
@pytest.mark.parametrize("scheme", ["sip", "sips"])
def test_sips_needs_tls(transport: str, scheme: str) -> None:
    switch = make_switch(tls_certificate="/nonexistent/but/configured.crt")
    switch.receive_sip(_options(transport, scheme), Peer(transport, "198.51.100.9", 5999), NOW)
    ((data, peer),) = switch.sip_datagrams_to_send()
    response = parse(data)
    assert isinstance(response, Response) and peer.transport == transport
    if scheme == "sips" and transport != "tls":
        assert (response.status, response.reason) == CORE_ANSWERS[CoreRefusal.SIPS_WITHOUT_TLS]
        assert switch.counters["refused_sips-without-tls"] == 1
    else:
        assert response.status == 200
