"""48 kHz mono → 24 kHz mono pcm16, cut into 20 ms frames (pure; soxr does the filtering).

soxr's streaming resampler keeps filter state across chunks, so consecutive packets join without
clicks; its output per chunk varies around 480 samples, hence the accumulator. It runs in float32:
with int16 output libsoxr adds TPDF dither, which makes the output differ run to run (and adds
noise); converting to int16 ourselves keeps the receive path deterministic.
"""

from __future__ import annotations

import numpy as np
import soxr

from bot.audio.pcm import to_pcm16

IN_RATE = 48_000
OUT_RATE = 24_000
FRAME_SAMPLES = 480  # 20 ms at 24 kHz
FRAME_BYTES = FRAME_SAMPLES * 2
_EMPTY = np.zeros(0, dtype=np.float32)


class Downsampler:
    """Streaming 48→24 kHz conversion with 20 ms framing for one speaker."""

    __slots__ = ("_pending", "_stream")

    def __init__(self, quality: str = "HQ") -> None:
        self._stream = soxr.ResampleStream(IN_RATE, OUT_RATE, 1, dtype="float32", quality=quality)
        self._pending = bytearray()

    def push(self, pcm48: np.ndarray) -> list[bytes]:
        """Feed float32 mono 48 kHz samples; return the complete 20 ms frames now available."""
        pending = self._pending
        pending += to_pcm16(self._stream.resample_chunk(pcm48))
        if len(pending) < FRAME_BYTES:
            return []
        frames = []
        while len(pending) >= FRAME_BYTES:
            frames.append(bytes(pending[:FRAME_BYTES]))
            del pending[:FRAME_BYTES]
        return frames

    def flush(self) -> list[bytes]:
        """End of stream: drain the filter, zero-pad the last frame, and reset for the next stream."""
        pending = self._pending
        pending += to_pcm16(self._stream.resample_chunk(_EMPTY, last=True))
        frames = [bytes(pending[i : i + FRAME_BYTES]) for i in range(0, len(pending), FRAME_BYTES)]
        if frames and len(frames[-1]) < FRAME_BYTES:
            frames[-1] = frames[-1].ljust(FRAME_BYTES, b"\x00")
        pending.clear()
        self._stream.clear()
        return frames
