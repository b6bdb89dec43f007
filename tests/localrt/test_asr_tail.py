"""The last sentence of a segment is recognised whatever silence follows it (issue 10, item 3)."""

from __future__ import annotations

import subprocess

import numpy as np
import pytest
import soxr

from bot.audio.pcm import to_float


@pytest.fixture(scope="module")
def readme_8k(tmp_path_factory) -> np.ndarray:
    """The README sample as an 8 kHz stereo WAV written without dither, read back at 16 kHz."""
    d = tmp_path_factory.mktemp("readme")
    speech, wav8k = d / "s.wav", d / "r8k.wav"
    subprocess.run(["espeak-ng", "-w", str(speech), "Good morning everyone. The meeting starts at ten."], check=True)
    subprocess.run(["sox", str(speech), "-D", "-r", "8000", "-c", "2", str(wav8k)], check=True)
    from bot.audiofile import read_audio_24k_mono

    return soxr.resample(to_float(read_audio_24k_mono(wav8k)), 24_000, 16_000)


@pytest.mark.parametrize("trailing_s", [0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.8, 1.0])
def test_the_second_sentence_is_heard(engines, readme_8k: np.ndarray, trailing_s: float) -> None:
    """Before: depending on how much silence followed (e.g. the segment of a file that ends right after
    the sentence), whisper's no-timestamps mode stopped after "Good morning everyone."."""
    audio = np.concatenate([readme_8k, np.zeros(int(16_000 * trailing_s), np.float32)])
    text = engines.asr.transcribe(audio).text.lower()
    assert "meeting" in text and ("10" in text or "ten" in text), text
