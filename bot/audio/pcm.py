"""The one float ↔ int16 convention of the whole project (pure, numpy only).

float full scale is ±1.0 and int16 full scale is 32768: `to_float(x) = x / 32768` and
`to_int16(y) = clip(y * 32768)` truncated toward zero. Both scale by the same power of two, so
`to_int16(to_float(x)) == x` for every int16 sample: a 24 kHz mono pcm16 file goes through
untouched. (Scaling one way by 32767 and the other by 32768 shrinks every sample by one step in
32768 on each round trip.) +1.0 clips to 32767, the largest int16.
"""

from __future__ import annotations

import numpy as np

SCALE = 32768.0


def to_float(pcm16: bytes | bytearray | memoryview | np.ndarray) -> np.ndarray:
    """s16le bytes (or an int16 array) → float32 in [-1.0, 1.0)."""
    samples = pcm16 if isinstance(pcm16, np.ndarray) else np.frombuffer(pcm16, dtype="<i2")
    return samples.astype(np.float32) * np.float32(1.0 / SCALE)


def to_int16(samples: np.ndarray) -> np.ndarray:
    """float (±1.0 full scale) → int16 array, clipped to the int16 range."""
    return np.clip(np.asarray(samples, dtype=np.float32) * np.float32(SCALE), -SCALE, SCALE - 1).astype(np.int16)


def to_pcm16(samples: np.ndarray) -> bytes:
    """float (±1.0 full scale) → s16le bytes, clipped."""
    return to_int16(samples).astype("<i2", copy=False).tobytes()
