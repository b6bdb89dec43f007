"""Time-scale modification: play a speaker's translated audio faster without changing its pitch.

Translations run longer than the speech (Spanish came out ~28 % longer than English), so a continuous
speaker's queue in the mixer grows; playing it a little faster lets the listener catch up instead of losing
the oldest audio. This wraps `audiotsm`'s WSOLA (waveform-similarity overlap-add), an MIT-licensed numpy
implementation made for real-time use: input in any chunk size, output as it becomes ready, and the speed may
change between chunks. Its last release is from 2017, but it is small, pure numpy and works with numpy 2;
librubberband (pyrubberband, pylibrb, pedalboard) is better maintained but GPL (Parley is MIT) and
pyrubberband only works on whole files through the CLI. WSOLA is the classic choice for speech.

Pure core: numpy in, numpy out, no I/O, no locks (the mixer's reader owns each stretcher).

At 24 kHz a frame of 512 samples (21 ms, half of it the hop) and a search tolerance of 256 samples
(10.7 ms, one pitch period down to 94 Hz) suit speech at the tempos used here (at most
`playback.max_tempo`). The stretcher's own delay is what it holds before the first output: half a frame
plus its look-ahead (see `latency_samples`).
"""

from __future__ import annotations

import numpy as np
from audiotsm import wsola
from audiotsm.io.array import ArrayReader, ArrayWriter

FRAME_LENGTH = 512  # samples at 24 kHz: 21 ms
SYNTHESIS_HOP = FRAME_LENGTH // 2
TOLERANCE = FRAME_LENGTH // 2


class Stretcher:
    """One voice's streaming WSOLA. `feed` returns what is ready; `flush` returns the tail and resets."""

    def __init__(self) -> None:
        self._tsm = wsola(1, speed=1.0, frame_length=FRAME_LENGTH, synthesis_hop=SYNTHESIS_HOP, tolerance=TOLERANCE)
        self._speed = 1.0

    @staticmethod
    def latency_samples() -> int:
        """Input the stretcher holds before its first output: what it adds to the delay when it engages."""
        return TOLERANCE + FRAME_LENGTH + TOLERANCE + SYNTHESIS_HOP - FRAME_LENGTH // 2

    def feed(self, samples: np.ndarray, speed: float) -> np.ndarray:
        """Stretch `samples` (float, mono) at `speed` (> 1: faster); returns the float64 output ready so far."""
        if speed != self._speed:
            self._tsm.set_speed(speed)
            self._speed = speed
        reader = ArrayReader(np.asarray(samples, dtype=np.float64).reshape(1, -1))
        writer = ArrayWriter(1)
        while True:
            self._tsm.read_from(reader)
            _, starved = self._tsm.write_to(writer)
            if starved and reader.empty:
                break
        return writer.data[0]

    def flush(self) -> np.ndarray:
        """The end of a stretch of audio: everything still held comes out (trailing padding trimmed)."""
        pad = np.zeros(FRAME_LENGTH + 2 * TOLERANCE + SYNTHESIS_HOP)
        out = [self.feed(pad, self._speed)]
        writer = ArrayWriter(1)
        done = False
        while not done:
            _, done = self._tsm.flush_to(writer)
        out.append(writer.data[0])
        self._tsm.clear()
        tail = np.concatenate(out)
        # Only the zeros we padded with (and the end of the voice's own silence) are trimmed.
        nonzero = np.flatnonzero(np.abs(tail) > 1e-9)
        return tail[: nonzero[-1] + 1] if nonzero.size else tail[:0]
