"""Robustness: whatever the bytes, only SipError escapes, and what parses round-trips.

A deterministic mutation fuzzer (fixed seed, so a failure reproduces) runs
100,000 mutants of the torture corpus through ``parse`` in both modes, through
every parsed property, ``bytes()``, a re-parse, ``make_response`` and the
``StreamFramer``.  A small hypothesis test then checks that structured
messages built by code survive serialise → parse unchanged.
"""

from __future__ import annotations

import random
import re
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from softswitch.sip import headers as headers_module
from softswitch.sip import uri as uri_module
from softswitch.sip.errors import SipError
from softswitch.sip.framing import StreamFramer
from softswitch.sip.headers import (
    Address,
    Via,
    parse_address,
    parse_contacts,
    parse_via,
    parse_vias,
)
from softswitch.sip.message import Request, Response, make_response, parse
from softswitch.sip.uri import SipUri, parse_uri

DATA = Path(__file__).resolve().parents[2] / "data" / "sip-torture"
CORPUS = sorted(
    p.read_bytes()
    for p in DATA.rglob("*")
    if p.is_file() and p.suffix != ".tsv" and p.suffix != ".md"
)
CORPUS = [c for c in CORPUS if not c.startswith(b"# ")]

MUTANTS = 100_000
SEED = 4475

INTERESTING = [
    b":",
    b";",
    b",",
    b"<",
    b">",
    b'"',
    b"\\",
    b"%",
    b"%0",
    b"%00",
    b"\r\n",
    b"\r\n ",
    b"\n",
    b"\r",
    b"\x00",
    b"\xff",
    b"\xc3",
    b"[",
    b"]",
    b"[::1]",
    b"@",
    b"=",
    b" ",
    b"\t",
    b"*",
    b"?",
    b"&",
    b"9" * 30,
    b"0" * 5000,
    b"-1",
    b"4294967296",
    b"65536",
    b"SIP/2.0",
    b"sip:",
    b"sips:",
    b"tel:",
    b";tag=",
    b";branch=",
    b";rport",
    b";received=",
    b"\r\n\r\n",
    b"Content-Length: 5\r\n",
    b"l: -1\r\n",
    b"Via: ",
    b"v: SIP/2.0/UDP [",
    b"Contact: *\r\n",
    b"To: ",
    b"CSeq: 1 ",
]
NAMES = [
    b"Via",
    b"v",
    b"To",
    b"t",
    b"From",
    b"f",
    b"Call-ID",
    b"i",
    b"CSeq",
    b"Contact",
    b"m",
    b"Max-Forwards",
    b"Content-Length",
    b"l",
    b"Route",
    b"Record-Route",
    b"Expires",
    b"c",
]


def mutate(rng: random.Random, data: bytes) -> bytes:
    """One to three random edits of ``data``."""
    for _ in range(rng.randint(1, 3)):
        n = len(data)
        op = rng.randrange(11)
        pos = rng.randint(0, n)
        if op == 0 and n:  # flip a byte
            pos = rng.randrange(n)
            data = data[:pos] + bytes([rng.randrange(256)]) + data[pos + 1 :]
        elif op == 1:  # insert something interesting
            data = data[:pos] + rng.choice(INTERESTING) + data[pos:]
        elif op == 2:  # delete a range
            data = data[:pos] + data[pos + rng.randint(1, 20) :]
        elif op == 3:  # truncate
            data = data[:pos]
        elif op in (4, 5, 6):  # duplicate, swap or drop lines
            lines = data.split(b"\r\n")
            i, j = rng.randrange(len(lines)), rng.randrange(len(lines))
            if op == 4:
                lines.insert(j, lines[i])
            elif op == 5:
                lines[i], lines[j] = lines[j], lines[i]
            else:
                del lines[i]
            data = b"\r\n".join(lines)
        elif op == 7:  # splice two messages
            other = rng.choice(CORPUS)
            data = data[:pos] + other[rng.randint(0, len(other)) :]
        elif op == 8:  # a digit run becomes huge, negative or zero
            digits = [i for i in range(n) if 48 <= data[i] <= 57]
            if digits:
                i = rng.choice(digits)
                data = data[:i] + rng.choice([b"9" * 25, b"-", b"0" * 12, b"4294967296"]) + data[i:]
        elif op == 9:  # a random value for a header
            lines = data.split(b"\r\n")
            i = rng.randrange(len(lines))
            junk = bytes(
                rng.choice(b" ;,<>\"'@:=%[]?&*abc019\\\t") for _ in range(rng.randint(0, 30))
            )
            lines[i] = rng.choice(NAMES) + b":" + junk
            data = b"\r\n".join(lines)
        else:  # rename a header
            lines = data.split(b"\r\n")
            i = rng.randrange(len(lines))
            _, _, value = lines[i].partition(b":")
            lines[i] = rng.choice(NAMES) + b":" + value
            data = b"\r\n".join(lines)
    return data


def exercise(m: Request | Response) -> None:
    """Touch everything a caller might; only SipError may come out."""
    for attr in (
        "vias",
        "via",
        "from_",
        "to",
        "call_id",
        "cseq",
        "cseq_method",
        "max_forwards",
        "contacts",
        "contact_star",
        "routes",
        "record_routes",
        "expires",
        "content_type",
    ):
        try:
            getattr(m, attr)
        except SipError:
            pass
    for name in ("Allow", "Authorization", "Supported", "x-unknown", "v"):
        m.get(name)
        m.get_all(name)
    try:
        for v in m.vias:
            _ = (v.branch, v.received, v.rport, str(v))
        for a in (m.to, m.from_, *m.contacts):
            _ = (a.tag, a.expires, str(a))
    except SipError:
        pass
    if isinstance(m, Request):
        try:
            bytes(make_response(m, 400, to_tag="x"))
        except SipError:
            pass


def check(data: bytes) -> None:
    for stream in (False, True):
        try:
            m = parse(data, stream=stream)
        except SipError:
            continue
        exercise(m)
        again = bytes(m)
        try:
            m2 = parse(again, stream=True)
        except SipError as e:  # what parsed once must serialise to something parseable
            raise AssertionError(f"re-parse failed: {e}\n{data!r}\n{again!r}") from e
        exercise(m2)


def test_mutation_fuzzer_only_sip_errors_escape() -> None:
    rng = random.Random(SEED)
    started = time.process_time()
    parsed = 0
    for i in range(MUTANTS):
        data = mutate(rng, rng.choice(CORPUS))
        try:
            check(data)
            if i % 10 == 0:  # the framer, in random chunks
                framer = StreamFramer()
                pos = 0
                while pos < len(data):
                    step = rng.randint(1, 200)
                    for frame in framer.feed(data[pos : pos + step]):
                        try:
                            parse(frame, stream=True)
                            parsed += 1
                        except SipError:
                            pass
                    pos += step
        except SipError:
            pass
        except Exception as e:
            raise AssertionError(f"mutant {i} raised {e!r}: {data!r}") from e
    elapsed = time.process_time() - started
    assert parsed > 0
    # About 10 s of CPU on the 2-vCPU development machine; the margin is for
    # slower CI hosts, the bound for a parser that got pathologically slow.
    assert elapsed < 30, f"fuzzing took {elapsed:.1f} s of CPU"


def test_every_corpus_message_and_prefix_is_handled() -> None:
    """Every truncation of every corpus message: the classic framing edge."""
    for data in CORPUS:
        for cut in range(0, len(data), 3):
            check(data[:cut])


# -- structured round trip (hypothesis) -----------------------------------

TOKEN = st.text(
    alphabet="abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-.!%*_+`'~",
    min_size=1,
    max_size=12,
)
LABEL = st.from_regex(r"[a-z][a-z0-9]{0,8}", fullmatch=True)
HOST = st.one_of(
    st.lists(LABEL, min_size=1, max_size=3).map(".".join),
    st.tuples(*[st.integers(0, 255)] * 4).map(lambda t: ".".join(map(str, t))),
    st.sampled_from(["[2001:db8::1]", "[::1]", "[::ffff:192.0.2.1]"]),
)
USER = st.text(
    alphabet="abcdefghijklmnopqrstuvwxyz0123456789-_.!~*'()&=+$,;?/", min_size=1, max_size=12
)
PARAMS = st.dictionaries(
    st.from_regex(r"[a-z][a-z0-9-]{0,6}", fullmatch=True),
    st.one_of(st.none(), st.from_regex(r"[A-Za-z0-9.\-]{1,8}", fullmatch=True)),
    max_size=3,
)
URI = st.builds(
    SipUri,
    scheme=st.sampled_from(["sip", "sips"]),
    user=st.one_of(st.none(), USER),
    host=HOST,
    port=st.one_of(st.none(), st.integers(1, 65535)),
    params=PARAMS,
)
DISPLAY = st.one_of(
    st.none(),
    st.text(st.characters(blacklist_categories=["Cs"], blacklist_characters="\r\n"), max_size=20),
)
ADDRESS = st.builds(
    Address,
    uri=URI,
    display=DISPLAY,
    params=PARAMS.map(lambda p: {k: v for k, v in p.items() if k != "tag"}),
)
VIA = st.builds(
    Via,
    transport=st.sampled_from(["UDP", "TCP", "TLS", "SCTP", "WS"]),
    host=HOST,
    port=st.one_of(st.none(), st.integers(1, 65535)),
    params=st.fixed_dictionaries({"branch": TOKEN.map(lambda t: "z9hG4bK" + t)}),
)


@settings(max_examples=300, deadline=None)
@given(
    method=st.one_of(st.sampled_from(["INVITE", "BYE", "REGISTER", "OPTIONS"]), TOKEN),
    ruri=URI,
    vias=st.lists(VIA, min_size=1, max_size=3),
    from_=ADDRESS,
    to=ADDRESS,
    from_tag=TOKEN,
    call_id=st.from_regex(
        r"[A-Za-z0-9\-.!%*_+`'~()<>:\\\"/\[\]?{}]{1,20}(@[a-z0-9.]{1,10})?", fullmatch=True
    ),
    cseq=st.integers(0, 2**32 - 1),
    contacts=st.lists(ADDRESS, max_size=3),
    body=st.binary(max_size=200),
)
def test_structured_request_round_trips(
    method: str,
    ruri: SipUri,
    vias: list[Via],
    from_: Address,
    to: Address,
    from_tag: str,
    call_id: str,
    cseq: int,
    contacts: list[Address],
    body: bytes,
) -> None:
    from_.tag = from_tag
    headers = [("Via", str(v)) for v in vias]
    headers += [
        ("From", str(from_)),
        ("To", str(to)),
        ("Call-ID", call_id),
        ("CSeq", f"{cseq} {method}"),
    ]
    headers += [("Contact", str(c)) for c in contacts]
    req = Request(method, ruri, headers, body)
    for stream in (False, True):
        back = parse(bytes(req), stream=stream)
        assert isinstance(back, Request)
        assert (back.method, back.uri, back.body) == (method, ruri, body)
        assert back.vias == vias
        assert back.from_ == from_ and back.from_.tag == from_tag
        assert back.to == to
        assert (back.call_id, back.cseq, back.cseq_method) == (call_id, cseq, method)
        assert back.contacts == contacts
        assert bytes(back) == bytes(req)
    assert isinstance(back, Request)  # the loop's narrowing does not outlive it
    response = make_response(back, 200, to_tag="t")
    assert parse(bytes(response)).to.tag == (to.tag or "t")


# -- the fast paths agree with the general grammar -------------------------


def _slow(monkeypatch: pytest.MonkeyPatch) -> None:
    never = re.compile(r"(?!)")
    monkeypatch.setattr(headers_module, "_FASTEST_NAME_ADDR_RE", never)
    monkeypatch.setattr(headers_module, "_FAST_NAME_ADDR_RE", never)
    monkeypatch.setattr(headers_module, "_FAST_VIA_RE", never)
    monkeypatch.setattr(uri_module, "_FAST_SIP_URI_RE", never)


def _outcome(fn: Callable[[], object]) -> object:
    try:
        value = fn()
    except SipError as e:
        return ("error", e.status, e.reason)
    return ("ok", repr(value), value)


def _corpus_values() -> list[tuple[str, str]]:
    values = []
    for data in CORPUS:
        try:
            m = parse(data)
        except SipError:
            continue
        values += [(n, v) for n, v in m.headers if n in ("Via", "From", "To", "Contact", "Route")]
    return values


def test_fast_paths_match_the_general_parser_on_the_corpus_and_mutants(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    rng = random.Random(SEED)
    values = _corpus_values()
    values += [
        (n, mutate(rng, v.encode()).decode("utf-8", "surrogateescape")) for n, v in values * 20
    ]
    values += [("To", "sip:" + v) for _, v in values[:200]]

    def run(name: str, value: str) -> object:
        if name == "Via":
            return _outcome(lambda: parse_vias([value]))
        if name == "Contact":
            return _outcome(lambda: parse_contacts([value]))
        return _outcome(lambda: parse_address(value, name))

    fast = [run(n, v) for n, v in values]
    _slow(monkeypatch)
    slow = [run(n, v) for n, v in values]
    assert len(values) > 1000
    for (n, v), f, s in zip(values, fast, slow, strict=True):
        assert f == s, (n, v)


@settings(max_examples=200, deadline=None)
@given(uri=URI, address=ADDRESS, via=VIA)
def test_fast_paths_match_the_general_parser_on_built_values(
    uri: SipUri, address: Address, via: Via
) -> None:
    texts = (str(uri), str(address), str(via))
    fast = (parse_uri(texts[0]), parse_address(texts[1], "To"), parse_via(texts[2]))
    with pytest.MonkeyPatch.context() as mp:
        _slow(mp)
        slow = (parse_uri(texts[0]), parse_address(texts[1], "To"), parse_via(texts[2]))
    assert fast == slow == (uri, address, via)
