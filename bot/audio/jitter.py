"""Per-speaker jitter buffer ordered by RTP sequence number (pure: no decoding, no clock).

In-order packets are released at once (no added latency); a gap holds later packets until the
missing one arrives or more than ``depth`` packets are waiting, then the gap is declared lost.
Sequence numbers are unwrapped to an ever-growing counter so 65535 → 0 is just the next packet.
Ordering survives pauses (senders keep counting across talk spurts, so the first packets of a new
spurt are reordered like any others); a jump of more than ``RESYNC`` packets while nothing is
buffered is a new sequence (sender restart), not a loss, and is followed at once.
"""

from __future__ import annotations

ACCEPTED = 0
DUPLICATE = 1
LATE = 2
RESYNC = 250  # packets (5 s): farther than any loss worth concealing or waiting for
_HISTORY = 64
_HISTORY_MASK = (1 << _HISTORY) - 1


class JitterBuffer:
    """Reorders one speaker's packets; ``classify`` then ``insert`` so callers can work in between."""

    __slots__ = ("_next", "_played", "_slots", "depth")

    def __init__(self, depth: int = 3) -> None:
        self.depth = depth
        self._next: int | None = None
        self._slots: dict[int, bytes] = {}
        self._played = 0  # bit i set: packet (next - 1 - i) was played (not concealed)

    def __len__(self) -> int:
        return len(self._slots)

    def classify(self, sequence: int) -> tuple[int, int]:
        """``(status, extended sequence)`` for an arriving 16-bit sequence number."""
        nxt = self._next
        if nxt is None:
            self._next = nxt = sequence + 65536  # room below for reordered predecessors' arithmetic
            return ACCEPTED, nxt
        ext = nxt + ((sequence - nxt + 32768) & 0xFFFF) - 32768
        if not self._slots and (ext - nxt > RESYNC or nxt - ext > RESYNC):
            self._next = ext
            self._played = 0
            return ACCEPTED, ext
        if ext < nxt:
            back = nxt - 1 - ext
            if back < _HISTORY and (self._played >> back) & 1:
                return DUPLICATE, ext
            return LATE, ext
        if ext in self._slots:
            return DUPLICATE, ext
        return ACCEPTED, ext

    def insert(self, ext: int, payload: bytes) -> None:
        self._slots[ext] = payload

    def pop(self, force: bool = False) -> tuple[int, bytes] | None:
        """Next packet to decode as ``(frames lost just before it, payload)``, or ``None`` to wait.

        ``force`` releases across gaps regardless of depth (stream timeout, flush).
        """
        slots = self._slots
        if not slots:
            return None
        nxt = self._next
        assert nxt is not None
        payload = slots.pop(nxt, None)
        if payload is not None:
            self._next = nxt + 1
            self._played = ((self._played << 1) | 1) & _HISTORY_MASK
            return 0, payload
        if not force and len(slots) <= self.depth:
            return None
        first = min(slots)
        missing = first - nxt
        self._next = first + 1
        self._played = ((self._played << (missing + 1)) | 1) & _HISTORY_MASK
        return missing, slots.pop(first)
