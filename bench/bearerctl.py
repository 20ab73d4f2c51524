"""A benchmark's side of the bearer: start a real softswitch-bearer and order it about.

``BearerUnderTest`` writes a bearer.conf into a temporary directory, starts the
``softswitch-bearer`` console script (pinned to one CPU when asked) and stops
it with SIGTERM.  ``Control`` speaks the private control protocol over the
real UNIX socket, pipelining requests (a window of them in flight,
retransmitted with their request id until answered), so setting up a
thousand calls takes a second, not a thousand round trips of Python.
"""

from __future__ import annotations

import os
import select
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from bench.harness.bearer import BEARER_EXE, render_conf
from bench.harness.process import terminate
from softswitch.protocol import (
    Event,
    EventAck,
    Message,
    Packet,
    ProtocolError,
    Stats,
    StatsReply,
    decode,
    encode,
)

__all__ = ["BearerUnderTest", "Control"]


class Control:
    """Pipelined synchronous control client over a UNIX datagram socket."""

    def __init__(self, path: str, tmpdir: Path) -> None:
        self.path = path
        self.local = str(tmpdir / f"bench-ctl-{os.getpid()}.sock")
        if os.path.exists(self.local):
            os.unlink(self.local)
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        self.sock.bind(self.local)
        self.epoch = time.time_ns()
        self.next_id = 1
        self.events: list[Event] = []

    def close(self) -> None:
        self.sock.close()
        if os.path.exists(self.local):
            os.unlink(self.local)

    def many(
        self, msgs: Sequence[Message], window: int = 64, timeout: float = 30.0
    ) -> list[Message]:
        """Send every request (``window`` outstanding at once); replies in request order."""
        replies: list[Message | None] = [None] * len(msgs)
        pending: dict[int, tuple[int, bytes, float]] = {}  # rid -> (index, data, resend_at)
        nxt = 0
        done = 0
        deadline = time.monotonic() + timeout
        while done < len(msgs):  # bounded by the deadline
            now = time.monotonic()
            if now > deadline:
                raise TimeoutError(f"{len(msgs) - done} control requests unanswered")
            while nxt < len(msgs) and len(pending) < window:
                rid = self.next_id
                self.next_id += 1
                data = encode(msgs[nxt], rid, self.epoch)
                self.sock.sendto(data, self.path)
                pending[rid] = (nxt, data, now + 0.2)
                nxt += 1
            for rid, (i, data, at) in list(pending.items()):
                if now >= at:
                    self.sock.sendto(data, self.path)
                    pending[rid] = (i, data, now + 0.2)
            r, _, _ = select.select([self.sock], [], [], 0.05)
            if not r:
                continue
            for pkt in self._receive_batch(256):
                if not pkt.message.REPLY:
                    continue  # the bearer's heartbeats: its ids are not ours
                entry = pending.pop(pkt.request_id, None)
                if entry is not None:
                    replies[entry[0]] = pkt.message
                    done += 1
        return replies  # type: ignore[return-value]

    def _receive_batch(self, limit: int) -> Iterator[Packet]:
        """Read what has arrived (at most `limit`, non-blocking): events are acked
        and kept in self.events, everything else that decodes is yielded."""
        for _ in range(limit):  # bounded batch
            try:
                raw = self.sock.recv(65536, socket.MSG_DONTWAIT)
            except BlockingIOError:
                return
            try:
                pkt = decode(raw)
            except ProtocolError:
                continue
            if isinstance(pkt.message, Event):
                self.sock.sendto(encode(EventAck(), pkt.request_id, self.epoch), self.path)
                self.events.append(pkt.message)
                continue
            yield pkt

    def pump(self) -> int:
        """Ack whatever events arrived (non-blocking), so the bearer stops retransmitting."""
        before = len(self.events)
        for _ in self._receive_batch(1024):
            pass  # replies no request is waiting for
        return len(self.events) - before

    def request(self, msg: Message) -> Message:
        return self.many([msg])[0]

    def stats(self, session_id: int = 0) -> dict[str, Any]:
        reply = self.request(Stats(session_id))
        assert isinstance(reply, StatsReply), reply
        return reply.counters


class BearerUnderTest:
    """A real bearer process with its own temporary configuration."""

    def __init__(
        self,
        *,
        ports: int,
        max_sessions: int,
        cpu: int | None = None,
        nice: int = 0,
        port_min: int = 30000,
        media_timeout: float = 600,
    ) -> None:
        self.tmp = Path(tempfile.mkdtemp(prefix="bench-bearer-"))
        self.sock_path = str(self.tmp / "bearer-0.sock")
        self.recordings = self.tmp / "recordings"
        (self.tmp / "bearer.conf").write_text(
            render_conf(
                {
                    "bearer": {
                        "control": f"unix:{self.tmp}/bearer-%i.sock",
                        "media_address": "127.0.0.1",
                        "port_min": port_min,
                        "ports_per_instance": ports,
                        "max_sessions": max_sessions,
                        "media_timeout": media_timeout,
                        "recordings_dir": str(self.recordings),
                    },
                    "log": {"level": "warning"},
                }
            )
        )
        self.log_path = self.tmp / "bearer.log"
        cmd = [str(BEARER_EXE), "--instance", "0", "--config-dir", str(self.tmp)]
        env = dict(os.environ)
        env.pop("NOTIFY_SOCKET", None)

        def pin() -> None:
            if cpu is not None:
                os.sched_setaffinity(0, {cpu})
            if nice:
                os.setpriority(os.PRIO_PROCESS, 0, nice)

        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                cmd, stdout=log, stderr=subprocess.STDOUT, env=env, preexec_fn=pin
            )
        self.pid = self.proc.pid
        deadline = time.monotonic() + 15
        while not os.path.exists(self.sock_path):  # bounded: 15 s
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"bearer did not start:\n{self.log()}")
            time.sleep(0.05)
        self.control = Control(self.sock_path, self.tmp)
        self.control.stats()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self) -> int:
        self.control.close()
        code = terminate(self.proc, timeout=30)
        shutil.rmtree(self.tmp, ignore_errors=True)
        return code
