"""One float ↔ int16 convention (issue 10): every conversion in the audio paths goes through bot.audio.pcm."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from bot.audio.pcm import to_float, to_int16, to_pcm16

ROOT = Path(__file__).resolve().parents[2]


def test_every_int16_survives_the_round_trip_bit_exact() -> None:
    every = np.arange(-32768, 32768, dtype=np.int16)
    assert np.array_equal(to_int16(to_float(every)), every)
    assert to_pcm16(to_float(every.tobytes())) == every.tobytes()


def test_full_scale_and_clipping() -> None:
    assert to_float(np.array([-32768, 0, 16384], np.int16)).tolist() == [-1.0, 0.0, 0.5]
    assert to_int16(np.array([-2.0, -1.0, 1.0, 2.0], np.float32)).tolist() == [-32768, -32768, 32767, 32767]


def test_no_other_scaling_constants_in_the_audio_paths() -> None:
    """The convention was written six times, two of them with 32767: now once."""
    files = [ROOT / "bot/audiofile.py", ROOT / "bot/translate_file.py"]
    for folder in ("bot/audio", "bot/localrt", "bot/voice"):
        files += sorted((ROOT / folder).rglob("*.py"))
    offenders = []
    for f in files:
        if f.name in ("pcm.py", "jitter.py"):  # jitter.py: 32768 is half the RTP sequence space
            continue
        for n, line in enumerate(f.read_text().splitlines(), 1):
            if re.search(r"\b3276[78]\b", line):
                offenders.append(f"{f.relative_to(ROOT)}:{n}: {line.strip()}")
    assert offenders == []
