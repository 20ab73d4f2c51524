"""The real bearer daemon for tests and benchmarks: process, control client, phones.

Everything here uses real sockets on loopback: the bearer is started as the
``softswitch-bearer`` console script with a temporary configuration, control
talks to it over its real UNIX (or UDP+HMAC) socket through a tiny
synchronous client built on ``softswitch.protocol``, and phones are plain UDP
sockets that send RTP built with ``bearer.rtp.build_rtp``.
"""

from __future__ import annotations

import collections
import os
import random
import select
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bearer.rtp import build_rtp
from bench.harness.process import terminate
from softswitch.daemonkit.config import dumps
from softswitch.daemonkit.runtime import die_with_parent
from softswitch.protocol import (
    Allocate,
    Allocated,
    Event,
    EventAck,
    LegSpec,
    Message,
    Packet,
    PayloadType,
    ProtocolError,
    Stats,
    StatsReply,
    Update,
    decode,
    encode,
)

ROOT = Path(__file__).resolve().parents[2]
BEARER_EXE = Path(sys.executable).with_name("softswitch-bearer")

PCMU = PayloadType(0, "PCMU", 8000)
PCMA = PayloadType(8, "PCMA", 8000)
TEL_EVENT = PayloadType(101, "telephone-event", 8000)


def leg_spec(
    addr: tuple[str, int] | None = None,
    codec: PayloadType = PCMU,
    dtmf: PayloadType | None = TEL_EVENT,
    **kw: Any,
) -> LegSpec:
    """A LegSpec as control would build it from a phone's SDP."""
    pts = (codec,) + ((dtmf,) if dtmf is not None else ())
    host, port = addr if addr is not None else ("0.0.0.0", 0)
    return LegSpec(
        host,
        port,
        pts,
        codec.pt,
        dtmf.pt if dtmf is not None else None,
        **kw,
    )


def render_conf(sections: dict[str, dict[str, Any]]) -> str:
    """A bearer.conf (TOML) with these sections of values."""
    return dumps(sections)


#: The slices handed out last in this process: the bearers of one switch.
_RECENT_SLICES: collections.deque[tuple[int, int]] = collections.deque(maxlen=3)


def free_port_base(span: int) -> int:
    """A random even base for a port slice, unlikely to collide with other
    tests, and never overlapping the last few slices handed out here: two
    bearers of one switch on overlapping slices take each other's ports, and
    ALLOCATE fails with NO_PORTS ("ports held by other processes") under load
    (seen in bench control: 3 % of calls at 100/s, most at 500/s)."""
    recent = list(_RECENT_SLICES)
    for avoid in (recent, recent[-1:]):  # all of them if there is room, else the last
        for _ in range(1000):
            base = random.randrange(20000, 28000 - span) & ~1
            if all(base + span <= lo or hi <= base for lo, hi in avoid):
                _RECENT_SLICES.append((base, base + span))
                return base
    _RECENT_SLICES.append((base, base + span))
    return base


@dataclass
class BearerProcess:
    """A running softswitch-bearer and where to reach it."""

    proc: subprocess.Popen[bytes]
    config_dir: Path
    control: Any  # socket path, or (host, port)
    key: bytes | None
    recordings: Path
    log_path: Path
    port_first: int
    port_last: int
    clients: list[ControlClient] = field(default_factory=list)

    def client(self) -> ControlClient:
        c = ControlClient(self.control, self.key, self.config_dir)
        self.clients.append(c)
        return c

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15.0) -> int:
        _RUNNING[:] = [p for p in _RUNNING if p is not self]
        code = terminate(self.proc, sig, timeout)
        for c in self.clients:
            c.close()
        return code


_RUNNING: list[BearerProcess] = []
"""Bearers started and not stopped yet: what ``stop_leftovers`` stops."""


def stop_leftovers() -> list[BearerProcess]:
    """Stop every bearer started here and not stopped yet (a test that failed
    before its ``stop``); the autouse fixture in tests/integration/conftest.py
    calls it after every test, so a failure never leaves a bearer running."""
    leftovers = list(_RUNNING)
    for bp in leftovers:
        bp.stop(timeout=5.0)
    return leftovers


def start_bearer(
    tmp: Path,
    *,
    udp: bool = False,
    media_timeout: float = 30,
    ports: int = 400,
    max_sessions: int = 100,
    extra_env: dict[str, str] | None = None,
    cpu: int | None = None,
    log_level: str = "info",
    log_file: Path | None = None,
    wait: bool = True,
    media_address: str = "127.0.0.1",
) -> BearerProcess:
    """Write a bearer.conf into ``tmp`` and start instance 0; wait until it answers."""
    conf_dir = tmp / "etc"
    conf_dir.mkdir(parents=True, exist_ok=True)
    rec = tmp / "recordings"
    base = free_port_base(ports)
    key: bytes | None = None
    if udp:
        key = os.urandom(32)
        key_file = conf_dir / "control.key"
        key_file.write_text(key.hex() + "\n")
        key_file.chmod(0o600)
        probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        probe.bind(("127.0.0.1", 0))
        ctl_port = probe.getsockname()[1]
        probe.close()
        control_line = f"udp:127.0.0.1:{ctl_port}"
        control: Any = ("127.0.0.1", ctl_port)
    else:
        key_file = conf_dir / "control.key"
        sock_path = tmp / "run" / "bearer-%i.sock"
        control_line = f"unix:{sock_path}"
        control = str(sock_path).replace("%i", "0")
    (conf_dir / "bearer.conf").write_text(
        render_conf(
            {
                "bearer": {
                    "control": control_line,
                    "key_file": str(key_file),
                    "media_address": media_address,
                    "port_min": base,
                    "ports_per_instance": ports,
                    "max_sessions": max_sessions,
                    "media_timeout": media_timeout,
                    "recordings_dir": str(rec),
                    "heartbeat_interval": 1.0,
                },
                "log": {"level": log_level, "file": str(log_file or "")},
            }
        )
    )
    log_path = tmp / "bearer.log"
    env = dict(os.environ)
    env.pop("NOTIFY_SOCKET", None)
    env.update(extra_env or {})
    cmd = [str(BEARER_EXE), "--instance", "0", "--config-dir", str(conf_dir)]
    if cpu is not None and shutil.which("taskset"):
        cmd = ["taskset", "-c", str(cpu), *cmd]
    with open(log_path, "wb") as logf:
        proc = subprocess.Popen(
            cmd,
            stdout=logf,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=ROOT,
            preexec_fn=die_with_parent(os.getpid()),
        )
    bp = BearerProcess(proc, conf_dir, control, key, rec, log_path, base, base + ports - 1)
    _RUNNING.append(bp)
    if not wait:
        return bp
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:  # bounded: 15 s
        if proc.poll() is not None:
            raise RuntimeError(f"bearer exited {proc.returncode}:\n{bp.log()}")
        if udp or os.path.exists(control):
            try:
                bp.client().request(Stats(0), timeout=0.5)
                return bp
            except (TimeoutError, ConnectionRefusedError, FileNotFoundError):
                pass  # not listening yet (or a stale socket file not yet replaced)
        time.sleep(0.05)
    bp.stop(signal.SIGKILL)
    raise RuntimeError(f"bearer did not answer within 15 s:\n{bp.log()}")


class ControlClient:
    """A synchronous control-protocol client over a real socket (one request at a time).

    Requests are retransmitted every 200 ms with the same request id until a
    reply with that id arrives; events that arrive meanwhile are acked and
    kept in ``events``.
    """

    _counter = 0

    def __init__(self, control: Any, key: bytes | None, tmp: Path) -> None:
        self.control = control
        self.key = key
        self.epoch = time.time_ns()
        self.next_id = random.randrange(1, 1 << 30)
        self.events: list[Event] = []
        if isinstance(control, str):
            ControlClient._counter += 1
            self.path = str(tmp / f"ctl-{os.getpid()}-{ControlClient._counter}.sock")
            if os.path.exists(self.path):
                os.unlink(self.path)
            self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            self.sock.bind(self.path)
        else:
            self.path = ""
            self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            self.sock.bind(("127.0.0.1", 0))

    def close(self) -> None:
        self.sock.close()
        if self.path and os.path.exists(self.path):
            os.unlink(self.path)

    def send_raw(self, data: bytes) -> None:
        self.sock.sendto(data, self.control)

    def encode(self, msg: Message, request_id: int | None = None) -> bytes:
        if request_id is None:
            request_id = self.next_id
            self.next_id += 1
        return encode(msg, request_id, self.epoch, self.key)

    def _receive(self, timeout: float) -> Packet | None:
        r, _, _ = select.select([self.sock], [], [], max(timeout, 0))
        if not r:
            return None
        data = self.sock.recv(65536)
        try:
            pkt = decode(data, self.key)
        except ProtocolError:
            return None
        if isinstance(pkt.message, Event):
            self.sock.sendto(encode(EventAck(), pkt.request_id, self.epoch, self.key), self.control)
            self.events.append(pkt.message)
        return pkt

    def request_raw(
        self, data: bytes, request_id: int, timeout: float = 3.0
    ) -> tuple[bytes, Message]:
        """Send prepared bytes until the reply with ``request_id`` comes; (raw reply, message)."""
        deadline = time.monotonic() + timeout
        next_send = 0.0
        while True:  # bounded by the deadline
            now = time.monotonic()
            if now >= deadline:
                raise TimeoutError(f"no reply to request {request_id}")
            if now >= next_send:
                self.sock.sendto(data, self.control)
                next_send = now + 0.2
            r, _, _ = select.select([self.sock], [], [], min(deadline, next_send) - now)
            if not r:
                continue
            raw = self.sock.recv(65536)
            try:
                pkt = decode(raw, self.key)
            except ProtocolError:
                continue
            if isinstance(pkt.message, Event):
                self.sock.sendto(
                    encode(EventAck(), pkt.request_id, self.epoch, self.key), self.control
                )
                self.events.append(pkt.message)
                continue
            if pkt.message.REPLY and pkt.request_id == request_id:
                return raw, pkt.message

    def request(self, msg: Message, timeout: float = 3.0) -> Message:
        rid = self.next_id
        self.next_id += 1
        return self.request_raw(encode(msg, rid, self.epoch, self.key), rid, timeout)[1]

    def wait_event(self, pred: Callable[[Event], bool], timeout: float = 5.0) -> Event:
        """The first event (already received or arriving) matching ``pred``."""
        deadline = time.monotonic() + timeout
        while True:  # bounded by the deadline
            for ev in self.events:
                if pred(ev):
                    return ev
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"no matching event; got {self.events}")
            self._receive(min(left, 0.1))

    def stats(self, session_id: int = 0) -> dict[str, Any]:
        reply = self.request(Stats(session_id))
        assert isinstance(reply, StatsReply), reply
        return reply.counters

    def allocate(self, session_id: int, specs: tuple[LegSpec, ...], **kw: Any) -> Allocated:
        reply = self.request(Allocate(session_id, f"call-{session_id}", specs, **kw))
        assert isinstance(reply, Allocated), reply
        return reply

    def update(self, session_id: int, leg: int, spec: LegSpec) -> Message:
        return self.request(Update(session_id, leg, spec))


class Phone:
    """A UDP socket standing in for a phone's RTP port."""

    def __init__(self, ssrc: int | None = None, host: str = "127.0.0.1") -> None:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.host = host
        self.sock = socket.socket(family, socket.SOCK_DGRAM)
        self.sock.bind((host, 0))
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        self.addr: tuple[str, int] = self.sock.getsockname()[:2]
        self.ssrc = ssrc if ssrc is not None else random.getrandbits(32)
        self.seq = random.getrandbits(16)
        self.ts = random.getrandbits(32)

    def close(self) -> None:
        self.sock.close()

    def send(self, port: int, payload: bytes, pt: int = 0, marker: bool = False) -> None:
        """One RTP packet to the bearer port; seq and timestamp advance as a phone's do."""
        pkt = build_rtp(pt, self.seq, self.ts, self.ssrc, payload, marker)
        self.sock.sendto(pkt, (self.host, port))
        self.seq = (self.seq + 1) & 0xFFFF
        self.ts = (self.ts + len(payload)) & 0xFFFFFFFF

    def send_raw(self, port: int, data: bytes) -> None:
        self.sock.sendto(data, (self.host, port))

    def recv_all(self, timeout: float = 0.3, limit: float = 3.0) -> list[bytes]:
        """Everything that arrives until ``timeout`` of silence (at most ``limit`` seconds)."""
        out = []
        end = time.monotonic() + limit
        while time.monotonic() < end:  # bounded by the limit
            r, _, _ = select.select([self.sock], [], [], timeout)
            if not r:
                break
            out.append(self.sock.recv(4096))
        return out

    def recv(self, timeout: float = 2.0) -> bytes | None:
        r, _, _ = select.select([self.sock], [], [], timeout)
        return self.sock.recv(4096) if r else None
