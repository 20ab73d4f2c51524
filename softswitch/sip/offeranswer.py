"""SDP offer/answer (RFC 3264) for a B2BUA that relays media through its own bearer.

Theory of operation
-------------------
The softswitch sits in the media path.  Every description it forwards is
rewritten to point at the bearer (``rewrite_for_relay``); when it answers an
offer itself (a conference, a transcoded leg) it builds the answer with
``create_answer``.  All functions return new descriptions and leave their
arguments untouched: the call keeps the phones' own SDP to compare later
offers against.

* **Codecs** match by encoding name (case-insensitive), clock rate and
  channels, never by payload-type number; the answer keeps the offerer's
  numbers, fmtp and order (RFC 3264 §6.1).  Auxiliary formats
  (telephone-event, CN, RED, RTX, FEC) ride along only with a real codec of the
  same clock rate, so an offer whose only common format is telephone-event has
  no common codec (RFC 4733 §2.1: events share the audio stream's clock).
* **Directions** are two bits, "I send" and "I receive".  The answer may only
  send what the offerer receives and receive what it sends (RFC 3264 §6.1),
  further limited by what the answerer wants.  A c=0.0.0.0 offer (RFC 2543
  hold, RFC 3264 §8.4) clears the offerer's receive bit.
* **Relaying** replaces every c= and m= port with the bearer's, moves a=rtcp
  to port+1 on the bearer (RFC 3605), and drops ICE (RFC 8839) because the
  bearer, not the phone, is now the media address.  A legacy c=0.0.0.0 hold is
  re-expressed as a=sendonly/a=inactive on the bearer's address: copying
  0.0.0.0 would stop the far end sending RTCP too, and rewriting it to the
  bearer without a direction would silently take the call off hold.
* **Origins.**  The B2BUA is the author of what it sends on each leg, so each
  leg has a ``LegOrigin``: one o= line whose sess-version goes up by one
  exactly when the description changes (RFC 3264 §8).

Refusals raise ``SdpError(488, ...)`` (RFC 3261 §21.4.26: the description
parsed, but nothing in it is acceptable).  Bad arguments from our own code
(an address that is not an IP literal, an unknown direction) raise
``ValueError``: they are bugs, not input.
"""

from __future__ import annotations

import functools
import ipaddress
from collections.abc import Mapping, Sequence
from dataclasses import replace

from softswitch.sip.sdp import (
    STATIC_PAYLOAD_TYPES,
    Codec,
    Connection,
    MediaDescription,
    Origin,
    SdpError,
    SessionDescription,
    Timing,
    parse_rtpmap,
    payload_type_of,
)

__all__ = [
    "AUXILIARY_CODECS",
    "LegOrigin",
    "check_answer",
    "codec_names",
    "create_answer",
    "filter_codecs",
    "free_payload_type",
    "intersect_codecs",
    "map_payload_types",
    "media_changed",
    "rewrite_for_relay",
]

AUXILIARY_CODECS = frozenset(("telephone-event", "cn", "red", "rtx", "ulpfec", "flexfec"))

_SEND, _RECV = 1, 2
_BITS = {"inactive": 0, "sendonly": _SEND, "recvonly": _RECV, "sendrecv": _SEND | _RECV}
_NAMES = {bits: name for name, bits in _BITS.items()}
_ICE = frozenset(("candidate", "end-of-candidates", "remote-candidates"))  # + "ice-*"

Ports = Sequence[int] | Mapping[int, int]
_Want = tuple[str, int | None, int | None]  # casefolded name, rate, channels (None: any)


# ---------------------------------------------------------------------------
# Codecs.


@functools.lru_cache(maxsize=256)  # a daemon has a handful of codec specs
def _want(spec: Codec | str) -> _Want:
    """'PCMU', 'opus/48000/2' or a Codec -> what to match; rate/channels omitted match any."""
    if isinstance(spec, Codec):
        return spec.name.casefold(), spec.rate, spec.channels
    parts = spec.split("/")
    if not 1 <= len(parts) <= 3 or not parts[0] or not all(p.isdigit() for p in parts[1:]):
        raise ValueError(f"bad codec spec {spec!r}: want name[/rate[/channels]]")
    rate = int(parts[1]) if len(parts) > 1 else None
    channels = int(parts[2]) if len(parts) > 2 else None
    return parts[0].casefold(), rate, channels


def _by_name(wants: Sequence[_Want]) -> dict[str, list[tuple[int | None, int | None]]]:
    table: dict[str, list[tuple[int | None, int | None]]] = {}
    for name, rate, channels in wants:
        table.setdefault(name, []).append((rate, channels))
    return table


def _intersect(
    offered: Sequence[Codec], wants: dict[str, list[tuple[int | None, int | None]]]
) -> list[Codec]:
    """Offered codecs matching ``wants`` (by casefolded name); aux ones need a real one."""
    chosen = []
    rates = set()
    for codec in offered:
        name = codec.name.casefold()
        for rate, channels in wants.get(name, ()):
            if (rate is None or rate == codec.rate) and (
                channels is None or channels == codec.channels
            ):
                chosen.append(codec)
                if name not in AUXILIARY_CODECS:
                    rates.add(codec.rate)
                break
    if not rates:
        return []  # only auxiliary formats in common: no codec (RFC 4733 §2.1)
    return [c for c in chosen if c.rate in rates or c.name.casefold() not in AUXILIARY_CODECS]


def intersect_codecs(offered: Sequence[Codec], supported: Sequence[Codec | str]) -> list[Codec]:
    """The offered codecs we support, in the offerer's order with its PT numbers (§6.1).

    ``supported`` holds Codecs (name, rate and channels must match; their pt is
    ignored) or specs like ``"PCMU"``, ``"G722/8000"``, ``"opus/48000/2"``.
    Returns [] if no real codec is common, even if telephone-event is.
    """
    return _intersect(offered, _by_name([_want(s) for s in supported]))


def codec_names(md: MediaDescription) -> list[str]:
    """The m= line's codecs as specs (``"PCMU/8000"``, ``"opus/48000/2"``), in order.

    The specs feed straight back into ``intersect_codecs``/``create_answer``.
    """
    return [c.encoding for c in md.codecs]


def map_payload_types(src: Sequence[Codec], dst: Sequence[Codec]) -> dict[int, int]:
    """For each codec of ``src``, the payload type ``dst`` uses for the same codec.

    What the bearer needs when two legs number the same codec differently
    (PT 101 telephone-event on one, 96 on the other); codecs ``dst`` lacks
    are left out, and the caller decides whether they need transcoding.
    """
    mapping: dict[int, int] = {}
    for codec in src:
        for other in dst:
            if codec.same_format(other):
                mapping.setdefault(codec.pt, other.pt)
                break
    return mapping


def free_payload_type(used: Sequence[Codec] | Sequence[int]) -> int | None:
    """The lowest dynamic payload type (96-127, RFC 3551 §3) not in ``used``, or None."""
    taken = {c.pt if isinstance(c, Codec) else c for c in used}
    return next((pt for pt in range(96, 128) if pt not in taken), None)


def filter_codecs(md: MediaDescription, keep: Sequence[Codec]) -> MediaDescription:
    """A copy of ``md`` offering exactly ``keep``, in that order.

    Formats, a=rtpmap, a=fmtp and a=rtcp-fb lines stay consistent: lines for
    payload types not kept are dropped; a kept codec's rtpmap and fmtp are
    rewritten if they differ from the Codec given (so a codec can be renumbered
    or added, e.g. PCMA offered for transcoding next to the caller's PCMU);
    rtpmap lines are added for codecs the section did not list.  A static type
    the section listed without rtpmap, and that still means the same codec,
    stays without one.  The copy still inherits session-level c= and direction
    from ``md``'s description.
    """
    pts = [c.pt for c in keep]
    if len(set(pts)) != len(pts) or not all(0 <= pt <= 127 for pt in pts):
        raise ValueError(f"payload types must be distinct and 0-127: {pts}")
    wanted = {c.pt: c for c in keep}
    out = md.copy()
    out.formats = [str(pt) for pt in pts]
    attrs: list[tuple[str, str | None]] = []
    has_rtpmap: set[int] = set()
    has_fmtp: set[int] = set()
    insert_at = None
    for key, value in md.attributes:
        if key in ("rtpmap", "fmtp", "rtcp-fb"):
            pt = payload_type_of(value)
            if pt is not None and pt not in wanted:
                continue  # a format we no longer offer
            if pt is not None and key == "rtpmap":
                codec = wanted[pt]
                if parse_rtpmap(value or "") != (pt, codec.name, codec.rate, codec.channels):
                    value = f"{pt} {codec.encoding}"
                has_rtpmap.add(pt)
            elif pt is not None and key == "fmtp":
                codec = wanted[pt]
                if codec.fmtp is None or pt in has_fmtp:
                    continue
                value = f"{pt} {codec.fmtp}"
                has_fmtp.add(pt)
            if key != "rtcp-fb":
                insert_at = len(attrs) + 1
        attrs.append((key, value))
    listed = set(md.formats)
    added: list[tuple[str, str | None]] = []
    for codec in keep:
        if codec.pt not in has_rtpmap and (
            str(codec.pt) not in listed
            or STATIC_PAYLOAD_TYPES.get(codec.pt) != (codec.name, codec.rate, codec.channels)
        ):
            added.append(("rtpmap", f"{codec.pt} {codec.encoding}"))
        if codec.fmtp is not None and codec.pt not in has_fmtp:
            added.append(("fmtp", f"{codec.pt} {codec.fmtp}"))
    at = insert_at if insert_at is not None else 0
    out.attributes = attrs[:at] + added + attrs[at:]
    return out


# ---------------------------------------------------------------------------
# Origins (RFC 3264 §8, RFC 4566 §5.2).


class LegOrigin:
    """The o= line the B2BUA owns on one call leg.

    ``stamp(sd)`` returns a copy of ``sd`` carrying this leg's origin.  The
    sess-version starts at ``version`` and goes up by one each time the
    description differs from the last one stamped; an unchanged description
    (a session refresh) keeps the same version, as RFC 3264 §8 requires.
    ``sess_id`` and ``version`` come from the caller (the daemon edge picks
    them from the clock or a random source; this class has neither).
    """

    __slots__ = ("_last", "address", "addrtype", "sess_id", "username", "version")

    def __init__(
        self, address: str, *, sess_id: int, version: int | None = None, username: str = "-"
    ) -> None:
        if sess_id < 0 or (version is not None and version < 0) or " " in username:
            raise ValueError("sess_id and version must be >= 0, username one token")
        self.address = address
        self.addrtype = _addrtype(address)
        self.sess_id = sess_id
        self.version = sess_id if version is None else version
        self.username = username or "-"
        self._last: str | None = None

    @property
    def origin(self) -> Origin:
        return Origin(
            self.username, str(self.sess_id), self.version, "IN", self.addrtype, self.address
        )

    def stamp(self, sd: SessionDescription) -> SessionDescription:
        """A copy of ``sd`` with this leg's o= line, the version bumped if it changed."""
        out = sd.copy()
        self._apply(out)
        return out

    def _apply(self, sd: SessionDescription) -> None:
        sd.origin = self.origin
        body = _without_origin(str(sd))
        if self._last is not None and body != self._last:
            self.version += 1
            sd.origin = self.origin
        self._last = body


def media_changed(previous: SessionDescription | None, current: SessionDescription) -> bool:
    """Whether ``current`` describes different media from ``previous`` (o= ignored).

    RFC 3264 §8 says an unchanged sess-version means an identical description,
    but a bumped version does not mean a change (refreshes bump it too) and
    some phones change the body without bumping it; comparing the rest is both
    cheaper than a bearer update and right in all three cases.
    """
    if previous is None:
        return True
    return replace(previous.origin, sess_version=0) != replace(
        current.origin, sess_version=0
    ) or _without_origin(str(previous)) != _without_origin(str(current))


def _without_origin(text: str) -> str:
    """A serialised description minus its o= line (always the second, RFC 4566 §5)."""
    start = text.find("\r\no=")
    end = text.find("\r\n", start + 2)
    return text[:start] + text[end:]


# ---------------------------------------------------------------------------
# Answers (RFC 3264 §6).


@functools.lru_cache(maxsize=256)  # a handful of bearer addresses, parsed once each
def _addrtype(address: str) -> str:
    """IP4 or IP6 for an IP literal (RFC 4566 §5.7); ValueError otherwise."""
    return "IP6" if ipaddress.ip_address(address).version == 6 else "IP4"


def _port_for(ports: Ports, index: int) -> int | None:
    if isinstance(ports, Mapping):
        port = ports.get(index)
    else:
        port = ports[index] if index < len(ports) else None
    if port is not None and not 0 <= port <= 65535:
        raise ValueError(f"port {port} for m-line {index} out of range")
    return port


def _offer_bits(md: MediaDescription) -> int:
    """What the offerer does, with c=0.0.0.0 meaning it cannot receive (§8.4)."""
    bits = _BITS[md.direction]
    conn = md.effective_connection
    if conn is not None and conn.is_null:
        bits &= ~_RECV
    return bits


def _mirror(bits: int) -> int:
    return (_SEND if bits & _RECV else 0) | (_RECV if bits & _SEND else 0)


def create_answer(
    offer: SessionDescription,
    *,
    address: str,
    ports: Ports,
    supported: Sequence[Codec | str],
    origin: LegOrigin,
    direction: str = "sendrecv",
    protos: Sequence[str] = ("RTP/AVP",),
    ptime: int | None = None,
) -> SessionDescription:
    """Answer ``offer`` with media on ``address`` and ``ports[i]`` for m-line i (§6).

    One m= per offered m=, same order and media type (§6).  A stream is
    rejected with port 0 and no attributes (§6) if the offer disabled it, no
    port was given for it, its transport is not in ``protos`` or no supported
    codec is offered.  ``direction`` is what we want to do; the answer's
    direction is that limited by the mirror of the offer's (§6.1).  Raises
    SdpError 488 if the offer had live streams and none was accepted.
    """
    if direction not in _BITS:
        raise ValueError(f"unknown direction {direction!r}")
    addrtype = _addrtype(address)
    wants = _by_name([_want(s) for s in supported])
    media: list[MediaDescription] = []
    live = accepted = 0
    why = ""
    for index, offered in enumerate(offer.media):
        port = _port_for(ports, index)
        live += offered.port != 0
        usable = offered.port != 0 and port and offered.proto in protos
        common = _intersect(offered.codecs, wants) if usable else []
        if not common:
            if offered.port != 0:
                why = why or (
                    f"m={offered.media[:20]}: "
                    + ("no port" if not port else "no common codec or transport")
                )
            media.append(
                MediaDescription(
                    media=offered.media, port=0, proto=offered.proto, formats=list(offered.formats)
                )
            )
            continue
        accepted += 1
        assert port is not None, "usable, so common, only with a port"
        attrs: list[tuple[str, str | None]] = []
        for codec in common:
            attrs.append(("rtpmap", f"{codec.pt} {codec.encoding}"))
            if codec.fmtp is not None:
                attrs.append(("fmtp", f"{codec.pt} {codec.fmtp}"))
        if ptime is not None:
            attrs.append(("ptime", str(ptime)))
        bits = _mirror(_offer_bits(offered)) & _BITS[direction]
        attrs.append((_NAMES[bits], None))
        media.append(
            MediaDescription(
                media=offered.media,
                port=port,
                proto=offered.proto,
                formats=[str(c.pt) for c in common],
                attributes=attrs,
            )
        )
    if live and not accepted:
        raise SdpError(488, f"Not Acceptable Here: {why}")
    answer = SessionDescription(
        origin=origin.origin,
        name="-",
        connection=Connection("IN", addrtype, address),
        timing=list(offer.timing) or [Timing()],  # §6: t= equals the offer's
        media=media,
    )
    origin._apply(answer)
    return answer


def check_answer(offer: SessionDescription, answer: SessionDescription) -> None:
    """Refuse an answer that does not line up with its offer (RFC 3264 §6).

    Same number of m= lines, same media types in the same order, and no
    stream the offer disabled (port 0) brought back to life.
    """
    if len(answer.media) != len(offer.media):
        raise SdpError(
            488, f"Bad SDP answer: {len(answer.media)} m= lines for {len(offer.media)} offered"
        )
    for index, (off, ans) in enumerate(zip(offer.media, answer.media, strict=True)):
        if off.media != ans.media:
            raise SdpError(488, f"Bad SDP answer: m-line {index} is not {off.media[:20]!r}")
        if off.port == 0 and ans.port != 0:
            raise SdpError(488, f"Bad SDP answer: m-line {index} was rejected in the offer")


# ---------------------------------------------------------------------------
# Relaying (what the B2BUA does to every description it forwards).


def rewrite_for_relay(
    sd: SessionDescription, address: str, ports: Ports, *, origin: LegOrigin
) -> SessionDescription:
    """``sd`` as forwarded on a leg whose media goes to the bearer at ``address``.

    Every c= becomes the bearer's (IP4/IP6 from the address); m-line i gets
    ``ports[i]`` (a stream already at port 0, or with no port given, is
    disabled with port 0); a=rtcp moves to port+1 (or stays equal to the RTP
    port when it was multiplexed); ICE lines go; a c=0.0.0.0 hold becomes an
    explicit direction; the o= line is the leg's own (``origin``).
    """
    addrtype = _addrtype(address)
    bearer = Connection("IN", addrtype, address)
    out = sd.copy()
    out.connection = bearer
    # a=rtcp is media-level (RFC 3605 §2.1); one at session level would leak the phone's address
    out.attributes = [(k, v) for k, v in out.attributes if not _is_ice(k) and k != "rtcp"]
    for index, (original, md) in enumerate(zip(sd.media, out.media, strict=True)):
        held_by_null = (conn := original.effective_connection) is not None and conn.is_null
        before = original.direction
        old_port = md.port
        new_port = _port_for(ports, index)
        md.port = 0 if old_port == 0 or not new_port else new_port
        md.port_count = None
        if md.connections:
            md.connections = [bearer]
        rtcp = md.rtcp
        attrs: list[tuple[str, str | None]] = []
        for key, value in md.attributes:
            if _is_ice(key):
                continue
            if key == "rtcp":
                if md.port == 0 or rtcp is None:
                    continue
                rtcp_port = md.port if rtcp[0] == old_port else md.port + 1
                value = f"{rtcp_port} IN {addrtype} {address}" if rtcp[1] else str(rtcp_port)
            attrs.append((key, value))
        md.attributes = attrs
        if held_by_null and md.port != 0:
            md.set_direction(_NAMES[_BITS[before] & ~_RECV])
    origin._apply(out)
    return out


def _is_ice(name: str) -> bool:
    return name in _ICE or name.startswith("ice-")
