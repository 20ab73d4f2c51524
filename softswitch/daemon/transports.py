"""softswitch-control's sockets: SIP over UDP and TCP, and the bearer control socket.

Theory of operation
-------------------
These are the byte pipes around the sans-I/O ``Switch``; they decide nothing
(DESIGN.md principle 5).  ``ControlDaemon`` (softswitch/daemon/main.py) owns
one of each and hands them what the Switch says to send:

* ``SipTransports``: a UDP socket per ``[sip] listen`` address, read in
  batches (asyncio's datagram transport costs one loop iteration per
  datagram; this costs one per batch), and a TCP server whose streams are
  cut into messages by ``StreamFramer``; a CRLFCRLF ping gets its CRLF pong
  (RFC 5626 §3.5.1).  Responses and requests to a peer reached over TCP
  reuse its connection (RFC 3261 §18.2.2; a phone registered over TCP is
  reachable only through the connection it registered on); idle connections
  are closed unless a binding still points at them.  Each UDP datagram is
  read with its kernel arrival stamp (``SO_TIMESTAMPNS``); in a batch, work
  in progress (responses, in-dialog requests) is handed over first and new
  work after it with its queueing delay, which the Switch's entry control
  uses to refuse what cannot be served in time (softswitch/overload.py).
* TLS (RFC 3261 §26) when a certificate is configured: a server on
  ``[sip] tls_port`` of every listen address whose connections (``SipTls``)
  are ``SipTcp`` with the standard library's ``ssl`` in memory (MemoryBIO)
  between the socket and the framer, so the same code runs on asyncio and
  uvloop and every handshake is ours to time and count.  Each new
  connection takes ``tls_context`` as it is when accepted: a reload sets a
  new one and established connections keep theirs.  Handshake failures are
  counted (``drops["tls_handshake_REASON"]``), never logged one by one.  A
  phone registered over TLS is reached only through its connection: we
  never open TLS connections (a request to a TLS peer without one is a
  counted drop, as a phone's TCP connection that cannot be re-opened is).
* ``BearerLink``: the control-protocol socket (UNIX datagram at
  ``[bearers] local``, or UDP), opened by the daemon kit's
  ``open_control_socket`` as the bearers open theirs.  A bearer whose socket
  queue is full (EAGAIN) gets its datagrams later, in order (``Outbox``),
  instead of waiting for the protocol's retransmission timer.

Every socket error on the data path is a counted drop in the Switch's
``drops`` (SIP transactions and the bearer protocol retransmit), never an
exception out of the loop.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import socket
import ssl
import struct
import time
from collections import Counter
from collections.abc import Callable, Iterable
from typing import Any, Protocol, cast

from softswitch.daemonkit.outbox import Outbox
from softswitch.daemonkit.runtime import release_transport
from softswitch.daemonkit.startup import StartupError, open_control_socket
from softswitch.overload import ANSWERED_CHALLENGE, IN_PROGRESS, work_kind
from softswitch.protocol import MAX_DATAGRAM
from softswitch.sip.errors import SipError
from softswitch.sip.framing import KEEPALIVE, StreamFramer
from softswitch.sip.transaction import Peer

__all__ = ["BearerLink", "SipTcp", "SipTls", "SipTransports"]

log = logging.getLogger("softswitch.daemon.transports")

#: A TCP connection idle this long is closed, unless a binding uses it.
TCP_IDLE = 600.0
#: Open TCP connections accepted at most (each costs a file descriptor).
MAX_TCP = 4096
#: Bytes queued for one TCP connection (or one still connecting) before we give up on it.
MAX_TCP_BACKLOG = 1 << 20
#: Seconds a TLS client gets to finish its handshake.
TLS_HANDSHAKE_TIMEOUT = 10.0
#: SIP datagrams read per wake-up of one UDP socket.
UDP_BATCH = 64
#: Bearer datagrams read per wake-up, so SIP is never starved.
BEARER_BATCH = 64
#: Seconds before the first retry of datagrams a bearer's full socket queue
#: refused (EAGAIN), doubling up to BEARER_RETRY_MAX while it stays full.
BEARER_RETRY_FIRST = 0.001
BEARER_RETRY_MAX = 0.016


#: Linux's SO_TIMESTAMPNS (asm-generic/socket.h; the socket module does not
#: name it): each datagram carries its arrival time as a struct timespec.
SO_TIMESTAMPNS = getattr(socket, "SO_TIMESTAMPNS", 35)
_TIMESPEC = struct.Struct("@qq")
_STAMP_SPACE = socket.CMSG_SPACE(_TIMESPEC.size)


def _arrival(ancillary: list[tuple[int, int, bytes]], default: float) -> float:
    """The kernel's arrival stamp of a datagram, or ``default`` without one."""
    for level, kind, value in ancillary:
        if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS and len(value) >= 16:
            sec, nsec = _TIMESPEC.unpack_from(value)
            return sec + nsec * 1e-9
    return default


class SipReceiver(Protocol):
    """What the transports feed: ``Switch.receive_sip``."""

    def __call__(
        self,
        data: bytes,
        peer: Peer,
        now: float,
        *,
        stream: bool = False,
        age: float | None = None,
        answered_challenge: bool = False,
    ) -> None: ...


class SipTransports:
    """SIP over UDP and TCP on every listen address.

    ``receive`` gets every message (``Switch.receive_sip``); ``kick`` is called
    once after each batch so the daemon flushes the Switch's outputs once per
    loop iteration however many messages came in.
    """

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        receive: SipReceiver,
        kick: Callable[[], None],
        drops: Counter[str],
    ) -> None:
        self.loop = loop
        self.receive = receive
        self.kick = kick
        self.drops = drops
        self.udp: dict[int, socket.socket] = {}  # family -> first UDP socket
        self.udp_socks: list[socket.socket] = []
        self.servers: list[asyncio.base_events.Server] = []
        self.tcp: dict[tuple[str, int], SipTcp] = {}
        self.tls: dict[tuple[str, int], SipTcp] = {}
        #: What new TLS connections are accepted with; replaced on reload.
        self.tls_context: ssl.SSLContext | None = None
        #: Whether to close a connection from this host at once (a banned one).
        self.refuse: Callable[[str], bool] = lambda host: False

    async def open(self, hosts: Iterable[str], port: int, transports: Iterable[str]) -> None:
        """Bind every listen address; StartupError names the one that failed."""
        transports = list(transports)
        for host in hosts:
            try:
                if "udp" in transports:
                    self._open_udp(host, port)
                if "tcp" in transports:
                    server = await self.loop.create_server(
                        lambda: SipTcp(self), host=host, port=port, backlog=1024
                    )
                    self.servers.append(server)
            except OSError as exc:
                raise StartupError(f"SIP {host}:{port}: {exc.strerror or exc}") from None

    async def open_tls(self, hosts: Iterable[str], port: int, context: ssl.SSLContext) -> None:
        """A TLS server on every listen address; StartupError names the one that failed."""
        self.tls_context = context
        for host in hosts:
            try:
                server = await self.loop.create_server(
                    self._new_tls, host=host, port=port, backlog=1024
                )
            except OSError as exc:
                raise StartupError(f"SIP TLS {host}:{port}: {exc.strerror or exc}") from None
            self.servers.append(server)

    def _new_tls(self) -> SipTls:
        assert self.tls_context is not None
        return SipTls(self, self.tls_context)

    def _open_udp(self, host: str, port: int) -> None:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        try:
            sock.bind((host, port))
        except OSError:
            sock.close()
            raise
        sock.setblocking(False)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
        except OSError:
            pass
        try:
            sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
        except OSError:
            pass  # no stamps: every datagram looks fresh (no shedding on UDP)
        self.udp.setdefault(family, sock)
        self.udp_socks.append(sock)
        self.loop.add_reader(sock.fileno(), self._on_udp, sock)

    def _on_udp(self, sock: socket.socket) -> None:
        """Read a batch; serve work in progress at once and new work after
        it, each with its queueing delay from the kernel's arrival stamp
        (softswitch/overload.py says what the Switch does with it)."""
        receive = self.receive
        now = time.time()
        answers: list[tuple[bytes, Peer, float]] = []
        later: list[tuple[bytes, Peer, float]] = []
        for _ in range(UDP_BATCH):
            try:
                data, ancillary, _flags, addr = sock.recvmsg(65535, _STAMP_SPACE)
            except (BlockingIOError, InterruptedError):
                break
            except OSError as exc:  # an ICMP error from an earlier send
                self.drops["udp_recv_" + errno.errorcode.get(exc.errno or 0, "error")] += 1
                continue
            peer = Peer("udp", addr[0], addr[1])
            kind = work_kind(data)
            if kind == IN_PROGRESS:
                receive(data, peer, now)
            elif kind == ANSWERED_CHALLENGE:
                answers.append((data, peer, _arrival(ancillary, now)))
            else:
                later.append((data, peer, _arrival(ancillary, now)))
        for data, peer, arrived in answers:
            now = time.time()
            receive(data, peer, now, age=max(0.0, now - arrived), answered_challenge=True)
        for data, peer, arrived in later:
            now = time.time()
            receive(data, peer, now, age=max(0.0, now - arrived))
        self.kick()

    def stream_received(self, data: bytes, peer: Peer) -> None:
        """One message cut from a TCP stream."""
        self.receive(data, peer, time.time(), stream=True)
        self.kick()

    def send(self, data: bytes, peer: Peer) -> None:
        if peer.transport == "tls":
            conn = self.tls.get((peer.host, peer.port))
            if conn is None:  # never opened by us: see the module docstring
                self.drops["tls_no_connection"] += 1
            else:
                conn.write(data)
            return
        if peer.transport == "tcp":
            conn = self.tcp.get((peer.host, peer.port))
            if conn is None:
                self._connect(peer, data)
            else:
                conn.write(data)
            return
        sock = self.udp.get(socket.AF_INET6 if ":" in peer.host else socket.AF_INET)
        if sock is None:
            self.drops["no_udp_socket_for_family"] += 1
            return
        try:
            sock.sendto(data, (peer.host, peer.port))
        except OSError as exc:  # EAGAIN (buffer full), unreachable: the transaction retransmits
            self.drops["udp_send_" + errno.errorcode.get(exc.errno or 0, "error")] += 1

    def _connect(self, peer: Peer, data: bytes) -> None:
        """Open a TCP connection for a request to a peer we have none with."""
        if len(self.tcp) >= MAX_TCP:
            self.drops["tcp_too_many"] += 1
            return
        conn = SipTcp(self, (peer.host, peer.port))
        conn.backlog.append(data)
        self.tcp[(peer.host, peer.port)] = conn

        async def connect() -> None:
            try:
                await self.loop.create_connection(lambda: conn, peer.host, peer.port)
            except OSError as exc:
                log.info("cannot connect to %s:%d over TCP: %s", peer.host, peer.port, exc)
                self.drops["tcp_connect_failed"] += 1
                if self.tcp.get((peer.host, peer.port)) is conn:
                    del self.tcp[(peer.host, peer.port)]

        self.loop.create_task(connect())

    def close_idle(self, now: float, in_use: Callable[[str, str, int], bool]) -> None:
        """Close TCP connections idle for TCP_IDLE unless ``in_use`` (a binding's)."""
        for kind, table in (("tcp", self.tcp), ("tls", self.tls)):
            for key, conn in list(table.items()):
                if now - conn.last_activity > TCP_IDLE and not in_use(kind, key[0], key[1]):
                    conn.close()

    def close(self) -> None:
        for server in self.servers:
            server.close()
        for conn in [*self.tcp.values(), *self.tls.values()]:
            conn.close()
        for sock in self.udp_socks:
            self.loop.remove_reader(sock.fileno())
            sock.close()
        self.udp_socks.clear()
        self.udp.clear()


class SipTcp(asyncio.Protocol):
    """One TCP connection, accepted or opened by us (§18.3 framing)."""

    #: The Peer transport of its messages; also names its table in the owner.
    kind = "tcp"

    def __init__(self, owner: SipTransports, key: tuple[str, int] | None = None) -> None:
        self.owner = owner
        self.key = key
        self.framer = StreamFramer()
        self.transport: asyncio.Transport | None = None
        self.backlog: list[bytes] = []
        self.last_activity = time.time()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # A stream transport (create_server/create_connection); uvloop's are not
        # asyncio.Transport subclasses, hence a cast rather than isinstance.
        transport = cast(asyncio.Transport, transport)
        self.transport = transport
        peername = transport.get_extra_info("peername")
        key = (peername[0], peername[1])
        tcp = self._table()
        if self.key is None:  # accepted
            if self.owner.refuse(key[0]):
                self.owner.drops["tcp_banned"] += 1
                transport.close()
                return
            if len(tcp) >= MAX_TCP:
                self.owner.drops[self.kind + "_too_many"] += 1
                transport.close()
                return
            self.key = key
            old = tcp.get(key)
            if old is not None and old is not self:
                old.close()
            tcp[key] = self
        for data in self.backlog:
            transport.write(data)
        self.backlog.clear()

    def _table(self) -> dict[tuple[str, int], SipTcp]:
        return self.owner.tcp

    def data_received(self, data: bytes) -> None:
        self.last_activity = time.time()
        self._frame(data)

    def _frame(self, data: bytes) -> None:
        """Cut the stream's bytes into messages and hand them up."""
        try:
            messages = self.framer.feed(data)
        except SipError as exc:
            # The stream cannot be framed any more (RFC 4475 §3.1.2.3): close it.
            self.owner.drops[self.kind + "_framing_" + str(exc.status)] += 1
            log.info("closing %s %s: %s", self.kind.upper(), self.key, exc)
            self.close()
            return
        assert self.key is not None
        for msg in messages:
            if msg is KEEPALIVE or msg == KEEPALIVE:
                self.write(b"\r\n")  # RFC 5626 §3.5.1 pong
                continue
            self.owner.stream_received(msg, Peer(self.kind, self.key[0], self.key[1]))

    def write(self, data: bytes) -> None:
        self.last_activity = time.time()
        if self.transport is None:
            if sum(map(len, self.backlog)) + len(data) > MAX_TCP_BACKLOG:
                self.owner.drops["tcp_backlog_full"] += 1
                return
            self.backlog.append(data)
            return
        if self.transport.get_write_buffer_size() > MAX_TCP_BACKLOG:
            self.owner.drops["tcp_slow_reader"] += 1
            self.close()
            return
        self.transport.write(data)

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()
        self._forget()

    def connection_lost(self, exc: Exception | None) -> None:
        release_transport(self.transport)
        self._forget()

    def _forget(self) -> None:
        tcp = self._table()
        if self.key is not None and tcp.get(self.key) is self:
            del tcp[self.key]


class SipTls(SipTcp):
    """One TLS connection a phone opened to us: ``SipTcp`` with TLS between
    the socket and the framer (``ssl.SSLObject`` over memory buffers).

    Only ever accepted (server side); the context is the one current when
    the connection was accepted, so a reload never touches it.
    """

    kind = "tls"

    def __init__(self, owner: SipTransports, context: ssl.SSLContext) -> None:
        super().__init__(owner)
        self._in = ssl.MemoryBIO()
        self._out = ssl.MemoryBIO()
        self._tls = context.wrap_bio(self._in, self._out, server_side=True)
        self._ready = False
        self._closing = False
        self._timer: asyncio.TimerHandle | None = None

    def _table(self) -> dict[tuple[str, int], SipTcp]:
        return self.owner.tls

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        if self.key is not None and self._table().get(self.key) is self:
            self._timer = self.owner.loop.call_later(TLS_HANDSHAKE_TIMEOUT, self._too_slow)
        else:  # refused as one too many (counted): not a handshake failure
            self._closing = True

    def data_received(self, data: bytes) -> None:
        self.last_activity = time.time()
        self._in.write(data)
        if not self._ready:
            try:
                self._tls.do_handshake()
            except ssl.SSLWantReadError:
                self._flush()
                return
            except ssl.SSLError as exc:
                self._handshake_failed(_tls_reason(exc))
                return
            self._ready = True
            self._cancel_timer()
        chunks = []
        eof = False
        for _ in range(1024):  # bounded: each turn drains up to 64 KiB
            try:
                chunk = self._tls.read(65536)
            except ssl.SSLWantReadError:
                break
            except ssl.SSLZeroReturnError:  # close_notify
                eof = True
                break
            except ssl.SSLError as exc:
                self.owner.drops["tls_error_" + _tls_reason(exc)] += 1
                self.close()
                return
            if not chunk:
                eof = True
                break
            chunks.append(chunk)
        self._flush()  # session tickets, key updates, alerts
        if chunks:
            self._frame(b"".join(chunks))
        if eof:
            self.close()

    def write(self, data: bytes) -> None:
        self.last_activity = time.time()
        if self.transport is None or not self._ready or self._closing:
            self.owner.drops["tls_not_ready"] += 1
            return
        if self.transport.get_write_buffer_size() > MAX_TCP_BACKLOG:
            self.owner.drops["tls_slow_reader"] += 1
            self.close()
            return
        try:
            self._tls.write(data)
        except ssl.SSLError as exc:
            self.owner.drops["tls_error_" + _tls_reason(exc)] += 1
            self.close()
            return
        self._flush()

    def close(self) -> None:
        if not self._closing:
            self._closing = True
            self._cancel_timer()
            if self._ready:
                try:
                    self._tls.unwrap()  # close_notify (RFC 8446 §6.1); no wait for theirs
                except ssl.SSLError:
                    pass
                self._flush()
        super().close()

    def connection_lost(self, exc: Exception | None) -> None:
        if not self._ready and not self._closing:
            self.owner.drops["tls_handshake_closed"] += 1  # hung up before finishing
        self._closing = True
        self._cancel_timer()
        super().connection_lost(exc)

    def _flush(self) -> None:
        data = self._out.read()
        if data and self.transport is not None:
            self.transport.write(data)

    def _handshake_failed(self, reason: str) -> None:
        self.owner.drops["tls_handshake_" + reason] += 1
        self._flush()  # the alert tells the client why
        self.close()

    def _too_slow(self) -> None:
        self._timer = None
        if not self._ready:
            self._handshake_failed("timeout")

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None


def _tls_reason(exc: ssl.SSLError) -> str:
    """OpenSSL's reason code, lower-case (a bounded set: a metric label)."""
    reason = getattr(exc, "reason", None) or "error"
    return str(reason).lower()[:40]


class BearerLink:
    """The bearer control socket: bearers' datagrams in, the Switch's out.

    ``receive`` gets each datagram (``Switch.receive_bearer``); ``kick`` is
    called once per batch read.  Datagrams a bearer's full queue refused wait
    in the outbox and go out in order: for UDP when the socket polls
    writable; for UNIX on a timer, 1 ms doubling to 16 ms while no bearer
    reads (poll says writable even while the receiver is full).
    """

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        local: tuple[str, str, int],
        receive: Callable[[bytes, Any, float], None],
        kick: Callable[[], None],
        drops: Counter[str],
    ) -> None:
        self.loop = loop
        self.local = local
        self.receive = receive
        self.kick = kick
        self.drops = drops
        self.sock: socket.socket | None = None
        self.path: str | None = None
        self.outbox: Outbox | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._delay = BEARER_RETRY_FIRST
        self._writer = False

    def open(self) -> None:
        """Bind ``[bearers] local``; StartupError says why it cannot be."""
        kind, address, port = self.local
        sock = open_control_socket(
            kind, address, port, what="bearer control socket", owner="another control daemon"
        )
        self.path = address if kind == "unix" else None
        self.sock = sock
        self.outbox = Outbox(sock, self.drops, "bearer_send_")
        self.loop.add_reader(sock.fileno(), self._on_readable)

    def _on_readable(self) -> None:
        sock = self.sock
        if sock is None:
            return
        receive = self.receive
        now = time.time()
        for _ in range(BEARER_BATCH):
            try:
                data, addr = sock.recvfrom(MAX_DATAGRAM + 1)
            except (BlockingIOError, InterruptedError):
                break
            except OSError as exc:
                self.drops["bearer_recv_" + errno.errorcode.get(exc.errno or 0, "error")] += 1
                break
            if isinstance(addr, tuple):
                addr = (addr[0], addr[1])  # IPv6: drop flowinfo and scope
            receive(data, addr, now)
        self.kick()

    def send(self, datagrams: Iterable[tuple[bytes, Any]]) -> None:
        """What waited first, then ``datagrams``; a full queue is retried later.

        A bearer not started yet (ENOENT, ECONNREFUSED) costs the datagram,
        counted as a drop; the heartbeats find that bearer again.
        """
        outbox = self.outbox
        if outbox is None:
            return
        outbox.flush()
        for data, addr in datagrams:
            outbox.send(data, addr)
        if len(outbox):
            self._retry_later()

    def _retry_later(self) -> None:
        if self.outbox is None or self.sock is None:
            return
        if self.local[0] != "unix":
            if not self._writer:
                self._writer = True
                self.loop.add_writer(self.sock.fileno(), self._retry)
            return
        if self._timer is None:
            self._timer = self.loop.call_later(self._delay, self._retry)

    def _retry(self) -> None:
        self._timer = None
        outbox = self.outbox
        if outbox is None or self.sock is None:
            return
        before = len(outbox)
        left = outbox.flush()
        if left:
            if left >= before:  # nobody read: wait longer
                self._delay = min(self._delay * 2, BEARER_RETRY_MAX)
            else:
                self._delay = BEARER_RETRY_FIRST
            self._retry_later()
            return
        self._delay = BEARER_RETRY_FIRST
        if self._writer:
            self._writer = False
            self.loop.remove_writer(self.sock.fileno())

    def close(self) -> None:
        """Last try for datagrams still waiting (the rest counted), then the
        socket and its file."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._writer and self.sock is not None:
            self._writer = False
            self.loop.remove_writer(self.sock.fileno())
        outbox, self.outbox = self.outbox, None
        if outbox is not None and outbox.flush():
            log.warning("%d bearer datagrams unsent at stop", len(outbox))
            self.drops["bearer_send_unsent_at_stop"] += len(outbox)
        if self.sock is not None:
            self.loop.remove_reader(self.sock.fileno())
            self.sock.close()
            self.sock = None
        if self.path:
            try:
                os.unlink(self.path)
            except OSError:
                pass
            self.path = None
