"""softswitch-bearer: one media bearer process (one per core, systemd template unit).

Theory of operation
-------------------
The daemon is the I/O edge around three sans-I/O or self-contained parts:

* ``bearer.relay.Relay`` owns the epoll loop, the RTP/RTCP sockets and the
  20 ms tick; the daemon registers its control socket and the signal
  wake-up fd with it as readers, and a few timers;
* ``softswitch.protocol.endpoint.EventSender`` is the protocol's bearer end: it decodes
  and authenticates control datagrams, answers retransmitted requests from
  its reply cache (a retransmitted ALLOCATE gets the identical reply and
  allocates nothing twice), retransmits our events until acked and runs the
  heartbeats.  The daemon maps each new request to one Relay call;
* ``bearer.recorder.RecorderWriter`` is the only thread that touches
  recordings on disk.

Control talks over a UNIX datagram socket (one host) or UDP with every
datagram HMAC-tagged (two hosts); a bearer configured for UDP without a
usable key file refuses to start.  Events and heartbeats go to the address of
the most recent authentic control request.  Malformed or unauthenticated
datagrams are counted by reason and dropped, never a traceback; one whose tag
fails (a control with another key, most likely) also gets the EventSender's
empty, rate-limited refusal and a warning naming its source, at most once a
minute per source.

Signals are only *noted*: ``signal.set_wakeup_fd`` writes the signal number
to a socketpair the loop reads (the Python-level handlers do nothing), so
all the work happens on the loop: SIGTERM/SIGINT stop gracefully (no more
control requests, recordings drained to valid WAV files, socket file
removed, exit 0); SIGHUP reopens the log file.
"""

from __future__ import annotations

import argparse
import collections
import errno
import logging
import os
import re
import signal
import socket
import sys
import time
from collections import Counter
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from bearer.ports import raise_fd_limit
from bearer.recorder import RecorderWriter, Recording
from bearer.relay import Relay, RelayError
from bearer.session import Session
from softswitch.daemonkit.bearerconf import load_bearer_config
from softswitch.daemonkit.config import ConfigError, resolve_config_dir
from softswitch.daemonkit.logsetup import LogSetup
from softswitch.daemonkit.outbox import Outbox
from softswitch.daemonkit.sdnotify import Notifier
from softswitch.daemonkit.startup import StartupError, open_control_socket
from softswitch.protocol import (
    MAX_DATAGRAM,
    Allocate,
    Allocated,
    AllocFlags,
    Delete,
    Deleted,
    ErrorCode,
    ErrorReply,
    Event,
    Join,
    Joined,
    KeyFileError,
    Leave,
    Left,
    Message,
    MsgType,
    Packet,
    ProtocolError,
    Reason,
    Record,
    RecordingDone,
    RecordReply,
    Stats,
    StatsReply,
    Update,
    Updated,
    load_key,
)
from softswitch.protocol.endpoint import EventSender, RequestReceived

__all__ = ["BearerDaemon", "main"]

log = logging.getLogger("bearer.daemon")

STATUS_PERIOD = 5.0
"""Seconds between STATUS= updates to systemd."""
LOAD_PERIOD = 1.0
"""Seconds between CPU and packet-rate measurements (heartbeat contents); the
session count in heartbeats is updated at every ALLOCATE and DELETE."""
MAX_CONTROL_BATCH = 64
"""Control datagrams read per wake-up, so RTP is never starved by a flood."""
HMAC_WARN_PERIOD = 60.0
"""Seconds between two warnings about bad-HMAC datagrams from one source."""
MAX_HMAC_WARN_SOURCES = 64
MAX_UNSENT_EVENTS = 1000
"""Events kept while no control peer is known yet; older ones are dropped."""
FDS_PER_SESSION = 6  # 2 legs x (RTP, RTCP, catcher)
SWITCH_INTERVAL = 0.001
"""sys.setswitchinterval for the bearer, as softswitch-control sets it: the
loop releases the GIL on every sendto/epoll_wait, and with the recorder's
writer thread busy it would wait up to the default 5 ms to get it back."""


def _safe_name(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]", "_", text)[:64] or "call"


class BearerDaemon:
    """One bearer instance: control socket, relay, recordings, systemd integration."""

    def __init__(self, cfg: SimpleNamespace, notifier: Notifier | None = None) -> None:
        b = cfg.bearer
        self.cfg = cfg
        self.instance = b.instance
        self.notifier = notifier if notifier is not None else Notifier()
        self.epoch = time.time_ns()
        self.drops: Counter[str] = Counter()
        self.started = time.monotonic()
        kind, address, port = b.control
        self.key: bytes | None = None
        if kind == "udp":
            try:
                self.key = load_key(b.key_file)
            except KeyFileError as e:
                raise StartupError(f"{e} (required for control = udp:{address}:{port})") from None
        self.control = open_control_socket(
            kind, address, port, what="control socket", owner="another bearer"
        )
        self.control_path: str | None = address if kind == "unix" else None
        # Replies and events control's full socket queue refused (EAGAIN):
        # sent again, in order, on the next control read or tick (20 ms).
        self.outbox = Outbox(self.control, self.drops, "send_")
        self.recordings_dir = Path(b.recordings_dir)
        try:
            self.recordings_dir.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            log.warning("recordings directory %s: %s", self.recordings_dir, e.strerror)
        raise_fd_limit(b.max_sessions * FDS_PER_SESSION + 64)
        self.writer = RecorderWriter()
        self.relay = Relay(
            b.media_address,
            b.port_first,
            b.port_last,
            max_sessions=b.max_sessions,
            media_timeout=b.media_timeout,
            on_event=self._event,
            recorder=self._start_recording,
        )
        now = time.monotonic()
        self.proto = EventSender(self.key, self.epoch, now, heartbeat_interval=b.heartbeat_interval)
        self.proto.set_load(0, b.max_sessions, 0, 0)
        self._reported_sessions = 0
        self._hmac_warned: dict[Any, list] = {}  # source -> [last warning, suppressed]
        self.peer: Any = None
        self._unsent: collections.deque[Event] = collections.deque(maxlen=MAX_UNSENT_EVENTS)
        self._sig_r, self._sig_w = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        self._sig_r.setblocking(False)
        self._sig_w.setblocking(False)
        self._stopping = False
        self._reopen_logs: Any = None
        self._cpu = (now, self._cpu_seconds())
        self._pkts = (now, 0)
        self.cpu_percent = 0.0
        self.pps = 0.0

    # ------------------------------------------------------------------ control

    def _on_control(self) -> None:
        """Read a bounded batch of control datagrams and answer each."""
        sock = self.control
        now = time.monotonic()
        for _ in range(MAX_CONTROL_BATCH):
            try:
                data, peer = sock.recvfrom(MAX_DATAGRAM + 1)
            except BlockingIOError:
                break
            except OSError as e:
                self.drops[f"recv_{errno.errorcode.get(e.errno or 0, 'error')}"] += 1
                break
            if not peer:
                self.drops["unaddressable"] += 1  # an unbound UNIX socket: no reply possible
                continue
            try:
                events = self.proto.receive(data, peer, now)
            except ProtocolError as e:
                self.drops[e.reason.value] += 1
                if e.reason is Reason.BAD_HMAC:
                    self._warn_bad_hmac(peer, now)
                continue
            self._set_peer(peer, now)
            for ev in events:
                if isinstance(ev, RequestReceived):
                    reply = self._handle(ev.packet)
                    if len(self.relay.sessions) != self._reported_sessions:
                        self._report_load()  # before the reply: no later heartbeat is stale
                    self.proto.reply(ev.peer, ev.packet, reply, now)
        self._flush()

    def _warn_bad_hmac(self, peer: Any, now: float) -> None:
        """Say (at most every ``HMAC_WARN_PERIOD`` per source) that someone sends
        us control datagrams under another key; the EventSender has answered
        with a refusal so that control can say so too."""
        warned = self._hmac_warned
        entry = warned.get(peer)
        if entry is not None and now - entry[0] < HMAC_WARN_PERIOD:
            entry[1] += 1
            return
        if entry is None and len(warned) >= MAX_HMAC_WARN_SOURCES:
            for p in [p for p, (at, _) in warned.items() if now - at >= HMAC_WARN_PERIOD]:
                del warned[p]
            if len(warned) >= MAX_HMAC_WARN_SOURCES:
                return  # a flood from many sources: counted in the drops
        more = entry[1] if entry is not None else 0
        warned[peer] = [now, 0]
        if isinstance(peer, tuple):
            host = f"[{peer[0]}]" if ":" in peer[0] else peer[0]
            source = f"udp:{host}:{peer[1]}"
        else:
            source = f"unix:{peer}"
        log.warning(
            "control datagram from %s failed HMAC: different key?%s",
            source,
            f" ({more} more since the last warning)" if more else "",
        )

    def _set_peer(self, peer: Any, now: float) -> None:
        """Events and heartbeats follow the most recent authentic control peer."""
        if peer == self.peer:
            return
        if self.peer is not None:
            self.proto.remove_peer(self.peer)
        self.peer = peer
        self.proto.add_peer(peer, now)
        while self._unsent:
            self.proto.send_event(self._unsent.popleft(), peer, now)

    def _handle(self, packet: Packet) -> Message:
        """One new (not retransmitted) request -> its reply."""
        msg = packet.message
        relay = self.relay
        try:
            if type(msg) is Allocate:
                ports = relay.allocate(msg.session_id, msg.call_ref, msg.legs, msg.flags)
                if msg.flags & AllocFlags.RECORD:
                    try:
                        relay.record(msg.session_id, True, "")
                    except RelayError:
                        relay.delete(msg.session_id)  # all or nothing: control may retry
                        raise
                addr = self.cfg.bearer.advertised_address
                keys = relay.keys(msg.session_id)
                return Allocated(msg.session_id, addr, tuple(ports), keys if any(keys) else ())
            if type(msg) is Update:
                relay.update(msg.session_id, msg.leg, msg.spec)
                return Updated(msg.session_id, relay.keys(msg.session_id)[msg.leg])
            if type(msg) is Delete:
                return Deleted(msg.session_id, relay.delete(msg.session_id))
            if type(msg) is Record:
                return RecordReply(
                    msg.session_id, relay.record(msg.session_id, msg.start, msg.path)
                )
            if type(msg) is Join:
                n = relay.join(msg.room_id, msg.session_id, msg.leg, msg.flags)
                return Joined(msg.room_id, msg.session_id, n)
            if type(msg) is Leave:
                n = relay.leave(msg.room_id, msg.session_id, msg.leg)
                return Left(msg.room_id, msg.session_id, n)
            if type(msg) is Stats:
                if msg.session_id:
                    return StatsReply(msg.session_id, relay.session_counters(msg.session_id))
                return StatsReply(0, self.counters())
            return ErrorReply(MsgType(packet.msg_type), ErrorCode.BAD_REQUEST, "not a request")
        except RelayError as e:
            return ErrorReply(MsgType(packet.msg_type), e.code, e.text)
        except Exception:  # a bug must cost one request, not every call on the bearer
            log.exception("request %s failed", type(msg).__name__)
            self.drops["internal_error"] += 1
            return ErrorReply(MsgType(packet.msg_type), ErrorCode.INTERNAL, "internal error")

    def counters(self) -> dict[str, int | float]:
        """Whole-bearer STATS: the relay's counters plus the control channel's."""
        out = self.relay.counters()
        out["instance"] = self.instance
        out["uptime_s"] = round(time.monotonic() - self.started, 1)
        out["cpu_percent"] = round(self.cpu_percent, 1)
        out["packets_per_second"] = round(self.pps)
        out["recordings_dropped_chunks"] = self.writer.dropped
        out["recordings_errors"] = self.writer.errors
        for name, n in self.drops.items():
            out[f"control_drop_{name}"] = n
        out["control_send_deferred"] = self.outbox.deferred
        out["control_send_waiting"] = len(self.outbox)
        for name, n in self.proto.counters.items():
            out[f"control_{name}"] = n
        return out

    def _event(self, event: Event) -> None:
        """An event for control: retransmitted by the EventSender until acked."""
        if self.peer is None:
            self._unsent.append(event)
            return
        self.proto.send_event(event, self.peer, time.monotonic())
        self._flush()

    def _flush(self) -> None:
        # EPOLLOUT would not help: Linux polls an unconnected UNIX datagram
        # socket writable even while the receiver's queue is full.
        outbox = self.outbox
        outbox.flush()
        for data, peer in self.proto.datagrams_to_send():
            outbox.send(data, peer)

    # ------------------------------------------------------------------ recordings

    def _start_recording(self, s: Session, path: str) -> Recording:
        """The relay's recorder factory: a Recording whose completion becomes an event."""
        if not path:
            stamp = time.strftime("%Y%m%d-%H%M%S")
            path = f"{stamp}-{s.id}-{_safe_name(s.call_ref)}.wav"
        p = Path(path)
        if not p.is_absolute():
            p = self.recordings_dir / p
        if ".." in p.parts:
            raise ValueError(f"{path}: '..' is not allowed in a recording path")
        sid = s.id

        def done(file: str, seconds: float) -> None:
            self._event(RecordingDone(sid, file, seconds))

        return Recording(str(p), self.writer, done)

    # ------------------------------------------------------------------ timers

    @staticmethod
    def _cpu_seconds() -> float:
        t = os.times()
        return t.user + t.system

    def _timer(self, now: float) -> None:
        """Every tick: protocol retransmissions and heartbeats, the watchdog, recordings."""
        t = self.proto.get_timer()
        if t is not None and now >= t:
            self.proto.handle_timer(now)
            self._flush()
        elif len(self.outbox):
            self.outbox.flush()
        self.notifier.watchdog(now)
        self.writer.pump()

    def _load(self, now: float) -> None:
        then, cpu = self._cpu
        cpu_now = self._cpu_seconds()
        if now > then:
            self.cpu_percent = 100.0 * (cpu_now - cpu) / (now - then)
        self._cpu = (now, cpu_now)
        then, pk = self._pkts
        pk_now = self.relay.packet_total()
        if now > then:
            self.pps = (pk_now - pk) / (now - then)
        self._pkts = (now, pk_now)
        self._report_load()

    def _report_load(self) -> None:
        """What our heartbeats (and replies to control's) say from now on.

        The session count is current: it is updated after every request that
        changes it, so a heartbeat sent after an ALLOCATE's reply never says
        the session is not there (control would undo its own count and send
        the next call to the same bearer); CPU and packet rate are the last
        ``LOAD_PERIOD`` measurement.
        """
        n = len(self.relay.sessions)
        self._reported_sessions = n
        self.proto.set_load(n, self.relay.max_sessions, int(self.cpu_percent), int(self.pps))

    def _status_text(self) -> str:
        return (
            f"{len(self.relay.sessions)} calls, {self.pps:.0f} packets/s, "
            f"{self.cpu_percent:.0f}% CPU, {len(self.relay.rooms)} rooms"
        )

    def _status(self, now: float) -> None:
        """STATUS= for systemctl status, every STATUS_PERIOD seconds."""
        self.notifier.status(self._status_text())

    # ------------------------------------------------------------------ signals and life

    def _on_signal(self) -> None:
        try:
            data = self._sig_r.recv(64)
        except BlockingIOError:
            return
        for signum in data:
            if signum in (signal.SIGTERM, signal.SIGINT):
                if not self._stopping:
                    log.info("signal %s: stopping", signal.Signals(signum).name)
                    self._stopping = True
                    self.relay.stop()
            elif signum == signal.SIGHUP:
                log.info("SIGHUP: reopening logs")
                if self._reopen_logs is not None:
                    self._reopen_logs()

    def serve(self, logs: LogSetup | None = None) -> int:
        """Run until SIGTERM/SIGINT; returns the exit status."""
        self._reopen_logs = logs.reopen if logs is not None else None
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(signum, lambda *_: None)  # noted through the wake-up fd only
        signal.set_wakeup_fd(self._sig_w.fileno(), warn_on_full_buffer=False)
        relay = self.relay
        relay.add_reader(self.control.fileno(), self._on_control)
        relay.add_reader(self._sig_r.fileno(), self._on_signal)
        relay.call_every(0.0, self._timer)
        relay.call_every(LOAD_PERIOD, self._load)
        relay.call_every(STATUS_PERIOD, self._status)
        self.writer.start()
        b = self.cfg.bearer
        where = self.control_path or f"udp:{b.control[1]}:{b.control[2]}"
        log.info(
            "bearer %d serving control on %s, media %s ports %d-%d, CPU affinity %s",
            self.instance,
            where,
            b.media_address,
            b.port_first,
            b.port_last,
            sorted(os.sched_getaffinity(0)),
        )
        self.notifier.ready(f"{self._status_text()}; control on {where}")
        try:
            relay.run()
        finally:
            self.shutdown()
        return 0

    def shutdown(self) -> None:
        """Stop accepting, drain recordings to valid files, remove the socket file."""
        self.notifier.stopping()
        signal.set_wakeup_fd(-1)
        self.relay.remove_reader(self.control.fileno())
        self.control.close()
        if self.control_path:
            try:
                os.unlink(self.control_path)
            except OSError:
                pass
        n = len(self.relay.recordings)
        self.relay.close()  # closes every recording: buffered audio goes to the writer
        self.writer.stop(drain=True)
        log.info("stopped (%d recordings closed)", n)
        self.notifier.close()


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="softswitch-bearer",
        description="Media bearer of the softswitch: relays, mixes, transcodes and records RTP.",
    )
    p.add_argument(
        "--instance", type=int, required=True, metavar="N", help="instance number (0 = core 0)"
    )
    p.add_argument(
        "--config-dir",
        metavar="DIR",
        help="directory holding bearer.conf (default: $SOFTSWITCH_CONFIG_DIR or /etc/softswitch)",
    )
    return p


def main(argv: list[str] | None = None) -> int:
    """Entry point of softswitch-bearer; returns the exit status (2: bad usage or config)."""
    parser = _parser()
    args = parser.parse_args(argv)
    if args.instance < 0:
        parser.error("--instance must be 0 or more")
    config_dir = resolve_config_dir(args.config_dir)
    try:
        cfg = load_bearer_config(config_dir / "bearer.conf", args.instance)
    except ConfigError as e:
        print(f"softswitch-bearer: {e}", file=sys.stderr)
        return 2
    try:
        logs = LogSetup(cfg.log.level, cfg.log.file).start()
    except OSError as e:
        print(f"softswitch-bearer: log file {cfg.log.file}: {e.strerror}", file=sys.stderr)
        return 2
    sys.setswitchinterval(SWITCH_INTERVAL)
    try:
        daemon = BearerDaemon(cfg)
    except StartupError as e:
        logs.stop()
        print(f"softswitch-bearer: {e}", file=sys.stderr)
        return 2
    try:
        return daemon.serve(logs)
    finally:
        logs.stop()


if __name__ == "__main__":
    sys.exit(main())
