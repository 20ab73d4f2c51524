"""Media decisions of a call through a bearer: SDP in, LegSpecs and SDP out.

Theory of operation
-------------------
Both phones talk to the bearer, never to each other, so every description the
switch forwards is rewritten to the bearer's address (``offer_for`` /
``answer_for``) and every description it receives becomes a ``LegSpec`` the
bearer is told (``leg_spec``).  Codecs are the configured ones
(``calls.codecs``) that the caller offered, in the caller's order and
payload-type numbers (RFC 3264 §6.1).  The offer to the callee adds the G.711
twin of a G.711 codec the caller offered alone (PCMA beside a lone PCMU and
the other way round), so a callee that only speaks the other law still gets a
call and the bearer transcodes; telephone-event (RFC 4733) rides along.

Each leg settles on one codec: the callee's is the first real codec of its
answer (RFC 3264 §6.1: the answerer's preference), the caller's is the same
codec when the caller offered it, else the caller's first: the bearer
transcodes when the two differ (``needs_transcoding``).  Only the first
usable audio m-line is carried; other streams are refused with port 0.

Directions are the phone's own (RFC 3264 §5.1, "as seen from the phone of
the leg"), with a legacy c=0.0.0.0 hold (RFC 3264 §8.4) read as "not
receiving".  Errors are ``SdpError``: 400 for a body that does not parse, 488
for one with nothing we can use.

SRTP (SDES, RFC 4568; the policy is ``srtp_policy``).  Each leg's crypto is
its own (``Sdes``): the phone's key from its a=crypto, the bearer's key for
that leg from ALLOCATED; the bearer decrypts and re-encrypts, so a phone's
a=crypto is never forwarded to the other phone (``offer_for`` drops every
a=crypto line it copies).  Per user or globally, srtp is:

* ``optional`` (the default): a phone that offers usable crypto (RTP/SAVP,
  or a best-effort a=crypto in RTP/AVP) gets SRTP, one that does not gets
  RTP; calls *to* the user are offered plain RTP/AVP, because a phone's
  acceptance of a=crypto in RTP/AVP varies and RTP/SAVP is refused outright
  by phones without SRTP -- a user who wants SRTP both ways says mandatory;
* ``mandatory``: the user's leg is SRTP: an offer without usable crypto
  gets 488, calls to the user are offered RTP/SAVP (AES_CM_128_HMAC_SHA1_80),
  and an answer without matching crypto fails the call;
* ``off``: never SRTP; an RTP/SAVP offer gets 488, best-effort crypto in
  RTP/AVP is ignored (answered plain, as RFC 4568 §7.1.1 allows).

Whatever the policy, an RTP/SAVP offer with no usable crypto gets 488 at
once: answering it could only give the phone an SDP it cannot use.
A re-INVITE keeps a leg's SRTP state and suite (the phone may re-key).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from softswitch.protocol import Direction, LegSpec, PayloadType, SrtpKey, SrtpSuite
from softswitch.sip.offeranswer import (
    AUXILIARY_CODECS,
    LegOrigin,
    create_answer,
    filter_codecs,
    free_payload_type,
    intersect_codecs,
    rewrite_for_relay,
)
from softswitch.sip.sdes import Crypto, format_crypto, is_secure_proto, parse_crypto
from softswitch.sip.sdp import Codec, MediaDescription, SdpError, SessionDescription

__all__ = [
    "SRTP_POLICIES",
    "Sdes",
    "answer_for",
    "audio_index",
    "callee_codecs",
    "caller_codec",
    "direction_of",
    "leg_spec",
    "offer_for",
    "parse_sdp",
    "payload_types",
    "real_codec",
    "telephone_event",
]

#: G.711's two laws (RFC 3551 §4.5.14), static payload types: the pair the bearer transcodes.
_TWINS = {"pcmu": Codec(8, "PCMA", 8000), "pcma": Codec(0, "PCMU", 8000)}
_DIRECTIONS = {
    "sendrecv": Direction.SENDRECV,
    "sendonly": Direction.SENDONLY,
    "recvonly": Direction.RECVONLY,
    "inactive": Direction.INACTIVE,
}
_NO_RECV = {"sendrecv": "sendonly", "recvonly": "inactive"}
_MAX_PAYLOAD_TYPES = 32  # LegSpec.pack's limit


def parse_sdp(body: bytes, content_type: str | None, what: str = "offer") -> SessionDescription:
    """The SDP of a message; 488 when there is none (a late offer is not supported)."""
    if not body:
        raise SdpError(488, f"Not Acceptable Here: SDP {what} required")
    if content_type not in (None, "application/sdp"):
        raise SdpError(488, f"Not Acceptable Here: {content_type} is not SDP")
    return SessionDescription.parse(body)


def audio_index(sd: SessionDescription) -> int:
    """The first live RTP audio m-line (RFC 4566 §5.14), or 488."""
    for index, md in enumerate(sd.media):
        if md.media == "audio" and md.port != 0 and "RTP/" in md.proto.upper():
            return index
    raise SdpError(488, "Not Acceptable Here: no audio stream")


def is_aux(codec: Codec) -> bool:
    return codec.name.casefold() in AUXILIARY_CODECS


def real_codec(codecs: Sequence[Codec]) -> Codec | None:
    """The first codec that carries audio (not telephone-event, CN ...)."""
    return next((c for c in codecs if not is_aux(c)), None)


def telephone_event(codecs: Sequence[Codec]) -> Codec | None:
    return next((c for c in codecs if c.name.casefold() == "telephone-event"), None)


def usable_codecs(md: MediaDescription, supported: Sequence[str]) -> tuple[Codec, ...]:
    """The offered codecs we support, offerer's order and numbers; 488 if none is real."""
    codecs = intersect_codecs(md.codecs, supported)
    if not codecs:
        raise SdpError(488, "Not Acceptable Here: no common codec")
    return tuple(codecs)


def callee_codecs(caller: Sequence[Codec], supported: Sequence[str]) -> list[Codec]:
    """What to offer the callee: the caller's codecs plus the G.711 twin of a lone G.711."""
    names = {c.name.casefold() for c in caller}
    allowed = {s.partition("/")[0].casefold() for s in supported}
    real = [c for c in caller if not is_aux(c)]
    aux = [c for c in caller if is_aux(c)]
    used = [c.pt for c in caller]
    for codec in list(real):
        twin = _TWINS.get(codec.name.casefold())
        if twin is None or twin.name.casefold() in names or twin.name.casefold() not in allowed:
            continue
        if twin.pt in used:  # a static number taken by a dynamic mapping: renumber
            pt = free_payload_type(used)
            if pt is None:
                continue
            twin = Codec(pt, twin.name, twin.rate)
        real.append(twin)
        used.append(twin.pt)
        names.add(twin.name.casefold())
    return real + aux


def caller_codec(caller: Sequence[Codec], callee_selected: Codec) -> Codec:
    """The caller's codec: the callee's when the caller offered it (no transcoding)."""
    for codec in caller:
        if codec.same_format(callee_selected):
            return codec
    fallback = real_codec(caller)
    assert fallback is not None  # usable_codecs guaranteed one
    return fallback


def direction_of(md: MediaDescription) -> str:
    """The phone's direction, c=0.0.0.0 (RFC 3264 §8.4) meaning it does not receive."""
    direction = md.direction
    conn = md.effective_connection
    if conn is not None and conn.is_null:
        direction = _NO_RECV.get(direction, direction)
    return direction


def leg_spec(
    md: MediaDescription, codecs: Sequence[Codec], selected: Codec | None, direction: str
) -> LegSpec:
    """What the bearer needs for one leg, from the phone's m-line."""
    conn = md.effective_connection
    address = "0.0.0.0" if conn is None or conn.is_null else conn.host
    te = telephone_event(codecs)
    return LegSpec(
        address=address,
        port=md.port,
        payload_types=payload_types(codecs),
        selected_pt=None if selected is None else selected.pt,
        dtmf_pt=None if te is None else te.pt,
        direction=_DIRECTIONS[direction],
        ptime=min(md.ptime or 20, 255),
    )


def payload_types(codecs: Sequence[Codec]) -> tuple[PayloadType, ...]:
    """The bearer's rtpmap list for ``codecs`` (LegSpec carries at most 32)."""
    return tuple(PayloadType(c.pt, c.name, c.rate, c.channels) for c in codecs[:_MAX_PAYLOAD_TYPES])


def offer_for(
    sd: SessionDescription,
    index: int,
    codecs: Sequence[Codec],
    address: str,
    port: int,
    origin: LegOrigin,
    sdes: Sdes | None = None,
) -> SessionDescription:
    """``sd`` as offered on the other leg: ``codecs`` only, media on the bearer.

    Every a=crypto of ``sd`` goes (they are the other phone's keys); with
    ``sdes`` the audio m-line is RTP/SAVP with the bearer's key for this leg,
    without it plain RTP/AVP.
    """
    out = sd.copy()
    out.media[index] = out.adopt(filter_codecs(sd.media[index], codecs))
    out = rewrite_for_relay(out, address, {index: port}, origin=origin)
    for md in out.media:
        md.attributes = [(k, v) for k, v in md.attributes if k != "crypto"]
    md = out.media[index]
    if sdes is None:
        md.proto = md.proto.replace("SAVP", "AVP")
    else:
        if not is_secure_proto(md.proto):
            md.proto = md.proto.replace("AVP", "SAVP")
        md.attributes.append(("crypto", sdes.line()))
    return out


def answer_for(
    offer: SessionDescription,
    codecs: Sequence[Codec],
    address: str,
    port: int,
    origin: LegOrigin,
    direction: str,
    sdes: Sdes | None = None,
) -> SessionDescription:
    """Our answer to a phone's ``offer``: ``codecs`` (its numbering), media on the bearer,
    and with ``sdes`` the a=crypto of the bearer's key under the tag the phone's key had."""
    index = audio_index(offer)
    answer = create_answer(
        offer,
        address=address,
        ports={index: port},
        supported=list(codecs),
        origin=origin,
        direction=direction,
        protos=(offer.media[index].proto,),
    )
    if sdes is not None:
        answer.media[index].attributes.append(("crypto", sdes.line()))
    return answer


def answered_codecs(answer: SessionDescription, index: int) -> tuple[Codec, ...]:
    """The codecs of an answer's m-line ``index``; 488 when it refused the stream."""
    if index >= len(answer.media) or answer.media[index].port == 0:
        raise SdpError(488, "Not Acceptable Here: audio stream refused")
    codecs = tuple(answer.media[index].codecs)
    if real_codec(codecs) is None:
        raise SdpError(488, "Not Acceptable Here: no codec in the answer")
    return codecs


# ---------------------------------------------------------------------- SRTP (SDES)

SRTP_POLICIES = ("optional", "mandatory", "off")
_OFFERED_SUITE = SrtpSuite.AES_CM_128_HMAC_SHA1_80
"""What the switch offers a phone: the suite every SDES phone implements."""


@dataclass(slots=True)
class Sdes:
    """One leg's SRTP: the suite and a=crypto tag agreed with the phone, the
    phone's key (``remote``) and the bearer's (``local``, from ALLOCATED).
    Neither key is in the repr."""

    suite: SrtpSuite
    tag: int = 1
    remote: SrtpKey | None = field(default=None, repr=False)
    local: SrtpKey | None = field(default=None, repr=False)

    def line(self) -> str:
        """Our a=crypto value for this leg (the bearer's key)."""
        assert self.local is not None, "the bearer's key arrives with ALLOCATED"
        return format_crypto(self.tag, self.suite.name, self.local.key)

    def spec(self, spec: LegSpec) -> LegSpec:
        """``spec`` with this leg's SRTP TLVs for the bearer."""
        return spec.with_srtp(self.remote, self.suite)


def take_keys(legs: Sequence[Any], keys: Sequence[SrtpKey | None]) -> bool:
    """Give each SRTP leg (a calls.state.Leg) the bearer's key from ALLOCATED;
    False when one is missing (a bearer without SRTP ignores the TLVs)."""
    for n, leg in enumerate(legs):
        sdes = leg.sdes
        if sdes is not None:
            key = keys[n] if n < len(keys) else None
            if key is None or key.suite is not sdes.suite:
                return False
            sdes.local = key
    return True


def with_sdes(spec: LegSpec, sdes: Sdes | None) -> LegSpec:
    return spec if sdes is None else sdes.spec(spec)


def srtp_policy(user_policy: str, default: str) -> str:
    """The policy of a user: its own, else the configured default ("" = inherit)."""
    return user_policy if user_policy in SRTP_POLICIES else default


def _cryptos(md: MediaDescription) -> list[Crypto]:
    found = []
    for key, value in md.attributes:
        if key == "crypto" and value is not None:
            crypto = parse_crypto(value)
            if crypto is not None:
                found.append(crypto)
    return found


def _sdes_of(crypto: Crypto) -> Sdes:
    suite = SrtpSuite[crypto.suite]
    return Sdes(suite, crypto.tag, SrtpKey(suite, crypto.key))


def offer_sdes(md: MediaDescription, policy: str) -> Sdes | None:
    """The SRTP of a leg from the phone's offer under its policy; 488 when impossible."""
    cryptos = _cryptos(md)
    secure = is_secure_proto(md.proto)
    if secure and not cryptos:
        raise SdpError(488, "Not Acceptable Here: no supported SRTP crypto suite")
    if policy == "off":
        if secure:
            raise SdpError(488, "Not Acceptable Here: SRTP is off for this user")
        return None
    if not cryptos:
        if policy == "mandatory":
            raise SdpError(488, "Not Acceptable Here: SRTP required")
        return None
    return _sdes_of(cryptos[0])  # the offerer's preference (RFC 4568 §7.1.2)


def callee_offer_sdes(policy: str) -> Sdes | None:
    """What the switch offers a user (see the module docstring): SRTP only if mandatory."""
    return Sdes(_OFFERED_SUITE) if policy == "mandatory" else None


def answer_sdes(md: MediaDescription, offered: Sdes | None) -> Sdes | None:
    """The SRTP of a leg from the phone's answer to our offer; 488 if it has no
    crypto matching ours (tag and suite, RFC 4568 §7.1.3)."""
    if offered is None:
        return None
    for crypto in _cryptos(md):
        if crypto.tag == offered.tag and crypto.suite == offered.suite.name:
            sdes = _sdes_of(crypto)
            sdes.local = offered.local
            return sdes
    raise SdpError(488, "Not Acceptable Here: the answer has no matching SRTP crypto")


def reoffer_sdes(md: MediaDescription, current: Sdes | None) -> Sdes | None:
    """A re-INVITE's offer on a leg: its SRTP stays as it is (the phone may re-key)."""
    cryptos = _cryptos(md)
    if current is None:
        if is_secure_proto(md.proto):
            raise SdpError(488, "Not Acceptable Here: SRTP cannot start in a re-INVITE")
        return None
    for crypto in cryptos:
        if crypto.suite == current.suite.name:
            sdes = _sdes_of(crypto)
            sdes.local = current.local
            return sdes
    raise SdpError(488, "Not Acceptable Here: a re-INVITE must keep the SRTP suite")
