"""The audio a server has not yet acknowledged, kept so a dropped socket loses nothing.

Offsets are byte positions on the speaker's stream (pcm16 mono 24 kHz: 48 bytes per ms). The buffer
holds [start, end); `ack` trims what the server has answered for, and the capacity bound drops the
oldest audio (counted) rather than growing without limit while a backend is down.
"""

from __future__ import annotations

BYTES_PER_MS = 48


class ReplayBuffer:
    def __init__(self, capacity_bytes: int) -> None:
        if capacity_bytes <= 0:
            raise ValueError("capacity_bytes must be positive")
        self.capacity = capacity_bytes
        self._buf = bytearray()
        self._start = 0  # stream offset of _buf[0]
        self.dropped_bytes = 0

    @property
    def start(self) -> int:
        return self._start

    @property
    def end(self) -> int:
        return self._start + len(self._buf)

    def append(self, pcm: bytes) -> None:
        self._buf += pcm
        over = len(self._buf) - self.capacity
        if over > 0:
            over += over & 1  # stay on a sample boundary
            del self._buf[:over]
            self._start += over
            self.dropped_bytes += over

    def ack(self, offset: int) -> None:
        """The server has produced output for everything before `offset`."""
        n = min(offset, self.end) - self._start
        if n > 0:
            n -= n & 1
            del self._buf[:n]
            self._start += n

    def since(self, offset: int) -> tuple[int, bytes]:
        """Audio from `offset` (or the oldest still held) to the end, with its actual start."""
        begin = max(offset, self._start)
        return begin, bytes(self._buf[begin - self._start :])
