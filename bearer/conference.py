"""The bearer's own RTP streams to conference participants (the mix, every 20 ms)."""

from __future__ import annotations

import random
from typing import TYPE_CHECKING, Any

import numpy as np

from bearer.leg import OUT_BYTES, OUT_PKTS, SEND_ERROR, Leg
from bearer.mixer import FRAME_SAMPLES, Mixer
from bearer.srtp import protecting
from softswitch.protocol import JoinFlags

if TYPE_CHECKING:
    from bearer.session import Session

__all__ = ["ConferenceOut"]

_CONF_PKT = np.dtype(
    [
        ("b0", "u1"),
        ("b1", "u1"),
        ("seq", ">u2"),
        ("ts", ">u4"),
        ("ssrc", ">u4"),
        ("payload", "u1", (FRAME_SAMPLES,)),
    ]
)
"""One conference output packet: RTP header (RFC 3550 §5.1) + 20 ms of G.711."""


class ConferenceOut:
    """The bearer's own RTP streams to conference participants.

    Each participant gets its own SSRC, sequence numbers and timestamps
    (RFC 3550 §5.1: a mixer is a new synchronisation source).  Headers for
    all participants are updated with one numpy structured-array pass per
    tick, in place; only the send is per participant.
    """

    def __init__(self, mixer: Mixer) -> None:
        self.mixer = mixer
        self.dest: dict[tuple[int, int], list[Any]] = {}  # pid -> [send, dest, counters, deaf]
        self.pids: list[Any] | None = None
        self.pk = np.zeros(0, dtype=_CONF_PKT)
        self.rows: dict[Any, int] = {}
        self.out: list[tuple[Any, Any, list[Any], memoryview]] = []

    def update(self, s: Session) -> None:
        """Refresh where a participant's mix goes (after latching, UPDATE, JOIN/LEAVE)."""
        for leg in s.legs:
            pid = (s.id, leg.index)
            if s.room is None or leg.rtp is None:
                self.dest.pop(pid, None)
                continue
            d = self.dest.setdefault(pid, [None, None, leg.c, False, leg])
            if not leg.receives or s.room_flags & JoinFlags.DEAF:
                d[0], d[1] = None, None
            elif leg.final:
                d[0], d[1] = leg.rtp.send, None
            elif leg.destination is not None:
                d[0], d[1] = leg.rtp.sendto, leg.destination
            else:
                d[0], d[1] = None, None
            crypto = leg.srtp
            if crypto is not None and d[0] is not None:  # the mix is encrypted last
                d[0] = None if crypto.tx is None else protecting(crypto.tx, d[0])
        self.pids = None  # realign at the next tick

    def push(self, s: Session, leg: Leg, seq: int, ts: int, payload: memoryview) -> None:
        """One received frame of a participant into the mixer (its jitter buffer)."""
        sel = leg.spec.selected
        self.mixer.push((s.id, leg.index), seq, ts, payload, sel.name if sel else "PCMU")

    def _realign(self, pids: list[Any]) -> None:
        """New participant order from the mixer: carry each stream's header state over.

        The packets live in one persistent structured array (header fields +
        payload); ``out`` holds, per participant that receives, its send
        callable, destination, counters and a memoryview of its row.
        """
        old_rows, old_pk = self.rows, self.pk
        pk = np.zeros(len(pids), dtype=_CONF_PKT)
        for i, pid in enumerate(pids):
            j = old_rows.get(pid)
            if j is not None:
                pk[i] = old_pk[j]
            else:
                d = self.dest.get(pid)
                leg = d[4] if d is not None else None
                pt = leg.spec.selected_pt if leg is not None else None
                pk[i]["b0"] = 0x80
                pk[i]["b1"] = pt if pt is not None else 0
                pk[i]["seq"] = random.getrandbits(16)
                pk[i]["ts"] = random.getrandbits(32)
                pk[i]["ssrc"] = random.getrandbits(32)
        self.pk = pk
        self.rows = {pid: i for i, pid in enumerate(pids)}
        flat = pk.view(np.uint8).reshape(-1).data  # memoryview(), as numpy's stubs allow
        size = _CONF_PKT.itemsize
        self.out = []
        for i, pid in enumerate(pids):
            d = self.dest.get(pid)
            if d is not None and d[0] is not None:
                self.out.append((d[0], d[1], d[2], flat[i * size : (i + 1) * size]))
        self.pids = pids

    def tick(self) -> None:
        """Mix every room and send each participant its packet (every 20 ms)."""
        pids, enc = self.mixer.tick_array()
        if pids is not self.pids:
            self._realign(pids)
        pk = self.pk
        pk["seq"] += 1
        pk["ts"] += FRAME_SAMPLES
        pk["payload"] = enc
        size = _CONF_PKT.itemsize
        for send, dest, c, row in self.out:
            try:
                if dest is None:
                    send(row)
                else:
                    send(row, dest)
                c[OUT_PKTS] += 1
                c[OUT_BYTES] += size
            except OSError:
                c[SEND_ERROR] += 1
