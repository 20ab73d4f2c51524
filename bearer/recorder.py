"""Call recording to 8 kHz 16-bit stereo WAV: caller left, callee right.

Theory of operation
-------------------
Two halves that share nothing but a FIFO (DESIGN.md principle 3):

* ``Recording`` lives on the bearer's main thread.  ``push`` stores a packet's
  G.711 codes (no decoding) in a per-leg ring at the frame its RTP timestamp
  designates; ``tick`` (every 20 ms) only advances a counter, and every
  ``chunk_frames`` ticks (500 ms by default) the oldest chunk -- held back
  ``delay_frames`` ticks for late packets -- is decoded with one table lookup,
  interleaved with numpy and handed to the writer as one message.  Missing
  frames are silence, so a lost packet never shifts a channel in time.
* ``RecorderWriter`` is the only code touching the disk: a thread reading a
  bounded ``queue.Queue`` and writing with the standard ``wave`` module.
  ``wave`` rewrites the RIFF/data sizes after every ``writeframes`` and the
  file is flushed after every chunk, so a file cut short by a crash is still
  a valid WAV of everything written so far.

Leg alignment: each leg's first packet is anchored at the current tick; later
packets land at ``anchor + (ts - anchor_ts) / 160``.  Jumps the window cannot
hold (a sender restart, or clock drift accumulated over hours) re-anchor the
leg at the current tick, leaving a short gap of silence.

Back-pressure: if the writer falls behind and the queue is full, audio chunks
are dropped and counted (the writer pads the gap with silence when the next
chunk arrives, so timing is kept); open/close messages are never dropped but
wait in a main-thread backlog that ``pump()`` retries.  ``pump()`` also
delivers ``done(path, seconds)`` callbacks on the main thread.
"""

from __future__ import annotations

import collections
import logging
import queue
import threading
import wave
from collections.abc import Callable
from typing import Any, BinaryIO

import numpy as np

from bearer.codecs import CODECS
from bearer.rtp import ts_delta

__all__ = ["DoneCallback", "RecorderWriter", "Recording"]

log = logging.getLogger(__name__)

RATE = 8000
FRAME = 160  # samples per 20 ms frame
DoneCallback = Callable[[str, float], None]
"""``done(path, seconds)``: the file is closed; seconds of audio in it (0.0 if it failed)."""

_OPEN, _DATA, _CLOSE, _STOP = range(4)

_TABLE_CODECS = [c for c in CODECS.values() if c.decode_table is not None]
_CODEC_ID = {c.name: i for i, c in enumerate(_TABLE_CODECS)}
_DECODE_ALL = np.concatenate([c.decode_table for c in _TABLE_CODECS])
_NO_KEY = -(2**62)


class RecorderWriter:
    """The writer thread: owns every open WAV file.

    ``maxsize`` bounds the queue in messages (one message is one chunk of one
    recording, 16 KB at the default 500 ms).  Call ``pump()`` from the main
    loop regularly (each tick is fine) and ``stop()`` at shutdown.
    """

    def __init__(self, maxsize: int = 1024) -> None:
        self._queue: queue.Queue[tuple[Any, ...]] = queue.Queue(maxsize)
        self._done: queue.SimpleQueue[tuple[DoneCallback | None, str, float]] = queue.SimpleQueue()
        self._backlog: collections.deque[tuple[Any, ...]] = collections.deque()
        self._thread = threading.Thread(target=self._run, name="recorder-writer", daemon=True)
        self._discard = threading.Event()
        self.dropped = 0  # audio chunks dropped because the queue was full (main thread)
        self.errors = 0  # files that failed to open or write (writer thread)
        self._next_id = 0

    # ------------------------------------------------------------ main thread

    def start(self) -> None:
        """Start the writer thread."""
        self._thread.start()

    def new_id(self) -> int:
        """A recording id unique within this writer."""
        self._next_id += 1
        return self._next_id

    def submit(self, msg: tuple[Any, ...]) -> bool:
        """Queue a message without blocking; False if an audio chunk was dropped."""
        if self._backlog:
            self._flush_backlog()
        if msg[0] == _DATA:
            if self._backlog:  # keep order behind a waiting open/close
                self.dropped += 1
                return False
            try:
                self._queue.put_nowait(msg)
            except queue.Full:
                self.dropped += 1
                return False
            return True
        if self._backlog:
            self._backlog.append(msg)
        else:
            try:
                self._queue.put_nowait(msg)
            except queue.Full:
                self._backlog.append(msg)
        return True

    def _flush_backlog(self) -> None:
        backlog = self._backlog
        while backlog:  # bounded by the backlog length
            try:
                self._queue.put_nowait(backlog[0])
            except queue.Full:
                return
            backlog.popleft()

    def pump(self) -> int:
        """Retry the backlog and run finished recordings' done callbacks; how many ran."""
        if self._backlog:
            self._flush_backlog()
        ran = 0
        while True:  # bounded: each item was produced by one close
            try:
                done, path, seconds = self._done.get_nowait()
            except queue.Empty:
                return ran
            ran += 1
            if done is not None:
                done(path, seconds)

    def stop(self, drain: bool = True, timeout: float = 10.0) -> None:
        """Stop the thread; every open file is closed with a valid header.

        drain=True writes everything queued first; drain=False discards queued
        audio (opens and closes are still honoured).  Blocks up to ``timeout``
        seconds: for shutdown, not for the main loop.  Done callbacks are
        delivered before returning.
        """
        if not drain:
            self._discard.set()
        if self._thread.ident is None:
            self._thread.start()  # never started: still write what was queued
        pending = [*self._backlog, (_STOP,)]
        self._backlog.clear()
        if self._thread.is_alive():
            try:
                for msg in pending:
                    self._queue.put(msg, timeout=timeout)
            except queue.Full:
                log.error("recorder writer stuck: %d messages not written", len(pending))
            self._thread.join(timeout)
        self.pump()

    def wait_idle(self, timeout: float = 5.0) -> bool:
        """Wait until the writer has processed everything queued (tests, shutdown)."""
        with self._queue.all_tasks_done:
            return self._queue.all_tasks_done.wait_for(
                lambda: self._queue.unfinished_tasks == 0, timeout
            )

    # ---------------------------------------------------------- writer thread

    def _run(self) -> None:
        files: dict[int, _WavFile] = {}
        try:
            while True:  # one message per iteration, until _STOP
                msg = self._queue.get()
                try:
                    if msg[0] == _STOP:
                        return
                    self._handle(files, msg)
                finally:
                    self._queue.task_done()
        finally:
            for f in files.values():
                self._finish(f, None)

    def _handle(self, files: dict[int, _WavFile], msg: tuple[Any, ...]) -> None:
        op, rid = msg[0], msg[1]
        if op == _OPEN:
            files[rid] = _WavFile(msg[2], msg[3])
            if files[rid].failed:
                self.errors += 1
        elif op == _DATA:
            f = files.get(rid)
            if f is not None and not self._discard.is_set() and not f.write(msg[2], msg[3]):
                self.errors += 1
        elif op == _CLOSE:
            f = files.pop(rid, None)
            if f is not None:
                self._finish(f, msg[2])

    def _finish(self, f: _WavFile, total_frames: int | None) -> None:
        if total_frames is not None and not self._discard.is_set():
            f.write(total_frames, b"")  # pad chunks dropped at the very end
        seconds = f.close()
        self._done.put((f.done, f.path, seconds))


class _WavFile:
    """One open WAV on the writer thread; pads with silence to keep time."""

    def __init__(self, path: str, done: DoneCallback | None) -> None:
        self.path = path
        self.done = done
        self.frames = 0  # sample frames (stereo pairs) written
        self.failed = False
        self._fp: BinaryIO | None = None
        self._wav: wave.Wave_write | None = None
        try:
            self._fp = open(path, "wb")  # noqa: SIM115 - closed in close()
            self._wav = wave.open(self._fp, "wb")  # noqa: SIM115
            self._wav.setnchannels(2)
            self._wav.setsampwidth(2)
            self._wav.setframerate(RATE)
        except OSError as exc:
            log.error("recording %s: cannot open: %s", path, exc)
            self.failed = True

    def write(self, start_frame: int, data: bytes) -> bool:
        """Write ``data`` (interleaved int16) to begin at 20 ms frame ``start_frame``."""
        if self.failed or self._wav is None or self._fp is None:
            return True
        try:
            gap = start_frame * FRAME - self.frames
            if gap > 0:  # a dropped chunk: silence keeps the timeline
                self._wav.writeframes(bytes(4 * gap))
                self.frames += gap
            if data:
                self._wav.writeframes(data)
                self.frames += len(data) // 4
            self._fp.flush()  # header already patched by writeframes: crash-safe
        except OSError as exc:
            log.error("recording %s: write failed: %s", self.path, exc)
            self.failed = True
            return False
        return True

    def close(self) -> float:
        try:
            if self._wav is not None:
                self._wav.close()  # does not close a file object it did not open
            if self._fp is not None:
                self._fp.close()
        except OSError as exc:
            log.error("recording %s: close failed: %s", self.path, exc)
            self.failed = True
        return 0.0 if self.failed else self.frames / RATE


class Recording:
    """One call's recording, driven from the main thread.

    Leg 0 (caller) is the left channel, leg 1 (callee) the right.  Call
    ``push`` per received packet, ``tick`` every 20 ms, ``close`` when the
    call ends.  ``chunk_frames`` sets how much audio goes to the writer per
    message, ``delay_frames`` how long a late packet can still be placed;
    ``phase`` shortens the first chunk (default: by the recording id) so that
    recordings started together flush on different ticks.
    """

    def __init__(
        self,
        path: str,
        writer: RecorderWriter,
        done: DoneCallback | None = None,
        chunk_frames: int = 25,
        delay_frames: int = 5,
        phase: int | None = None,
    ) -> None:
        self.path = path
        self._writer = writer
        self._rid = writer.new_id()
        self._chunk = chunk_frames
        self._delay = delay_frames
        self._ahead = max(chunk_frames, 25)  # frames ahead of now before re-anchoring
        ring = chunk_frames + delay_frames + self._ahead + 4
        self._ring = ring
        self._codes = np.zeros((2, ring, FRAME), dtype=np.uint8)
        self._codes_flat = self._codes.reshape(-1).data  # memoryview(), as numpy's stubs allow
        # Frame number and codec id held at each ring position, per leg: plain
        # lists because push sets one item (cheaper than a numpy scalar write).
        self._keys = [[_NO_KEY] * ring, [_NO_KEY] * ring]
        self._cid = [[0] * ring, [0] * ring]
        self._ref: list[tuple[int, int] | None] = [None, None]  # per leg (ts, frame)
        self._now = 0  # current 20 ms frame
        self._flushed = 0  # frames before this were handed to the writer
        # The first chunk is shorter by a per-recording phase so that many
        # recordings started together do not all flush on the same tick.
        phase = self._rid if phase is None else phase
        self._next_chunk = chunk_frames - phase % chunk_frames
        self._closed = False
        self.late = 0  # packets that arrived after their chunk was written
        self.dropped_chunks = 0
        writer.submit((_OPEN, self._rid, path, done))

    @property
    def seconds(self) -> float:
        """Duration recorded so far (ticks elapsed)."""
        return self._now * FRAME / RATE

    def push(self, leg: int, seq: int, ts: int, payload: bytes | memoryview, codec: str) -> bool:
        """Store one packet of ``leg`` (0 caller, 1 callee); False if not recorded.

        ``seq`` is not needed: the RTP timestamp places the frame, including
        after silence suppression.
        """
        cid = _CODEC_ID.get(codec, -1)
        if cid < 0:  # SDP names are case-insensitive (RFC 4566 §6); rare path
            cid = _CODEC_ID.get(codec.upper(), -1)
        nframes = len(payload) // FRAME
        if cid < 0 or nframes == 0 or self._closed:
            return False
        ref = self._ref[leg]
        now = self._now
        ahead = self._ahead
        newest = True  # this packet becomes the leg's timing reference
        if ref is None:
            frame = now
        else:
            ref_ts, ref_frame = ref
            step = ts_delta(ts, ref_ts) // FRAME  # frames after the newest packet so far
            frame = ref_frame + step
            if step < -ahead or frame > now + ahead:
                # Timestamp discontinuity (sender restart) or a clock running
                # ahead of ours: continue right after the previous packet when
                # that is in the window, else at the current tick.
                frame = ref_frame + 1 if now <= ref_frame + 1 <= now + ahead else now
            elif frame < self._flushed:
                if step <= 0:  # reordered beyond the delay: its chunk is written
                    self.late += 1
                    return False
                frame = now  # newer yet behind: this leg's clock lags ours, re-anchor
            elif step <= 0:
                newest = False  # reordered within the delay: stored in place
        if newest:
            self._ref[leg] = (ts, frame)
        ring = self._ring
        base = leg * ring
        keys, cids = self._keys[leg], self._cid[leg]
        for i in range(min(nframes, self._ahead)):  # bounded by the window
            pos = (frame + i) % ring
            off = (base + pos) * FRAME
            self._codes_flat[off : off + FRAME] = payload[i * FRAME : (i + 1) * FRAME]
            keys[pos] = frame + i
            cids[pos] = cid
        return True

    def tick(self) -> None:
        """Advance 20 ms; every ``chunk_frames`` ticks a chunk goes to the writer."""
        self._now += 1
        if self._now - self._delay >= self._flushed + self._next_chunk:
            self._flush(self._next_chunk)
            self._next_chunk = self._chunk

    def _flush(self, count: int) -> None:
        start = self._flushed
        frames = np.arange(start, start + count)
        pos = frames % self._ring
        valid = np.array(self._keys, dtype=np.int64)[:, pos] == frames  # (2, count)
        lookup = self._codes[:, pos].astype(np.intp)  # (2, count, 160)
        lookup += (np.array(self._cid, dtype=np.intp)[:, pos] * 256)[:, :, None]
        pcm = _DECODE_ALL[lookup]
        pcm[~valid] = 0  # lost or never sent: silence, same duration
        stereo = np.empty((count * FRAME, 2), dtype=np.int16)
        stereo[:, 0] = pcm[0].reshape(-1)
        stereo[:, 1] = pcm[1].reshape(-1)
        self._flushed = start + count
        if not self._writer.submit((_DATA, self._rid, start, stereo.tobytes())):
            self.dropped_chunks += 1

    def close(self) -> None:
        """Write what is buffered (up to now, or the last frame received) and close the file."""
        if self._closed:
            return
        self._closed = True
        end = max(self._now, max(self._keys[0]) + 1, max(self._keys[1]) + 1)
        while self._flushed < end:  # bounded: advances by up to a chunk each time
            self._flush(min(self._chunk, end - self._flushed))
        self._writer.submit((_CLOSE, self._rid, end))
