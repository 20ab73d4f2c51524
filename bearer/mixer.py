"""Conference mixing for every room of a bearer at once, one numpy pass per 20 ms tick.

Theory of operation
-------------------
Each participant owns a *slot* in preallocated arrays; nothing is allocated
per packet.

``push`` (per packet, a few µs): the packet's RTP timestamp gives a frame
number (``key``, 160 samples per frame, wrap-free via ``ts_delta``); the
payload's codes are copied as-is into a ring of ``depth`` frames at
``key % depth`` and the key is recorded beside it.  Decoding is deferred to the
tick, where it is one table lookup for all participants.  A packet older than
the frame being played is late and dropped; one too far ahead (outside the
ring) or far behind restarts the participant's playout (sender restart or a
talkspurt after silence suppression).

``tick`` (every 20 ms, vectorised over all active slots):

1. jitter buffer: a participant starts playing once ``prefill`` frames are
   buffered (or one frame has waited ``prefill`` ticks); while playing, the
   frame whose key equals the play position is played if present, otherwise
   the last frame is repeated once and silence follows; after
   ``UNDERRUN_RESET`` missing frames in a row the participant re-buffers.  When
   more than ``max_depth`` frames are queued the oldest is skipped, so latency
   cannot grow without bound;
2. decode all current frames with a concatenated G.711 table (codes + 256 *
   codec id), giving an (N, 160) array;
3. rows are kept sorted by room, so ``np.add.reduceat`` gives every room's sum;
   each participant hears ``room_sum - own_frame`` (int32, no wrap), saturated
   to int16;
4. encode with a concatenated encode table into each participant's codec.

The relay turns each payload into an RTP packet with its own seq/ts/SSRC.
Frames are 20 ms of 8 kHz audio (G.711); PCM (int16 arrays, e.g. decoded by a
future Opus decoder) can be pushed directly with codec ``"L16"``.
"""

from __future__ import annotations

from collections.abc import Hashable
from typing import Any

import numpy as np
import numpy.typing as npt

from bearer.codecs import CODECS
from bearer.rtp import ts_delta

__all__ = ["FRAME_SAMPLES", "Mixer"]

FRAME_SAMPLES = 160
"""Samples in one 20 ms frame at 8 kHz."""
UNDERRUN_RESET = 5
"""Consecutive missing frames (100 ms) after which a participant re-buffers."""
RESYNC_FRAMES = 50
"""A packet this many frames (1 s) behind the play position means the sender restarted."""

# Table codecs, in a fixed order: codec id i uses rows [256 i, 256 i + 256) of
# _DECODE_ALL and [65536 i, 65536 (i + 1)) of _ENCODE_ALL.  "L16" (raw int16
# PCM) takes the next id and bypasses the tables.
_TABLE_CODECS = [c for c in CODECS.values() if c.decode_table is not None]
_CODEC_ID: dict[str, int] = {c.name: i for i, c in enumerate(_TABLE_CODECS)}
_L16 = len(_TABLE_CODECS)
_CODEC_ID["L16"] = _L16
_NO_KEY = -(2**62)
_DECODE_ALL = np.concatenate([c.decode_table for c in _TABLE_CODECS])
_ENCODE_ALL = np.concatenate([c.encode_table for c in _TABLE_CODECS])


class _Participant:
    """Per-participant scalars touched by ``push`` (the rest lives in arrays)."""

    __slots__ = ("codec_id", "late", "overflow", "pid", "ref_key", "ref_ts", "room", "slot")

    def __init__(self, pid: Hashable, room: Hashable, slot: int, codec_id: int) -> None:
        self.pid = pid
        self.room = room
        self.slot = slot
        self.codec_id = codec_id
        self.ref_ts: int | None = None  # a timestamp whose frame number is ref_key
        self.ref_key = 0
        self.late = 0  # packets dropped for arriving after their frame was played
        self.overflow = 0  # playout restarts caused by jumps


class Mixer:
    """All conference rooms of one bearer.

    ``depth`` is the ring size per participant (the reordering window);
    ``prefill`` frames are buffered before playout starts (2 = 40 ms);
    ``max_depth`` caps the queued frames (latency) while playing.
    """

    # Slot arrays, created by _alloc (first axis: slot).
    _ring: npt.NDArray[np.uint8]
    _keys: npt.NDArray[np.int64]
    _fcodec: npt.NDArray[np.intp]
    _play: npt.NDArray[np.int64]
    _playing: npt.NDArray[np.bool_]
    _rebase: npt.NDArray[np.bool_]
    _wait: npt.NDArray[np.int64]
    _under: npt.NDArray[np.int64]
    _last: npt.NDArray[np.int16]

    def __init__(
        self, capacity: int = 64, depth: int = 8, prefill: int = 2, max_depth: int = 4
    ) -> None:
        if not 1 <= prefill <= max_depth < depth:
            raise ValueError("need 1 <= prefill <= max_depth < depth")
        self.depth = depth
        self.prefill = prefill
        self.max_depth = max_depth
        self._parts: dict[Hashable, _Participant] = {}
        self._rooms: dict[Hashable, list[int]] = {}  # room -> [ordinal, members]
        self._next_room = 0
        self._free: list[int] = []
        self._capacity = 0
        self._alloc(max(capacity, 1))
        self._dirty = True
        self._order = np.zeros(0, dtype=np.intp)

    # ------------------------------------------------------------- membership

    def _alloc(self, capacity: int) -> None:
        """(Re)allocate the slot arrays, keeping their contents (grows by doubling)."""
        old, d, n = self._capacity, self.depth, FRAME_SAMPLES

        def grow(name: str, shape: tuple[int, ...], dtype: type, fill: int) -> None:
            new: npt.NDArray[Any] = np.full((capacity, *shape), fill, dtype=dtype)
            if old:
                new[:old] = getattr(self, name)
            setattr(self, name, new)

        grow("_ring", (d, 2 * n), np.uint8, 0)  # payload codes, or int16 PCM bytes (L16)
        grow("_keys", (d,), np.int64, _NO_KEY)  # frame number held in each ring position
        grow("_fcodec", (d,), np.intp, 0)  # codec id of each ring position
        grow("_play", (), np.int64, 0)  # frame number to play next
        grow("_playing", (), np.bool_, 0)
        grow("_rebase", (), np.bool_, 1)  # next push sets the play position
        grow("_wait", (), np.int64, 0)  # ticks spent with frames buffered, not playing
        grow("_under", (), np.int64, 0)  # consecutive missing frames while playing
        grow("_last", (n,), np.int16, 0)  # last frame played, for one repeat
        self._ring_flat = self._ring.reshape(-1).data  # memoryview(), as numpy's stubs allow
        self._free.extend(range(capacity - 1, old - 1, -1))
        self._capacity = capacity

    def join(self, room_id: Hashable, participant_id: Hashable, codec: str = "PCMU") -> None:
        """Add a participant to a room (created on first join); ``codec`` is what it receives."""
        if participant_id in self._parts:
            raise ValueError(f"participant {participant_id!r} already in a room")
        cid = _CODEC_ID.get(codec.upper())
        if cid is None or cid == _L16:
            raise ValueError(f"codec {codec!r} cannot be mixed")
        if not self._free:
            self._alloc(2 * self._capacity)
        slot = self._free.pop()
        self._keys[slot] = _NO_KEY
        self._play[slot] = 0
        self._playing[slot] = False
        self._rebase[slot] = True
        self._wait[slot] = 0
        self._under[slot] = 0
        self._last[slot] = 0
        self._parts[participant_id] = _Participant(participant_id, room_id, slot, cid)
        room = self._rooms.get(room_id)
        if room is None:
            room = self._rooms[room_id] = [self._next_room, 0]
            self._next_room += 1
        room[1] += 1
        self._dirty = True

    def leave(self, participant_id: Hashable) -> None:
        """Remove a participant; its room disappears with its last member."""
        part = self._parts.pop(participant_id, None)
        if part is not None:
            self._free.append(part.slot)
            room = self._rooms[part.room]
            room[1] -= 1
            if room[1] == 0:
                del self._rooms[part.room]
            self._dirty = True

    def room_of(self, participant_id: Hashable) -> Hashable:
        """The room a participant is in (KeyError if it is in none)."""
        return self._parts[participant_id].room

    def stats(self, participant_id: Hashable) -> tuple[int, int]:
        """(late packets dropped, playout restarts) for a participant."""
        p = self._parts[participant_id]
        return p.late, p.overflow

    def __len__(self) -> int:
        return len(self._parts)

    @property
    def rooms(self) -> dict[Hashable, int]:
        """Room id -> number of participants."""
        return {room: members for room, (_, members) in self._rooms.items()}

    # ------------------------------------------------------------------ push

    def push(
        self,
        participant_id: Hashable,
        seq: int,
        ts: int,
        data: bytes | bytearray | memoryview | npt.NDArray[np.int16],
        codec: str = "PCMU",
    ) -> bool:
        """Buffer one received packet; False if it was dropped (late, unknown, bad size).

        ``data`` is the RTP payload of a table codec (160 codes per 20 ms;
        multiples of 160 are split into frames) or an int16 PCM array.  The
        buffer is keyed on the RTP timestamp, which, unlike ``seq``, also
        places frames correctly after silence suppression; ``seq`` is
        accepted for symmetry with the relay's parser and is not needed.
        """
        part = self._parts.get(participant_id)
        if part is None:
            return False
        if isinstance(data, np.ndarray):
            raw: bytes | bytearray | memoryview = data.astype(np.int16, copy=False).tobytes()
            cid, frame_bytes = _L16, 2 * FRAME_SAMPLES
        else:
            raw = data
            cid = _CODEC_ID.get(codec, -1)
            if cid < 0:  # SDP names are case-insensitive (RFC 4566 §6); rare path
                cid = _CODEC_ID.get(codec.upper(), -1)
            frame_bytes = FRAME_SAMPLES
            if cid < 0 or cid == _L16:
                return False
        nframes = len(raw) // frame_bytes
        if nframes == 0:
            return False
        slot = part.slot
        ref_ts = part.ref_ts
        key = 0 if ref_ts is None else part.ref_key + ts_delta(ts, ref_ts) // FRAME_SAMPLES
        part.ref_ts, part.ref_key = ts, key
        play = int(self._play[slot])
        depth = self.depth
        if self._rebase[slot]:
            play = key
            self._rebase[slot] = False
            self._keys[slot] = _NO_KEY  # stale frames must not match new keys
        elif self._playing[slot]:
            if key < play:
                if play - key <= RESYNC_FRAMES:
                    part.late += 1
                    return False
                play = self._restart(part, key)
            elif key + nframes > play + depth:
                play = self._restart(part, key)
        elif key < play or key >= play + depth:
            # Not yet playing: an earlier (reordered) packet moves the start
            # back, a far one restarts the buffer.
            play = key
        self._play[slot] = play
        base = slot * depth
        ring = self._ring_flat
        for i in range(min(nframes, depth)):  # bounded by the ring size
            k = key + i
            pos = k % depth
            off = (base + pos) * 2 * FRAME_SAMPLES
            ring[off : off + frame_bytes] = raw[i * frame_bytes : (i + 1) * frame_bytes]
            self._keys[slot, pos] = k
            self._fcodec[slot, pos] = cid
        return True

    def _restart(self, part: _Participant, key: int) -> int:
        """A jump the ring cannot absorb: buffer again from ``key``."""
        part.overflow += 1
        self._playing[part.slot] = False
        self._wait[part.slot] = 0
        self._keys[part.slot] = _NO_KEY  # a backward jump could meet old keys again
        return key

    # ------------------------------------------------------------------ tick

    def _rebuild(self) -> None:
        """Sort active slots by room so each room is one contiguous block for reduceat."""
        rooms = self._rooms
        parts = sorted(self._parts.values(), key=lambda p: rooms[p.room][0])
        self._pids = [p.pid for p in parts]
        self._order = np.array([p.slot for p in parts], dtype=np.intp)
        starts: list[int] = []
        room_row: list[int] = []
        prev: object = object()
        for i, p in enumerate(parts):
            if i == 0 or p.room != prev:
                starts.append(i)
                prev = p.room
            room_row.append(len(starts) - 1)
        self._starts = np.array(starts, dtype=np.intp)
        self._room_row = np.array(room_row, dtype=np.intp)
        self._enc_offset = np.array([p.codec_id * 65536 for p in parts], dtype=np.intp)[:, None]
        # Work buffers reused every tick: fresh 100 KB+ arrays each tick would
        # be mmap'ed and page-faulted anew by glibc (measured: tick twice as slow).
        n = len(parts)
        self._w_lookup = np.empty((n, FRAME_SAMPLES), dtype=np.intp)
        self._w_mix = np.empty((n, FRAME_SAMPLES), dtype=np.int32)
        self._w_out16 = np.empty((n, FRAME_SAMPLES), dtype=np.int16)
        self._dirty = False

    def tick_array(self) -> tuple[list[Hashable], npt.NDArray[np.uint8]]:
        """Advance every participant by one frame; (participant ids, (N, 160) payload codes).

        Row i of the array is the payload for participant ``ids[i]``.  The ids
        list is the SAME object from tick to tick until someone joins or
        leaves, so callers may cache per-row state and check ``ids is cached``.
        """
        if self._dirty:
            self._rebuild()
        idx = self._order
        n = len(idx)
        if n == 0:
            return [], np.zeros((0, FRAME_SAMPLES), dtype=np.uint8)
        depth = self.depth
        play = self._play[idx]
        keys = self._keys[idx]
        valid = (keys >= play[:, None]) & (keys < play[:, None] + depth)
        buffered = valid.sum(axis=1)

        # 1. jitter buffer state
        playing = self._playing[idx]
        idle = ~playing & ~self._rebase[idx]
        wait = np.where(idle & (buffered > 0), self._wait[idx] + 1, 0)
        playing |= idle & ((buffered >= self.prefill) | ((buffered > 0) & (wait >= self.prefill)))
        trim = playing & (buffered > self.max_depth)
        play += trim
        pos = play % depth
        have = playing & (keys[np.arange(n), pos] == play)

        # 2. decode the current frames (garbage rows are zeroed below)
        cid = self._fcodec[idx, pos]
        lookup = self._w_lookup  # preallocated work buffers: see _rebuild
        gathered = self._ring[idx, pos, :FRAME_SAMPLES]
        np.add(gathered, (np.minimum(cid, _L16 - 1) * 256)[:, None], out=lookup)  # L16: see below
        pcm = _DECODE_ALL[lookup]
        l16 = have & (cid == _L16)
        if l16.any():
            pcm[l16] = self._ring[idx[l16], pos[l16]].view(np.int16)
        pcm[~have] = 0
        under = playing & ~have
        runs = np.where(under, self._under[idx] + 1, 0)
        repeat = under & (runs == 1)
        pcm[repeat] = self._last[idx[repeat]]
        if have.all():
            self._last[idx] = pcm
        else:
            self._last[idx[have]] = pcm[have]
        reset = runs >= UNDERRUN_RESET

        self._play[idx] = play + playing
        self._playing[idx] = playing & ~reset
        self._rebase[idx[reset]] = True
        self._wait[idx] = np.where(playing, 0, wait)
        self._under[idx] = np.where(reset, 0, runs)

        # 3. mix: everyone in a room hears the room minus themselves (int32: no wrap)
        sums = np.add.reduceat(pcm, self._starts, axis=0, dtype=np.int32)
        mix = self._w_mix
        np.take(sums, self._room_row, axis=0, out=mix)
        mix -= pcm
        np.clip(mix, -32768, 32767, out=mix)

        # 4. encode per participant codec
        np.copyto(self._w_out16, mix, casting="unsafe")
        np.add(self._w_out16.view(np.uint16), self._enc_offset, out=lookup)
        return self._pids, _ENCODE_ALL[lookup]

    def tick(self) -> dict[Hashable, bytes]:
        """Advance by 20 ms; the payload to send to each participant."""
        pids, enc = self.tick_array()
        blob = enc.tobytes()
        return {
            pid: blob[i * FRAME_SAMPLES : (i + 1) * FRAME_SAMPLES] for i, pid in enumerate(pids)
        }
