"""softswitch-control: the asyncio edge around the sans-I/O ``Switch``.

Theory of operation
-------------------
Everything that decides lives in ``softswitch.switch.Switch``; this module only
moves bytes and time in and out of it (DESIGN.md principles 3 and 5):

* SIP over UDP and TCP on every ``[sip] listen`` address.  TCP streams are
  cut into messages by ``StreamFramer``; a CRLFCRLF ping gets its CRLF pong
  (RFC 5626 §3.5.1).  Responses and requests to a peer reached over TCP reuse
  its connection (§18.2.2, and a phone registered over TCP is reachable only
  through the connection it registered on); idle connections are closed
  unless a binding still points at them.
* The bearer control socket: UNIX datagram bound at ``[bearers] local``, or
  UDP with every datagram HMAC-tagged under ``[bearers] key_file`` (without a
  readable key the daemon refuses to start).
* The DB thread (softswitch/db/thread.py): results come back through
  ``loop.call_soon_threadsafe``; nothing is served before its ``Loaded``.
* The admin socket (softswitch/daemon/admin.py) for softswitchctl.
* The Prometheus endpoint (softswitch/daemon/metrics.py) on ``[metrics] listen``:
  its own HTTP thread, which reads the Switch's counters at scrape time;
  bound in ``main`` before the loop starts, so a taken port is a one-line
  error (exit 2).  It stays where it is on SIGHUP (the log says a changed
  ``listen`` needs a restart).
* Optional packages (uvloop, aiortc for Opus/SRTP) are found at start and
  said in one log line, as ``softswitchctl status`` reports them; a missing
  one is never an ImportError.
* One timer handle, re-armed from ``Switch.get_timer()`` after every input.
  Outputs are flushed once per loop iteration however many datagrams came in.
* systemd: READY=1 once listening with users loaded, WATCHDOG=1 from the
  loop, STATUS= with registrations and calls.  SIGTERM/SIGINT stop
  gracefully (calls hung up, in-flight transactions given a few seconds,
  queued registrations and CDRs flushed by the DB thread, exit 0); SIGHUP
  reloads the configuration and reopens the log file.

Exit codes: 0 after a clean stop, 2 for bad usage or configuration (one line
on stderr, never a traceback; a metrics address that cannot be bound is one),
1 for any other failure to start or run.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import errno
import importlib.util
import logging
import os
import queue
import signal
import socket
import sys
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

from softswitch.daemon.admin import AdminError, AdminServer
from softswitch.daemon.metrics import MetricsServer, make_registry
from softswitch.daemon.settings import load_control_config
from softswitch.daemonkit.config import CONFIG_DIR_ENV, ConfigError, resolve_config_dir
from softswitch.daemonkit.logsetup import LogSetup
from softswitch.daemonkit.outbox import Outbox
from softswitch.daemonkit.runtime import SocketFileError, release_transport, remove_stale_socket
from softswitch.daemonkit.sdnotify import Notifier
from softswitch.db.messages import DbFatal, DeleteBinding, Loaded, SaveBinding, WriteCdr
from softswitch.db.thread import DbThread
from softswitch.protocol import MAX_DATAGRAM, KeyFileError, load_key
from softswitch.sip.errors import SipError
from softswitch.sip.framing import KEEPALIVE, StreamFramer
from softswitch.sip.transaction import Peer
from softswitch.switch import Switch

__all__ = ["ControlDaemon", "StartupError", "main"]

log = logging.getLogger("softswitch.daemon.main")

#: Seconds a graceful stop waits for in-flight transactions.
STOP_GRACE = 5.0
#: Seconds the DB thread gets to write what is queued at stop.
DB_STOP_TIMEOUT = 10.0
#: A TCP connection idle this long is closed, unless a binding uses it.
TCP_IDLE = 600.0
#: Open TCP connections accepted at most (each costs a file descriptor).
MAX_TCP = 4096
#: Bytes queued for one TCP connection (or one still connecting) before we give up on it.
MAX_TCP_BACKLOG = 1 << 20
#: SIP datagrams read per wake-up of one UDP socket.
UDP_BATCH = 64
#: Bearer datagrams read per wake-up, so SIP is never starved.
BEARER_BATCH = 64
#: Seconds before the first retry of datagrams a bearer's full socket queue
#: refused (EAGAIN), doubling up to BEARER_RETRY_MAX while it stays full.
BEARER_RETRY_FIRST = 0.001
BEARER_RETRY_MAX = 0.016
#: Timer wake-ups are at least this far apart, so thousands of transaction
#: timers expiring a few microseconds apart cost a few wake-ups, not thousands
#: (Linux "timer slack"; every SIP and bearer timer tolerates it).
TIMER_SLACK = 0.002
#: sys.setswitchinterval for the daemon (see main()).
SWITCH_INTERVAL = 0.001
#: Seconds between STATUS= updates and idle-connection sweeps.
HOUSEKEEPING = 5.0


class StartupError(Exception):
    """The daemon cannot start; the text is the one line to print."""


class ControlDaemon:
    """One control daemon process: sockets, threads and the Switch."""

    def __init__(
        self,
        cfg: SimpleNamespace,
        config_path: Path,
        *,
        required: bool,
        key: bytes | None,
        logs: LogSetup | None = None,
        notifier: Notifier | None = None,
        features: dict[str, bool] | None = None,
    ) -> None:
        self.cfg = cfg
        self.config_path = config_path
        self.required = required
        self.key = key
        self.logs = logs
        self.notifier = notifier or Notifier()
        self.features = features or {}
        self.exit_code = 0
        self.switch: Switch
        self.db: DbThread
        self.loop: asyncio.AbstractEventLoop
        self._stop = asyncio.Event()
        self._loaded = asyncio.Event()
        self._udp: dict[int, socket.socket] = {}  # family -> first UDP socket
        self._udp_socks: list[socket.socket] = []
        self._servers: list[asyncio.base_events.Server] = []
        self._tcp: dict[tuple[str, int], SipTcp] = {}
        self._bearer_sock: socket.socket | None = None
        self._bearer_path: str | None = None
        self._outbox: Outbox | None = None  # bearer datagrams waiting for room
        self._outbox_timer: asyncio.TimerHandle | None = None
        self._outbox_delay = BEARER_RETRY_FIRST
        self._outbox_writer = False
        self._admin: AdminServer | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = 0.0
        self._last_fire = 0.0
        self._flush_pending = False

    # ------------------------------------------------------------------ start

    async def run(self) -> int:
        """Start everything, serve until stopped, stop cleanly; the exit code."""
        self.loop = asyncio.get_running_loop()
        cfg = self.cfg
        now = time.time()
        self.switch = Switch(
            cfg,
            now,
            epoch=time.time_ns(),
            bearer_key=self.key,
            bearer_endpoints=_resolve_endpoints(cfg.bearers.endpoints),
            features=self.features,
        )
        for sig, handler in (
            (signal.SIGTERM, self.request_stop),
            (signal.SIGINT, self.request_stop),
            (signal.SIGHUP, self.reload),
        ):
            self.loop.add_signal_handler(sig, handler)
        try:
            self._open_bearer_socket()
            self._start_db()
            self._admin = AdminServer(cfg.admin.socket, self._admin_handlers())
            try:
                await self._admin.start()
            except (AdminError, OSError) as exc:
                raise StartupError(f"admin socket {cfg.admin.socket}: {exc}") from None
            self._rearm()
            log.info("waiting for the database to load users")
            await _first(self._loaded.wait(), self._stop.wait())
            if self._loaded.is_set() and not self._stop.is_set():
                from softswitch.daemonkit import gctune

                gctune.start(self.loop)  # the users are loaded: freeze them
                await self._open_sip()
                self._serving()
                self._housekeeping()
                await self._stop.wait()
        finally:
            await self._shutdown()
        return self.exit_code

    def _start_db(self) -> None:
        url = self.cfg.database.url
        if url.startswith("sqlite:///") and not url.startswith("sqlite:///:memory:"):
            directory = Path(url[len("sqlite:///") :]).parent
            try:
                directory.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise StartupError(f"database directory {directory}: {exc.strerror}") from None
        self.db = DbThread(
            url,
            lambda: self.loop.call_soon_threadsafe(self._drain_db),
            sync_interval=self.cfg.database.sync_interval,
            write_queue_max=self.cfg.database.write_queue_max,
            spool_dir=self.cfg.database.spool_dir,
        )
        self.db.start()

    def _open_bearer_socket(self) -> None:
        kind, address, port = self.cfg.bearers.local
        if kind == "unix":
            path = Path(address)
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
                remove_stale_socket(path, owner="another control daemon")
                sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
                sock.bind(str(path))
                os.chmod(path, 0o660)
            except SocketFileError as exc:
                raise StartupError(f"bearer control socket {exc}") from None
            except OSError as exc:
                raise StartupError(f"bearer control socket {path}: {exc.strerror}") from None
            self._bearer_path = str(path)
        else:
            family = socket.AF_INET6 if ":" in address else socket.AF_INET
            sock = socket.socket(family, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            try:
                sock.bind((address, port))
            except OSError as exc:
                sock.close()
                raise StartupError(f"bearer control udp:{address}:{port}: {exc.strerror}") from None
        sock.setblocking(False)
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        self._bearer_sock = sock
        self._outbox = Outbox(sock, self.switch.drops, "bearer_send_")
        self.loop.add_reader(sock.fileno(), self._on_bearer)

    async def _open_sip(self) -> None:
        sip = self.cfg.sip
        for host in sip.listen:
            try:
                if "udp" in sip.transports:
                    self._open_udp(host, sip.port)
                if "tcp" in sip.transports:
                    server = await self.loop.create_server(
                        lambda: SipTcp(self), host=host, port=sip.port, backlog=1024
                    )
                    self._servers.append(server)
            except OSError as exc:
                raise StartupError(f"SIP {host}:{sip.port}: {exc.strerror or exc}") from None

    def _open_udp(self, host: str, port: int) -> None:
        """A UDP SIP socket read in batches (asyncio's datagram transport
        costs one loop iteration per datagram; this costs one per batch)."""
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        try:
            sock.bind((host, port))
        except OSError:
            sock.close()
            raise
        sock.setblocking(False)
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
        self._udp.setdefault(family, sock)
        self._udp_socks.append(sock)
        self.loop.add_reader(sock.fileno(), self._on_udp, sock)

    def _serving(self) -> None:
        sw = self.switch
        where = ", ".join(la.host_port for la in sw.locals)
        log.info(
            "serving SIP (%s) on %s for domain %s: %d users, %d registrations, %d bearers",
            "/".join(self.cfg.sip.transports),
            where,
            sw.domain,
            len(sw.directory),
            len(sw.location),
            len(sw.bearers),
        )
        self.notifier.ready(self._status_line())

    # ------------------------------------------------------------------ inputs

    def sip_received(self, data: bytes, peer: Peer, stream: bool) -> None:
        self.switch.receive_sip(data, peer, time.time(), stream=stream)
        self._kick()

    def _on_udp(self, sock: socket.socket) -> None:
        receive = self.switch.receive_sip
        now = time.time()
        for _ in range(UDP_BATCH):
            try:
                data, addr = sock.recvfrom(65535)
            except (BlockingIOError, InterruptedError):
                break
            except OSError as exc:  # an ICMP error from an earlier send
                self.switch.drops["udp_recv_" + errno.errorcode.get(exc.errno or 0, "error")] += 1
                continue
            receive(data, Peer("udp", addr[0], addr[1]), now)
        self._kick()

    def _on_bearer(self) -> None:
        sock = self._bearer_sock
        if sock is None:
            return
        now = time.time()
        for _ in range(BEARER_BATCH):
            try:
                data, addr = sock.recvfrom(MAX_DATAGRAM + 1)
            except (BlockingIOError, InterruptedError):
                break
            except OSError as exc:
                self.switch.drops[
                    "bearer_recv_" + errno.errorcode.get(exc.errno or 0, "error")
                ] += 1
                break
            if isinstance(addr, tuple):
                addr = (addr[0], addr[1])  # IPv6: drop flowinfo and scope
            self.switch.receive_bearer(data, addr, now)
        self._kick()

    def _drain_db(self) -> None:
        now = time.time()
        for _ in range(10_000):  # bounded; the thread notifies again for more
            try:
                result = self.db.results.get_nowait()
            except queue.Empty:
                break
            self.switch.apply_db_result(result, now)
            if type(result) is Loaded:
                self._loaded.set()
            elif type(result) is DbFatal:
                self.exit_code = 1
                self.request_stop()
        self._kick()

    def _on_timer(self) -> None:
        self._timer = None
        now = max(time.time(), self._timer_at)
        self._last_fire = now
        try:
            self.switch.handle_timer(now)
        finally:
            self._flush()

    # ------------------------------------------------------------------ outputs

    def _kick(self) -> None:
        """Flush once at the end of this loop iteration, whatever came in."""
        if not self._flush_pending:
            self._flush_pending = True
            self.loop.call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_pending = False
        sw = self.switch
        for data, peer in sw.sip_datagrams_to_send():
            self._send_sip(data, peer)
        outbox = self._outbox
        if outbox is not None:
            # A bearer's full queue (EAGAIN): the datagram waits in order
            # for that bearer; one not started yet (ENOENT, ECONNREFUSED) is
            # counted as a drop and found again by the heartbeats.
            outbox.flush()
            for data, addr in sw.bearer_datagrams_to_send():
                outbox.send(data, addr)
            if len(outbox):
                self._retry_bearers_later()
        self._hand_to_db()
        self._rearm()

    def _retry_bearers_later(self) -> None:
        """Send the waiting bearer datagrams again soon.  UDP: when the socket
        polls writable.  UNIX: on a timer, 1 ms doubling to 16 ms while no
        bearer reads (poll says writable even while the receiver is full)."""
        outbox = self._outbox
        if outbox is None or self._bearer_sock is None:
            return
        if self.cfg.bearers.local[0] != "unix":
            if not self._outbox_writer:
                self._outbox_writer = True
                self.loop.add_writer(self._bearer_sock.fileno(), self._retry_bearers)
            return
        if self._outbox_timer is None:
            self._outbox_timer = self.loop.call_later(self._outbox_delay, self._retry_bearers)

    def _retry_bearers(self) -> None:
        self._outbox_timer = None
        outbox = self._outbox
        if outbox is None or self._bearer_sock is None:
            return
        before = len(outbox)
        left = outbox.flush()
        if left:
            if left >= before:  # nobody read: wait longer
                self._outbox_delay = min(self._outbox_delay * 2, BEARER_RETRY_MAX)
            else:
                self._outbox_delay = BEARER_RETRY_FIRST
            self._retry_bearers_later()
            return
        self._outbox_delay = BEARER_RETRY_FIRST
        if self._outbox_writer:
            self._outbox_writer = False
            self.loop.remove_writer(self._bearer_sock.fileno())

    def _send_sip(self, data: bytes, peer: Peer) -> None:
        if peer.transport == "tcp":
            conn = self._tcp.get((peer.host, peer.port))
            if conn is None:
                self._connect(peer, data)
            else:
                conn.write(data)
            return
        sock = self._udp.get(socket.AF_INET6 if ":" in peer.host else socket.AF_INET)
        if sock is None:
            self.switch.drops["no_udp_socket_for_family"] += 1
            return
        try:
            sock.sendto(data, (peer.host, peer.port))
        except OSError as exc:  # EAGAIN (buffer full), unreachable: the transaction retransmits
            self.switch.drops["udp_send_" + errno.errorcode.get(exc.errno or 0, "error")] += 1

    def _connect(self, peer: Peer, data: bytes) -> None:
        """Open a TCP connection for a request to a peer we have none with."""
        if len(self._tcp) >= MAX_TCP:
            self.switch.drops["tcp_too_many"] += 1
            return
        conn = SipTcp(self, (peer.host, peer.port))
        conn.backlog.append(data)
        self._tcp[(peer.host, peer.port)] = conn

        async def connect() -> None:
            try:
                await self.loop.create_connection(lambda: conn, peer.host, peer.port)
            except OSError as exc:
                log.info("cannot connect to %s:%d over TCP: %s", peer.host, peer.port, exc)
                self.switch.drops["tcp_connect_failed"] += 1
                if self._tcp.get((peer.host, peer.port)) is conn:
                    del self._tcp[(peer.host, peer.port)]

        self.loop.create_task(connect())

    def _rearm(self) -> None:
        deadline = self.switch.get_timer()
        if deadline is None:
            return
        if self._timer is not None:
            if self._timer_at <= deadline:
                return  # an earlier wake-up is armed; it re-arms when it fires
            self._timer.cancel()
        deadline = max(deadline, self._last_fire + TIMER_SLACK)
        delay = max(0.0, deadline - time.time())
        self._timer_at = deadline
        self._timer = self.loop.call_at(self.loop.time() + delay, self._on_timer)

    # ------------------------------------------------------------------ housekeeping

    def _housekeeping(self) -> None:
        if self._stop.is_set():
            return
        now = time.time()
        self.notifier.status(self._status_line())
        for key, conn in list(self._tcp.items()):
            if now - conn.last_activity > TCP_IDLE and not self.switch.location.has_source(
                "tcp", key[0], key[1]
            ):
                conn.close()
        self.loop.call_later(HOUSEKEEPING, self._housekeeping)
        if self.notifier.interval is not None:
            self._watchdog()

    def _watchdog(self) -> None:
        """WATCHDOG=1 from the loop itself, at half the unit's timeout."""
        if self._stop.is_set() or self.notifier.interval is None:
            return
        self.notifier.watchdog(time.monotonic())
        self.loop.call_later(min(self.notifier.interval, 1.0), self._watchdog)

    def _status_line(self) -> str:
        sw = self.switch
        calls = 0 if sw.calls is None else len(sw.calls.snapshot())
        return (
            f"{len(sw.location)} registrations, {calls} calls, "
            f"bearers {sw.bearers.up_count}/{len(sw.bearers)} up"
        )

    # ------------------------------------------------------------------ admin and signals

    def _admin_handlers(self) -> dict[str, Any]:
        return {
            "registrations": lambda args: self.switch.admin_registrations(time.time()),
            "calls": lambda args: self.switch.admin_calls(),
            "bearers": lambda args: self.switch.admin_bearers(),
            "status": lambda args: self._admin_status(),
            "reload": lambda args: self.reload(from_admin=True),
        }

    def _admin_status(self) -> dict[str, Any]:
        status = self.switch.admin_status(time.time())
        if self._outbox is not None:  # waited for a bearer's full queue: sent late, not lost
            status["bearer_send_deferred"] = self._outbox.deferred
            status["bearer_send_waiting"] = len(self._outbox)
        return status

    def reload(self, from_admin: bool = False) -> dict[str, Any]:
        """SIGHUP / ``softswitchctl reload``: re-read the configuration, apply
        what can change live, say what needs a restart, reopen the logs."""
        try:
            new = load_control_config(self.config_path, required=self.required)
        except ConfigError as exc:
            log.error("reload refused, the running configuration stays: %s", exc)
            if from_admin:
                raise AdminError(f"reload refused: {exc}") from None
            return {}
        self.notifier.reloading()
        applied, restart = self.switch.reconfigure(new)
        if "log.level" in applied:
            logging.getLogger().setLevel(getattr(logging, new.log.level.upper()))
        if self.logs is not None:
            self.logs.reopen()
        log.info(
            "configuration reloaded: changed %s%s",
            ", ".join(applied) or "nothing",
            f"; needs a restart to change: {', '.join(restart)}" if restart else "",
        )
        self.notifier.ready(self._status_line())
        self._kick()
        return {"applied": applied, "needs_restart": restart}

    def request_stop(self) -> None:
        if not self._stop.is_set():
            log.info("stopping")
            self._stop.set()

    # ------------------------------------------------------------------ stop

    async def _shutdown(self) -> None:
        self.notifier.stopping()
        sw = getattr(self, "switch", None)
        if sw is not None and self._loaded.is_set():
            sw.shutdown(time.time())
            self._flush()
            deadline = time.monotonic() + STOP_GRACE
            while sw.in_flight() and time.monotonic() < deadline:  # bounded by STOP_GRACE
                await asyncio.sleep(0.05)
            if sw.in_flight():
                log.warning("%d transactions unfinished at stop", sw.in_flight())
        for server in self._servers:
            server.close()
        for conn in list(self._tcp.values()):
            conn.close()
        for sock in self._udp_socks:
            self.loop.remove_reader(sock.fileno())
            sock.close()
        self._udp_socks.clear()
        self._udp.clear()
        if self._admin is not None:
            await self._admin.close()
        if self._timer is not None:
            self._timer.cancel()
        if self._bearer_sock is not None:
            self._close_outbox()
            self.loop.remove_reader(self._bearer_sock.fileno())
            self._bearer_sock.close()
            self._bearer_sock = None
            if self._bearer_path:
                with contextlib.suppress(OSError):
                    os.unlink(self._bearer_path)
        db = getattr(self, "db", None)
        if db is not None:
            if sw is not None:
                self._hand_to_db()
            if await self.loop.run_in_executor(None, db.stop, DB_STOP_TIMEOUT):
                pass
            elif db.kept_at_stop:
                log.warning("database writes unwritten at stop, kept in the journal")
            else:
                log.error("database writes lost at stop (%d dropped)", db.dropped)
        log.info("stopped")

    def _close_outbox(self) -> None:
        """Last try for bearer datagrams still waiting; the rest are counted."""
        if self._outbox_timer is not None:
            self._outbox_timer.cancel()
            self._outbox_timer = None
        if self._outbox_writer and self._bearer_sock is not None:
            self._outbox_writer = False
            self.loop.remove_writer(self._bearer_sock.fileno())
        outbox = self._outbox
        self._outbox = None
        if outbox is not None and outbox.flush():
            log.warning("%d bearer datagrams unsent at stop", len(outbox))
            self.switch.drops["bearer_send_unsent_at_stop"] += len(outbox)

    def _hand_to_db(self) -> None:
        """The Switch's DB commands, to the DB thread's queue (never blocks)."""
        db = self.db
        for cmd in self.switch.db_commands():
            try:
                if isinstance(cmd, SaveBinding):
                    db.save_binding(cmd.binding)
                elif isinstance(cmd, DeleteBinding):
                    db.delete_binding(cmd.username, cmd.domain, cmd.contact)
                elif isinstance(cmd, WriteCdr):
                    db.write_cdr(cmd.cdr)
            except ValueError as exc:
                log.warning("not persisted: %s", exc)


# --------------------------------------------------------------------------- SIP transports


class SipTcp(asyncio.Protocol):
    """One TCP connection, accepted or opened by us (§18.3 framing)."""

    def __init__(self, daemon: ControlDaemon, key: tuple[str, int] | None = None) -> None:
        self.daemon = daemon
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
        tcp = self.daemon._tcp
        if self.key is None:  # accepted
            if len(tcp) >= MAX_TCP:
                self.daemon.switch.drops["tcp_too_many"] += 1
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

    def data_received(self, data: bytes) -> None:
        self.last_activity = time.time()
        try:
            messages = self.framer.feed(data)
        except SipError as exc:
            # The stream cannot be framed any more (RFC 4475 §3.1.2.3): close it.
            self.daemon.switch.drops["tcp_framing_" + str(exc.status)] += 1
            log.info("closing TCP %s: %s", self.key, exc)
            self.close()
            return
        assert self.key is not None
        for msg in messages:
            if msg is KEEPALIVE or msg == KEEPALIVE:
                self.write(b"\r\n")  # RFC 5626 §3.5.1 pong
                continue
            self.daemon.sip_received(msg, Peer("tcp", self.key[0], self.key[1]), True)

    def write(self, data: bytes) -> None:
        self.last_activity = time.time()
        if self.transport is None:
            if sum(map(len, self.backlog)) + len(data) > MAX_TCP_BACKLOG:
                self.daemon.switch.drops["tcp_backlog_full"] += 1
                return
            self.backlog.append(data)
            return
        if self.transport.get_write_buffer_size() > MAX_TCP_BACKLOG:
            self.daemon.switch.drops["tcp_slow_reader"] += 1
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
        tcp = self.daemon._tcp
        if self.key is not None and tcp.get(self.key) is self:
            del tcp[self.key]


# --------------------------------------------------------------------------- helpers


async def _first(*aws: Any) -> None:
    """Wait until the first of several awaitables finishes; cancel the rest."""
    tasks = [asyncio.ensure_future(a) for a in aws]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for t in tasks:
            t.cancel()


def _resolve_endpoints(endpoints: list) -> list:
    """UDP bearer endpoints with host names resolved (replies are matched by address)."""
    out = []
    for kind, address, port in endpoints:
        if kind == "udp":
            try:
                info = socket.getaddrinfo(address, port, type=socket.SOCK_DGRAM)
            except OSError as exc:
                raise StartupError(f"bearer endpoint udp:{address}:{port}: {exc}") from None
            address = info[0][4][0]
        out.append((kind, address, port))
    return out


def _check_bearer_config(cfg: SimpleNamespace) -> bytes | None:
    """The HMAC key when any bearer link is UDP; ConfigError if the kinds mix."""
    kinds = {cfg.bearers.local[0]} | {e[0] for e in cfg.bearers.endpoints}
    if len(kinds) > 1:
        raise ConfigError(
            "[bearers] local and endpoints must all be unix: (one host) or all udp: (two hosts)"
        )
    if "udp" not in kinds:
        return None
    try:
        return load_key(cfg.bearers.key_file)
    except KeyFileError as exc:
        raise ConfigError(f"{exc} (needed for udp: bearer endpoints)") from None


def _features() -> dict[str, bool]:
    return {
        "uvloop": importlib.util.find_spec("uvloop") is not None,
        "aiortc": importlib.util.find_spec("aiortc") is not None,
    }


#: What each optional package brings, for the start-up log line.
FEATURE_USES = {"uvloop": "faster event loop", "aiortc": "Opus and SRTP"}


def features_text(features: dict[str, bool]) -> str:
    """One line on the optional packages, as ``softswitchctl status`` reports them.

    >>> features_text({"uvloop": True, "aiortc": False})
    'optional features: uvloop available (faster event loop); aiortc absent (no Opus and SRTP)'
    """
    parts = []
    for name, available in features.items():
        use = FEATURE_USES.get(name, name)
        parts.append(f"{name} available ({use})" if available else f"{name} absent (no {use})")
    return "optional features: " + "; ".join(parts)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="softswitch-control",
        description="The softswitch control daemon: SIP registrar and B2BUA.",
    )
    parser.add_argument(
        "--config-dir",
        help=f"configuration directory (default: ${CONFIG_DIR_ENV}, ./var/etc, /etc/softswitch)",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    """Console-script entry point; see the module docstring for exit codes."""
    args = _parser().parse_args(argv)  # bad usage: argparse prints usage, exits 2
    required = bool(args.config_dir or os.environ.get(CONFIG_DIR_ENV))
    config_path = resolve_config_dir(args.config_dir) / "softswitch.conf"
    try:
        cfg = load_control_config(config_path, required=required)
        key = _check_bearer_config(cfg)
        logs = LogSetup(cfg.log.level, cfg.log.file)
    except ConfigError as exc:
        print(f"softswitch-control: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # the log file cannot be opened
        print(f"softswitch-control: log file {cfg.log.file}: {exc.strerror}", file=sys.stderr)
        return 2
    logs.start()
    # The main thread releases the GIL on every sendto/epoll; with the DB or
    # log thread busy it then waits up to the switch interval (5 ms by
    # default) to get it back.  1 ms bounds that stall on the call path.
    sys.setswitchinterval(SWITCH_INTERVAL)
    features = _features()
    log.info("%s", features_text(features))
    if not cfg.bearers.endpoints:
        log.warning("no bearers configured ([bearers] endpoints): every call will get 503")
    daemon = ControlDaemon(
        cfg, config_path, required=required, key=key, logs=logs, features=features
    )
    metrics = None
    if cfg.metrics.listen is not None:
        host, port = cfg.metrics.listen
        metrics = MetricsServer(host, port, make_registry(daemon))
        try:
            metrics.start()
        except OSError as exc:
            where = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
            message = f"[metrics] listen {where}: {exc.strerror or exc}"
            if cfg.log.file:
                log.error("cannot start: %s", message)
            logs.stop()
            print(f"softswitch-control: {message}", file=sys.stderr)
            return 2
        log.info("Prometheus metrics on %s", metrics.url)
    try:
        loop_factory = None
        if features["uvloop"]:
            import uvloop  # type: ignore[import-not-found,unused-ignore]

            loop_factory = uvloop.new_event_loop
        with asyncio.Runner(loop_factory=loop_factory) as runner:
            return runner.run(daemon.run())
    except StartupError as exc:
        if cfg.log.file:  # stderr gets the line below; a log file gets it too
            log.error("cannot start: %s", exc)
        logs.stop()
        print(f"softswitch-control: {exc}", file=sys.stderr)
        return 1
    except Exception:
        log.exception("fatal error")
        return 1
    finally:
        if metrics is not None:
            metrics.close()
        logs.stop()


if __name__ == "__main__":
    sys.exit(main())
