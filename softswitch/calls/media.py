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
"""

from __future__ import annotations

from collections.abc import Sequence

from softswitch.protocol import Direction, LegSpec, PayloadType
from softswitch.sip.offeranswer import (
    AUXILIARY_CODECS,
    LegOrigin,
    create_answer,
    filter_codecs,
    free_payload_type,
    intersect_codecs,
    rewrite_for_relay,
)
from softswitch.sip.sdp import Codec, MediaDescription, SdpError, SessionDescription

__all__ = [
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
) -> SessionDescription:
    """``sd`` as offered on the other leg: ``codecs`` only, media on the bearer."""
    out = sd.copy()
    out.media[index] = out.adopt(filter_codecs(sd.media[index], codecs))
    return rewrite_for_relay(out, address, {index: port}, origin=origin)


def answer_for(
    offer: SessionDescription,
    codecs: Sequence[Codec],
    address: str,
    port: int,
    origin: LegOrigin,
    direction: str,
) -> SessionDescription:
    """Our answer to a phone's ``offer``: ``codecs`` (its numbering), media on the bearer."""
    index = audio_index(offer)
    return create_answer(
        offer,
        address=address,
        ports={index: port},
        supported=list(codecs),
        origin=origin,
        direction=direction,
        protos=(offer.media[index].proto,),
    )


def answered_codecs(answer: SessionDescription, index: int) -> tuple[Codec, ...]:
    """The codecs of an answer's m-line ``index``; 488 when it refused the stream."""
    if index >= len(answer.media) or answer.media[index].port == 0:
        raise SdpError(488, "Not Acceptable Here: audio stream refused")
    codecs = tuple(answer.media[index].codecs)
    if real_codec(codecs) is None:
        raise SdpError(488, "Not Acceptable Here: no codec in the answer")
    return codecs
