"""The replies a request server remembers, so a retransmitted request is answered
with the identical bytes and its handler never runs twice (DESIGN "The private
control protocol": requests are idempotent and retransmitted until answered).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable

from softswitch.protocol.codec import Packet
from softswitch.protocol.outcomes import Peer

ProtoHandler = Callable[[Packet], bytes]


class ReplyCache:
    """Encoded replies by (peer, sender epoch, request id), for ``ttl`` seconds.

    A retransmitted request gets the identical bytes and its handler does not
    run again.  Bounded by ``max_entries`` (oldest evicted first); entries all
    live ``ttl``, so insertion order is expiry order and expiry is a pop from
    the front.
    """

    def __init__(self, ttl: float = 32.0, max_entries: int = 65536) -> None:
        self.ttl = ttl
        self.max_entries = max_entries
        self._entries: OrderedDict[tuple[Peer, int, int], tuple[float, bytes]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, peer: Peer, epoch: int, request_id: int, now: float) -> bytes | None:
        self._expire(now)
        entry = self._entries.get((peer, epoch, request_id))
        return None if entry is None else entry[1]

    def put(self, peer: Peer, epoch: int, request_id: int, reply: bytes, now: float) -> None:
        self._expire(now)
        key = (peer, epoch, request_id)
        self._entries[key] = (now + self.ttl, reply)
        self._entries.move_to_end(key)
        while len(self._entries) > self.max_entries:  # bounded: shrinks by one per turn
            self._entries.popitem(last=False)

    def handle(
        self, peer: Peer, packet: Packet, now: float, handler: ProtoHandler
    ) -> tuple[bytes, bool]:
        """The reply to ``packet``: cached, or made by ``handler`` and cached.

        Returns (reply bytes, True if the handler ran).  For servers that
        answer synchronously, which the bearer does.
        """
        cached = self.get(peer, packet.epoch, packet.request_id, now)
        if cached is not None:
            return cached, False
        reply = handler(packet)
        self.put(peer, packet.epoch, packet.request_id, reply, now)
        return reply, True

    def _expire(self, now: float) -> None:
        entries = self._entries
        while entries:  # bounded by len(entries)
            key, (expires, _) = next(iter(entries.items()))
            if expires > now:
                break
            del entries[key]
