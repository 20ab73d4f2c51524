"""The RFC 4475 torture corpus and the mutation fuzzer over TLS framing.

The daemon's ``SipTls`` connection (real ``ssl``, a real certificate made
with openssl) sits in front of a real core (``Switch`` with its B2BUA), as
in the daemon; a client ``SSLObject`` plays the phone.  The client's bytes
are cut into TLS records of random sizes and the records into TCP segments
of random sizes, so a SIP message arrives split anywhere, or several in one
record.  Whatever comes in: nothing escapes ``data_received`` (the framer's
``SipError`` closes the connection and is counted, the parser's is answered
or counted by the core), the core logs no internal error, and a valid
request still gets its answer back through TLS.
"""

from __future__ import annotations

import asyncio
import random
import ssl
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest

from softswitch.daemon import transports
from softswitch.daemon.metrics import exposition
from softswitch.daemon.tls import make_self_signed, server_context
from softswitch.daemon.transports import SipTransports
from softswitch.sip.framing import StreamFramer
from softswitch.sip.message import Response, parse
from tests.unit.control.core_world import CoreWorld
from tests.unit.control.test_metrics import value
from tests.unit.sip.test_fuzz import CORPUS, SEED, mutate

#: Mutants sent over TLS (each its own message on a connection).
TLS_MUTANTS = 10_000


class FakeSocket:
    """The TCP transport under SipTls: bytes out collected, close noted."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.out = bytearray()
        self.closed = False

    def get_extra_info(self, name: str) -> object:
        return ("198.51.100.7", self.port) if name == "peername" else None

    def write(self, data: bytes) -> None:
        self.out += data

    def close(self) -> None:
        self.closed = True

    def get_write_buffer_size(self) -> int:
        return 0


class Phone:
    """A TLS client over memory buffers, connected to one SipTls."""

    def __init__(self, sip: SipTransports, client: ssl.SSLContext, port: int) -> None:
        self.sip = sip
        self.conn = sip._new_tls()
        self.sock = FakeSocket(port)
        self.conn.connection_made(self.sock)  # type: ignore[arg-type]
        self.incoming, self.outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        self.tls = client.wrap_bio(self.incoming, self.outgoing, server_hostname="127.0.0.1")
        for _ in range(10):  # bounded: TLS 1.3 needs two flights
            try:
                self.tls.do_handshake()
                break
            except ssl.SSLWantReadError:
                self._pump(random.Random(0))
        else:
            raise AssertionError("no handshake")
        self._pump(random.Random(0))

    @property
    def open(self) -> bool:
        return not self.sock.closed

    def _pump(self, rng: random.Random) -> None:
        """Client records to the server in random TCP segments; server bytes back."""
        data = self.outgoing.read()
        pos = 0
        while pos < len(data) and not self.sock.closed:
            step = rng.randint(1, 700)
            self.conn.data_received(data[pos : pos + step])
            pos += step
        self.incoming.write(bytes(self.sock.out))
        self.sock.out.clear()

    def send(self, data: bytes, rng: random.Random) -> None:
        pos = 0
        while pos < len(data):  # TLS records of random sizes
            step = rng.randint(1, 1500)
            self.tls.write(data[pos : pos + step])
            pos += step
        self._pump(rng)

    def received(self) -> bytes:
        out = b""
        for _ in range(1000):  # bounded
            try:
                chunk = self.tls.read(65536)
            except (ssl.SSLWantReadError, ssl.SSLZeroReturnError):
                break
            if not chunk:
                break
            out += chunk
        return out


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    d = tmp_path_factory.mktemp("tls")
    make_self_signed(d / "tls.crt", d / "tls.key", ["127.0.0.1"])
    return d / "tls.crt", d / "tls.key"


@pytest.fixture
def world(certificate: tuple[Path, Path]) -> Iterator[tuple[CoreWorld, SipTransports]]:
    world = CoreWorld()
    core = world.core
    loop = asyncio.new_event_loop()
    drops: Counter[str] = Counter()
    sip: SipTransports

    def flush() -> None:
        for data, peer in core.sip_datagrams_to_send():
            sip.send(data, peer)

    sip = SipTransports(loop, core.receive_sip, flush, drops)
    sip.tls_context = server_context(str(certificate[0]), str(certificate[1]))
    yield world, sip
    loop.close()


def _client(certificate: tuple[Path, Path]) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(certificate[0]))


def test_options_is_answered_through_tls_whatever_the_record_cuts(
    world: tuple[CoreWorld, SipTransports], certificate: tuple[Path, Path]
) -> None:
    core = world[0].core
    sip = world[1]
    rng = random.Random(SEED)
    phone = Phone(sip, _client(certificate), 5000)
    options = (
        b"OPTIONS sip:192.0.2.1 SIP/2.0\r\nVia: SIP/2.0/TLS 198.51.100.7:5000;branch=z9hG4bK%d\r\n"
        b"Max-Forwards: 70\r\nFrom: <sip:x@192.0.2.1>;tag=1\r\nTo: <sip:192.0.2.1>\r\n"
        b"Call-ID: c%d\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n"
    )
    # Thirty requests back to back: records and segments split them anywhere.
    phone.send(b"".join(options % (i, i) for i in range(30)), rng)
    answers = []
    data = phone.received()
    for frame in StreamFramer().feed(data):
        msg = parse(frame, stream=True)
        assert isinstance(msg, Response)
        answers.append(msg.status)
    assert answers == [200] * 30
    assert core.counters["internal_errors"] == 0


def test_torture_corpus_and_mutants_over_tls_nothing_escapes(
    world: tuple[CoreWorld, SipTransports], certificate: tuple[Path, Path]
) -> None:
    core = world[0].core
    sip = world[1]
    rng = random.Random(SEED)
    client = _client(certificate)
    messages = list(CORPUS) + [mutate(rng, rng.choice(CORPUS)) for _ in range(TLS_MUTANTS)]
    port = 10000
    phone = Phone(sip, client, port)
    closed = answered = 0
    for data in messages:
        if not phone.open:  # the framer gave up on the stream: a new connection
            closed += 1
            port += 1
            phone = Phone(sip, client, port)
        phone.send(data, rng)  # raises if anything escapes data_received
        if phone.received():
            answered += 1
    assert core.counters["internal_errors"] == 0
    framing = sum(n for k, n in sip.drops.items() if k.startswith("tls_framing_"))
    assert closed and framing >= closed  # unframable streams were closed and counted
    assert answered > len(CORPUS) // 2  # and the rest was answered over TLS
    assert not any(k.startswith("tls_handshake_") for k in sip.drops), sip.drops


def test_a_handshake_that_never_finishes_is_closed_and_counted(
    world: tuple[CoreWorld, SipTransports], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A client that connects and says nothing (or half a ClientHello) is cut
    off after TLS_HANDSHAKE_TIMEOUT, counted, and shows in the metric."""
    core = world[0].core
    sip = world[1]
    sip.drops = core.drops  # as the daemon does: the Switch's drops
    monkeypatch.setattr(transports, "TLS_HANDSHAKE_TIMEOUT", 0.01)
    silent, slow = FakeSocket(7000), FakeSocket(7001)
    for sock in (silent, slow):
        sip._new_tls().connection_made(sock)  # type: ignore[arg-type]
    sip.tls[("198.51.100.7", 7001)].data_received(b"\x16\x03\x01\x02\x00\x01")  # a start
    assert len(sip.tls) == 2
    sip.loop.run_until_complete(asyncio.sleep(0.05))
    assert silent.closed and slow.closed and not sip.tls
    assert core.drops["tls_handshake_timeout"] == 2
    text = exposition(SimpleNamespace(switch=core))
    assert value(text, "softswitch_tls_handshake_failures_total", reason="timeout") == 2


def test_tls_connections_beyond_the_limit_are_refused_and_counted(
    world: tuple[CoreWorld, SipTransports],
    certificate: tuple[Path, Path],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    sip = world[1]
    monkeypatch.setattr(transports, "MAX_TCP", 1)
    first = Phone(sip, _client(certificate), 8000)
    extra = FakeSocket(8001)
    conn = sip._new_tls()
    conn.connection_made(extra)  # type: ignore[arg-type]
    conn.connection_lost(None)
    assert extra.closed and not first.sock.closed
    assert sip.drops["tls_too_many"] == 1
    assert not any(k.startswith("tls_handshake_") for k in sip.drops), sip.drops
