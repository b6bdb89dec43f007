"""Packets from SSRCs not yet mapped to a member, held until op 5 (or op 12) names the speaker.

Discord can deliver a member's first packets before the SPEAKING event that maps their SSRC;
dropping them would clip the first syllable. The hold is bounded in count and age.
"""

from __future__ import annotations

from collections import deque
from typing import NamedTuple


class HeldPacket(NamedTuple):
    arrival: float
    ssrc: int
    sequence: int
    frame: bytes


class UnmappedHold:
    """FIFO of transport-decrypted frames waiting for their SSRC's member."""

    __slots__ = ("_queue", "max_age", "max_packets")

    def __init__(self, max_packets: int, max_age: float) -> None:
        self.max_packets = max_packets
        self.max_age = max_age
        self._queue: deque[HeldPacket] = deque()

    def __len__(self) -> int:
        return len(self._queue)

    def add(self, packet: HeldPacket) -> int:
        """Hold ``packet``; return how many packets were evicted (oldest first) to stay bounded."""
        queue = self._queue
        queue.append(packet)
        evicted = 0
        while len(queue) > self.max_packets:
            queue.popleft()
            evicted += 1
        return evicted

    def release(self, ssrc: int) -> list[HeldPacket]:
        """Remove and return ``ssrc``'s packets in arrival order."""
        queue = self._queue
        if not queue:
            return []
        mine = [p for p in queue if p.ssrc == ssrc]
        if mine:
            self._queue = deque(p for p in queue if p.ssrc != ssrc)
        return mine

    def expire(self, now: float) -> int:
        """Drop packets older than ``max_age``; return how many."""
        queue, limit, dropped = self._queue, now - self.max_age, 0
        while queue and queue[0].arrival <= limit:
            queue.popleft()
            dropped += 1
        return dropped

    def clear(self) -> int:
        dropped = len(self._queue)
        self._queue.clear()
        return dropped
