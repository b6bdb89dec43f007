"""Reading and writing WAV files for the command line: any rate and channel count in, 24 kHz mono out.

The stdlib `wave` module reads integer PCM; soxr does the resampling. A file that is not a WAV is a
`AudioFileError` with a message a user can act on.
"""

from __future__ import annotations

import wave
from pathlib import Path

import numpy as np
import soxr

RATE = 24_000


class AudioFileError(Exception):
    pass


def read_wav_24k_mono(path: str | Path) -> bytes:
    """The file's audio as pcm16 mono 24 kHz little-endian."""
    try:
        with wave.open(str(path), "rb") as w:
            rate, channels, width, n = w.getframerate(), w.getnchannels(), w.getsampwidth(), w.getnframes()
            raw = w.readframes(n)
    except FileNotFoundError:
        raise AudioFileError(f"{path}: no such file") from None
    except (wave.Error, EOFError) as e:
        raise AudioFileError(f"{path}: not a PCM WAV file ({e}); convert it, e.g. `sox IN -b 16 OUT.wav`") from None
    if width == 1:
        x = (np.frombuffer(raw, np.uint8).astype(np.float32) - 128) / 128
    elif width == 2:
        x = np.frombuffer(raw, "<i2").astype(np.float32) / 32768
    elif width == 3:
        b = np.frombuffer(raw, np.uint8).reshape(-1, 3)
        x = (b[:, 0].astype(np.int32) | b[:, 1].astype(np.int32) << 8 | b[:, 2].astype(np.int8).astype(np.int32) << 16)
        x = x.astype(np.float32) / 8388608
    else:
        x = np.frombuffer(raw, "<i4").astype(np.float32) / 2147483648
    x = x[: len(x) - len(x) % channels].reshape(-1, channels).mean(axis=1)
    if rate != RATE:
        x = soxr.resample(x, rate, RATE, quality="HQ")
    return (np.clip(x, -1, 1) * 32767).astype("<i2").tobytes()


def write_wav_24k_mono(path: str | Path, pcm16: bytes) -> None:
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(RATE)
        w.writeframes(pcm16)
