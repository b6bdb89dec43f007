"""Re-framing of appended audio into the 200 ms engine frames the protocol promises.

Clients may append any number of bytes per event; the engine consumes exactly 9600-byte frames
(200 ms of pcm16 mono at 24 kHz). Pure: no I/O, no engines.
"""

from __future__ import annotations

from bot.realtime.translation_events import ENGINE_FRAME_BYTES, ENGINE_FRAME_MS


class FrameBuffer:
    """Accumulates pcm16 bytes and hands out whole frames; keeps the remainder for later."""

    def __init__(self, frame_bytes: int = ENGINE_FRAME_BYTES) -> None:
        self._frame_bytes = frame_bytes
        self._pending = bytearray()
        self.frames_out = 0  # frames handed out so far: the input clock

    @property
    def pending_bytes(self) -> int:
        return len(self._pending)

    @property
    def elapsed_ms(self) -> int:
        """Audio time of everything handed out so far, in 200 ms steps."""
        return self.frames_out * ENGINE_FRAME_MS

    def push(self, pcm: bytes) -> list[bytes]:
        """Add bytes; return every whole frame now available, in order."""
        self._pending += pcm
        n = len(self._pending) // self._frame_bytes
        if n == 0:
            return []
        cut = n * self._frame_bytes
        chunk = bytes(self._pending[:cut])
        del self._pending[:cut]
        self.frames_out += n
        return [chunk[i : i + self._frame_bytes] for i in range(0, cut, self._frame_bytes)]

    def flush(self) -> bytes | None:
        """The partial last frame padded with silence (on close), or None if nothing is pending."""
        if not self._pending:
            return None
        frame = bytes(self._pending) + bytes(self._frame_bytes - len(self._pending))
        self._pending.clear()
        self.frames_out += 1
        return frame
