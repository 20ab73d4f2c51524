"""An RTP load generator that is not the bottleneck: batched syscalls, numpy bookkeeping.

Theory of operation
-------------------
A relay benchmark is only as good as its generator: a Python loop doing one
``sendto`` per packet would saturate before a good relay does, and the figure
would measure the generator.  So:

* **Sending** uses ``sendmmsg(2)`` through ctypes.  Every stream (one phone
  sending to one bearer port) is a row of one numpy structured array that *is*
  the packets' bytes (RTP header + payload), and a prebuilt ``mmsghdr`` array
  points at each row and its destination ``sockaddr``.  Streams are spread
  evenly over ``slots`` phases of the 20 ms packet interval (as real phones
  are: they are not synchronised), sorted so each phase's rows are
  contiguous; sending a phase is three numpy slice updates (sequence number,
  timestamp, send stamp) and one syscall.
* **Receiving** uses ``recvmmsg(2)`` with ``SO_TIMESTAMPNS``: the kernel
  stamps every datagram when it is queued on our socket, so the measured
  latency (kernel receive time minus the send stamp carried in the payload)
  does not include the time the generator takes to get round to reading it.
  Stamps are CLOCK_REALTIME on both ends (``time.time_ns()``), one clock.
* Each payload carries the stream id (u32) and the send stamp (u64, ns);
  what follows is filler.  The receiver vectorises over a batch: window
  filter, latency histogram, per-stream counts.

* With ``set_srtp`` the streams are real SRTP (pylibsrtp): every packet is
  protected with its stream's key just before ``sendmmsg`` (into a second
  array the message vector then points at), and every packet received is
  authenticated and decrypted with the key of the bearer leg it came out
  of, looked up by SSRC (one libsrtp stream per SSRC); a packet that fails
  is counted in ``srtp_errors`` and, like a packet whose payload is not what
  was sent, is lost as far as the figures go.

A measurement is valid only if the generator kept up: ``Result`` reports its
own CPU use and its schedule lag, and ``saturated`` says when not to trust it.
"""

from __future__ import annotations

import ctypes
import os
import socket
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = ["PACKET", "Generator", "Result", "cpu_seconds_of", "rss_kib_of"]

_libc = ctypes.CDLL(None, use_errno=True)
_sendmmsg = _libc.sendmmsg
_sendmmsg.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_uint, ctypes.c_int]
_sendmmsg.restype = ctypes.c_int
_recvmmsg = _libc.recvmmsg
_recvmmsg.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_uint, ctypes.c_int, ctypes.c_void_p]
_recvmmsg.restype = ctypes.c_int

MSG_DONTWAIT = 0x40
PR_SET_TIMERSLACK = 29
SO_TIMESTAMPNS = 35  # asm-generic/socket.h (SO_TIMESTAMPNS_OLD); SCM_TIMESTAMPNS is the same
PAYLOAD = 160  # 20 ms of G.711
PACKET = np.dtype(
    [
        ("b0", "u1"),
        ("b1", "u1"),
        ("seq", ">u2"),
        ("ts", ">u4"),
        ("ssrc", ">u4"),
        ("sid", ">u4"),
        ("stamp", ">u8"),
        ("fill", "u1", (PAYLOAD - 12,)),
    ]
)
"""One generated RTP packet: 12-byte header, then stream id, send stamp, filler."""
assert PACKET.itemsize == 12 + PAYLOAD

# struct mmsghdr on x86_64/aarch64 Linux: struct msghdr (56 bytes) + unsigned msg_len, padded.
_MMSG = np.dtype(
    {
        "names": ["name", "namelen", "iov", "iovlen", "control", "controllen", "flags", "len"],
        "formats": ["u8", "u4", "u8", "u8", "u8", "u8", "i4", "u4"],
        "offsets": [0, 8, 16, 24, 32, 40, 48, 56],
        "itemsize": 64,
    }
)
_IOVEC = np.dtype([("base", "u8"), ("len", "u8")])
_RECV_SIZE = 256
_CMSG_SIZE = 64
_RECV_BATCH = 512
_TICKS = os.sysconf("SC_CLK_TCK")


def _sockaddr_in(host: str, port: int) -> bytes:
    """struct sockaddr_in: family in host order, port and address in network order."""
    return (
        socket.AF_INET.to_bytes(2, "little")
        + port.to_bytes(2, "big")
        + socket.inet_aton(host)
        + bytes(8)
    )


def cpu_seconds_of(pid: int | None = None) -> float:
    """utime + stime of a process from /proc/PID/stat (ours when pid is None)."""
    path = f"/proc/{pid}/stat" if pid else "/proc/self/stat"
    with open(path) as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _TICKS


def rss_kib_of(pid: int) -> int:
    """Resident set size of a process in KiB (/proc/PID/status VmRSS)."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


@dataclass
class Result:
    """What one measurement window saw."""

    seconds: float
    sent: int
    received: int
    latencies_ns: np.ndarray
    gen_cpu_percent: float
    gen_work_percent: float
    """CPU spent on sending and receiving, busy-waiting excluded: the headroom figure."""
    max_lag_ms: float
    lag_p99_ms: float
    send_shortfall: int
    received_per_stream: np.ndarray
    foreign: dict[str, Any] = field(default_factory=dict)
    """For streams the generator did not send (a conference mix): count, timing."""

    @property
    def loss_percent(self) -> float:
        return 100.0 * max(self.sent - self.received, 0) / self.sent if self.sent else 0.0

    def latency_ms(self, q: float) -> float:
        if len(self.latencies_ns) == 0:
            return float("nan")
        return float(np.percentile(self.latencies_ns, q)) / 1e6

    @property
    def saturated(self) -> bool:
        """The generator could not keep its schedule: the figure is not the bearer's.

        Judged on its work CPU and on the 99th percentile of the send lag, not
        its maximum.  On the development VM a sleeping vCPU wakes up to a few
        milliseconds late (see the cross-core round trip in the results), so a
        lag p99 of 2-4 ms is the host's timer jitter and is reported, not
        disqualifying; 10 ms means the generator is really behind.
        """
        return self.gen_work_percent > 90.0 or self.lag_p99_ms > 10.0 or self.send_shortfall > 0


class Generator:
    """Streams of 50 packets/s (one per destination), sent from one UDP socket.

    ``dests[i]`` receives stream i.  Packets coming back to the socket are
    matched to their stream by the id in the payload, whoever relayed them.
    """

    def __init__(
        self,
        dests: list[tuple[str, int]],
        *,
        interval: float = 0.020,
        slots: int = 40,
        local: tuple[str, int] = ("127.0.0.1", 0),
        pt: int = 0,
        spin: bool = False,
    ) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 8 << 20)
        self.sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
        self.sock.bind(local)
        self.sock.setblocking(False)
        # The default 50 us timer slack makes every 0.5 ms sleep overshoot; the
        # schedule (and so the traffic's burstiness) is what we measure against.
        _libc.prctl(PR_SET_TIMERSLACK, 1, 0, 0, 0)
        self.addr: tuple[str, int] = self.sock.getsockname()
        self.interval = interval
        self.slots = slots
        # Optionally busy-wait between slots instead of sleeping (a sleeping
        # vCPU may wake late).  Off by default: on the development VM a
        # spinning vCPU got descheduled by the host for milliseconds, which
        # made the schedule worse, not better.  Its *work* CPU is reported apart.
        self.spin = spin
        self.pt = pt
        self.srtp: tuple[Any, ...] | None = None
        self.srtp_errors = 0  # received packets that failed SRTP authentication
        self.payload_errors = 0  # decrypted packets whose payload is not what was sent
        self._recv_setup()
        self.set_streams(dests)

    def close(self) -> None:
        self.sock.close()

    # ------------------------------------------------------------------ setup

    def set_streams(self, dests: list[tuple[str, int]]) -> None:
        """(Re)build the packet and message arrays for these destinations."""
        n = len(dests)
        self.n = n
        order = sorted(range(n), key=lambda i: (i % self.slots, i))  # slot-major rows
        self.bounds = [0]
        for k in range(self.slots):
            self.bounds.append(self.bounds[-1] + sum(1 for i in range(k, n, self.slots)))
        pk = np.zeros(n, dtype=PACKET)
        rng = np.random.default_rng(n)
        pk["b0"] = 0x80
        pk["b1"] = self.pt
        pk["seq"] = rng.integers(0, 1 << 16, n)
        pk["ts"] = rng.integers(0, 1 << 32, n, dtype=np.uint64)
        pk["ssrc"] = rng.integers(1, 1 << 32, n, dtype=np.uint64)
        pk["sid"] = np.array(order, dtype=np.uint32)
        pk["fill"] = 0xFF  # μ-law silence
        self.pk = pk
        addrs = np.frombuffer(b"".join(_sockaddr_in(*dests[i]) for i in order), dtype=np.uint8)
        self.addrs = addrs.copy()
        iov = np.zeros(n, dtype=_IOVEC)
        iov["base"] = pk.ctypes.data + np.arange(n, dtype=np.uint64) * PACKET.itemsize
        iov["len"] = PACKET.itemsize
        self.iov = iov
        msgs = np.zeros(n, dtype=_MMSG)
        msgs["name"] = self.addrs.ctypes.data + np.arange(n, dtype=np.uint64) * 16
        msgs["namelen"] = 16
        msgs["iov"] = iov.ctypes.data + np.arange(n, dtype=np.uint64) * _IOVEC.itemsize
        msgs["iovlen"] = 1
        self.msgs = msgs
        self.srtp = None

    def set_srtp(self, send_keys: list[bytes], recv_keys: list[bytes], profile: int = 1) -> None:
        """Make every stream SRTP: stream i is protected with ``send_keys[i]`` (the
        key its phone offered) and received back with ``recv_keys[i]`` (the
        bearer's key for the leg stream i leaves from).  Call after set_streams.

        The generator must not be what limits the figure, so it calls libsrtp
        through pylibsrtp's cffi binding on its own arrays, in place (no copy,
        no allocation per packet); pylibsrtp's public API is the fallback.
        """
        import pylibsrtp

        P = pylibsrtp.Policy
        tx, rx = pylibsrtp.Session(), pylibsrtp.Session()
        for sid, ssrc in zip(self.pk["sid"].tolist(), self.pk["ssrc"].tolist(), strict=True):
            tx.add_stream(P(send_keys[sid], P.SSRC_SPECIFIC, ssrc, profile))
            rx.add_stream(P(recv_keys[sid], P.SSRC_SPECIFIC, ssrc, profile))
        n = self.n
        size = PACKET.itemsize + (10 if profile == 1 else 4)
        self.srtp_size = size
        self.spk = np.zeros((n, size), dtype=np.uint8)
        self.iov["base"] = self.spk.ctypes.data + np.arange(n, dtype=np.uint64) * size
        self.iov["len"] = size
        self.srtp_sessions = (tx, rx)  # kept alive: the raw calls below use their contexts
        try:
            from pylibsrtp._binding import ffi, lib  # type: ignore[import-not-found]

            raw = (
                lib.srtp_protect,
                lib.srtp_unprotect,
                tx._srtp[0],
                rx._srtp[0],
                ffi.from_buffer(self.spk),
                ffi.from_buffer(self.rbuf),
                ffi.new("int *"),
            )
        except (ImportError, AttributeError):
            raw = None
        self.srtp = (tx.protect, rx.unprotect, pylibsrtp.Error, raw)
        self.spk_mv = self.spk.reshape(-1).data
        self.pk_mv = self.pk.view(np.uint8).reshape(-1).data

    def _protect(self, lo: int, hi: int) -> None:
        """SRTP-protect rows lo..hi of the packets into the send array."""
        assert self.srtp is not None
        protect, _unprotect, _error, raw = self.srtp
        size, psize = self.srtp_size, PACKET.itemsize
        if raw is not None:
            self.spk[lo:hi, :psize] = self.pk[lo:hi].view(np.uint8).reshape(hi - lo, psize)
            c_protect, _c_unprotect, ctx, _rx, out, _rbuf, n_p = raw
            for r in range(lo, hi):
                n_p[0] = psize
                if c_protect(ctx, out + r * size, n_p) != 0:
                    raise RuntimeError("srtp_protect failed")
            return
        out, plain = self.spk_mv, self.pk_mv
        for r in range(lo, hi):
            out[r * size : (r + 1) * size] = protect(bytes(plain[r * psize : (r + 1) * psize]))

    def _recv_setup(self) -> None:
        b = _RECV_BATCH
        self.rbuf = np.zeros((b, _RECV_SIZE), dtype=np.uint8)
        self.rbuf_mv = self.rbuf.reshape(-1).data
        self.cbuf = np.zeros((b, _CMSG_SIZE), dtype=np.uint8)
        riov = np.zeros(b, dtype=_IOVEC)
        riov["base"] = self.rbuf.ctypes.data + np.arange(b, dtype=np.uint64) * _RECV_SIZE
        riov["len"] = _RECV_SIZE
        self.riov = riov
        rm = np.zeros(b, dtype=_MMSG)
        rm["iov"] = riov.ctypes.data + np.arange(b, dtype=np.uint64) * _IOVEC.itemsize
        rm["iovlen"] = 1
        rm["control"] = self.cbuf.ctypes.data + np.arange(b, dtype=np.uint64) * _CMSG_SIZE
        self.rmsgs = rm

    # ------------------------------------------------------------------ running

    def _send_slot(self, k: int, stamp: int) -> int:
        lo, hi = self.bounds[k], self.bounds[k + 1]
        if hi == lo:
            return 0
        rows = self.pk[lo:hi]
        rows["seq"] += 1
        rows["ts"] += PAYLOAD
        rows["stamp"] = stamp
        if self.srtp is not None:
            self._protect(lo, hi)
        fd = self.sock.fileno()
        base = self.msgs.ctypes.data + lo * _MMSG.itemsize
        sent = 0
        for _ in range(4):  # bounded retries on a partial send
            r = _sendmmsg(fd, base + sent * _MMSG.itemsize, hi - lo - sent, 0)
            if r <= 0:
                break
            sent += r
            if sent == hi - lo:
                break
        return sent

    def _drain(
        self,
        t0: int,
        t1: int,
        lat: list[np.ndarray],
        counts: np.ndarray,
        foreign: list[tuple[np.ndarray, ...]] | None = None,
        deadline: float | None = None,
    ) -> tuple[int, int]:
        """Read everything queued (or until ``deadline``, perf_counter seconds);
        (packets in window, total packets).

        With SRTP every packet costs a decryption, so the reads are in small
        batches and stop when a send is due: the kernel's receive stamps keep
        the latency figure exact however late the packets are read, and the
        send schedule (the traffic's shape) is what must not slip.

        With ``foreign`` set, every packet is taken as someone else's stream
        (the bearer's conference mix): its SSRC and kernel receive time are kept.
        """
        fd = self.sock.fileno()
        rm = self.rmsgs
        in_window = total = 0
        vlen = _RECV_BATCH if self.srtp is None else 32
        for _ in range(1000 * _RECV_BATCH // vlen):  # bounded: at most 512k packets per call
            if deadline is not None and total and time.perf_counter() >= deadline:
                break
            rm["controllen"] = _CMSG_SIZE
            r = _recvmmsg(fd, rm.ctypes.data, vlen, MSG_DONTWAIT, None)
            if r <= 0:
                break
            total += r
            if self.srtp is not None:
                self._unprotect(r)
            pk = self.rbuf[:r, : PACKET.itemsize].copy().view(PACKET).reshape(r)
            sec = self.cbuf[:r, 16:24].copy().view(np.int64).reshape(r)
            nsec = self.cbuf[:r, 24:32].copy().view(np.int64).reshape(r)
            if foreign is not None:
                rx = sec * 1_000_000_000 + nsec
                ok = (rx >= t0) & (rx < t1)
                foreign.append(
                    (pk["ssrc"][ok].astype(np.int64), rx[ok], pk["seq"][ok].astype(np.int64))
                )
                in_window += int(ok.sum())
                if r < vlen:
                    break
                continue
            stamp = pk["stamp"].astype(np.int64)
            ok = (rm["len"][:r] >= PACKET.itemsize) & (stamp >= t0) & (stamp < t1)
            if self.srtp is not None:  # decrypted: the payload must be what was sent
                bad = ok & ~(pk["fill"] == 0xFF).all(axis=1)
                self.payload_errors += int(bad.sum())
                ok &= ~bad
            if ok.any():
                rx = sec[ok] * 1_000_000_000 + nsec[ok]
                lat.append(rx - stamp[ok])
                sids = pk["sid"][ok].astype(np.int64)
                sids = sids[sids < len(counts)]
                counts += np.bincount(sids, minlength=len(counts))[: len(counts)]
                in_window += int(ok.sum())
            if r < vlen:
                break
        return in_window, total

    def _unprotect(self, r: int) -> None:
        """Authenticate and decrypt the first ``r`` received packets in place;
        a failure sets the packet's length to 0 (not counted as received)."""
        assert self.srtp is not None
        _protect, unprotect, error, raw = self.srtp
        lens = self.rmsgs["len"]
        if raw is not None:
            _c_protect, c_unprotect, _tx, ctx, _out, rbuf, n_p = raw
            got = lens[:r].tolist()
            for j in range(r):
                n_p[0] = got[j]
                if c_unprotect(ctx, rbuf + j * _RECV_SIZE, n_p) != 0:
                    self.srtp_errors += 1
                    got[j] = 0
                else:
                    got[j] = n_p[0]
            lens[:r] = got
            return
        buf = self.rbuf_mv
        for j in range(r):
            n = int(lens[j])
            at = j * _RECV_SIZE
            try:
                plain = unprotect(bytes(buf[at : at + n]))
            except (error, ValueError):
                self.srtp_errors += 1
                lens[j] = 0
                continue
            buf[at : at + len(plain)] = plain
            lens[j] = len(plain)

    def run(
        self,
        warmup: float,
        measure: float,
        drain: float = 0.5,
        on_window: Any = None,
        collect_foreign: bool = False,
        on_idle: Any = None,
    ) -> Result:
        """Send for warmup + measure + drain seconds; measure the middle window.

        ``on_window(start: bool)`` is called when the window opens and closes
        (the caller samples the bearer's CPU there); ``on_idle()`` every
        100 ms (the caller acks the bearer's events there).
        """
        slot_dt = self.interval / self.slots
        counts = np.zeros(self.n, dtype=np.int64)
        lat: list[np.ndarray] = []
        foreign: list[tuple[np.ndarray, ...]] | None = [] if collect_foreign else None
        start = time.perf_counter()
        t_open = start + warmup
        t_close = t_open + measure
        t_end = t_close + drain
        wall0 = time.time_ns()
        w0 = wall0 + int(warmup * 1e9)
        w1 = w0 + int(measure * 1e9)
        sent_in = shortfall = received = 0
        max_lag = 0.0
        lags: list[float] = []
        k = 0
        next_at = start
        opened = closed = False
        cpu0 = cpu1 = 0.0
        spun = 0.0  # seconds busy-waiting inside the window (not work)
        next_idle = start
        while True:  # bounded by t_end
            now = time.perf_counter()
            if now >= t_end:
                break
            if not opened and now >= t_open:
                opened = True
                cpu0 = cpu_seconds_of()
                if on_window:
                    on_window(True)
            if opened and not closed and now >= t_close:
                closed = True
                cpu1 = cpu_seconds_of()
                if on_window:
                    on_window(False)
            burst = 0
            while next_at <= now and burst < self.slots:  # bounded: one period per turn
                lag = now - next_at
                if opened and not closed:
                    max_lag = max(max_lag, lag)
                    lags.append(lag)
                slot = k % self.slots
                stamp = time.time_ns()
                n = self._send_slot(slot, stamp)
                want = self.bounds[slot + 1] - self.bounds[slot]
                if w0 <= stamp < w1:
                    sent_in += n
                    shortfall += want - n
                k += 1
                next_at = start + k * slot_dt
                burst += 1
            due = next_at if self.srtp is not None else None
            got, _ = self._drain(w0, w1, lat, counts, foreign, due)
            received += got
            if on_idle is not None and now >= next_idle:
                next_idle = now + 0.1
                on_idle()
            t_wait = time.perf_counter()
            delay = next_at - t_wait
            if delay > 0:
                if self.spin:
                    while time.perf_counter() < next_at:  # bounded: next_at is < 1 slot away
                        pass
                    if opened and not closed:
                        spun += time.perf_counter() - t_wait
                else:
                    time.sleep(delay)
        got, _ = self._drain(w0, w1, lat, counts, foreign)
        received += got
        if not closed:
            cpu1 = cpu_seconds_of()
        latencies = np.concatenate(lat) if lat else np.zeros(0, dtype=np.int64)
        fstats = _foreign_stats(foreign, self.interval) if foreign is not None else {}
        return Result(
            seconds=measure,
            sent=sent_in,
            received=received,
            latencies_ns=latencies,
            gen_cpu_percent=100.0 * (cpu1 - cpu0) / measure,
            gen_work_percent=100.0 * max(cpu1 - cpu0 - spun, 0.0) / measure,
            max_lag_ms=max_lag * 1000.0,
            lag_p99_ms=float(np.percentile(lags, 99)) * 1000.0 if lags else 0.0,
            send_shortfall=shortfall,
            received_per_stream=counts,
            foreign=fstats,
        )


def _foreign_stats(chunks: list[tuple[np.ndarray, ...]], interval: float) -> dict[str, Any]:
    """Per SSRC: packets received, packets missing, and arrival regularity.

    Missing packets are gaps in each stream's sequence numbers (RFC 3550 §5.1:
    +1 per packet, modulo 2^16) between its first and last packet in the
    window, so the window's edges cannot pass for loss.  Regularity is
    |inter-arrival - interval| over all streams.
    """
    if not chunks:
        return {"count": 0, "missing": 0, "sources": 0, "dev_p99_ms": float("nan")}
    ssrc = np.concatenate([c[0] for c in chunks])
    rx = np.concatenate([c[1] for c in chunks])
    seq = np.concatenate([c[2] for c in chunks])
    order = np.lexsort((rx, ssrc))
    ssrc, rx, seq = ssrc[order], rx[order], seq[order]
    same = ssrc[1:] == ssrc[:-1]
    gaps = (rx[1:] - rx[:-1])[same]
    steps = ((seq[1:] - seq[:-1]) % 65536)[same]
    dev = np.abs(gaps - interval * 1e9) / 1e6
    return {
        "count": len(rx),
        "missing": int(np.sum(np.maximum(steps - 1, 0))),
        "sources": len(np.unique(ssrc)),
        "dev_p99_ms": float(np.percentile(dev, 99)) if len(dev) else float("nan"),
    }
