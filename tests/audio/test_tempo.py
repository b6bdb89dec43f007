"""The WSOLA stretcher (audiotsm) as the mixer uses it: streamed in 20 ms chunks, faster, same pitch, nothing lost."""

from __future__ import annotations

import numpy as np
import pytest

from bot.audio.tempo import Stretcher

RATE = 24_000


def voiced(seconds: float, f0: float) -> np.ndarray:
    t = np.arange(int(seconds * RATE)) / RATE
    return sum(np.sin(2 * np.pi * f0 * k * t) / k for k in range(1, 6)).astype(np.float32) * 3000


def peak_hz(x: np.ndarray) -> float:
    spectrum = np.abs(np.fft.rfft(x * np.hanning(x.size)))
    return float(np.argmax(spectrum) * RATE / x.size)


@pytest.mark.parametrize("speed", [1.0, 1.2, 1.35])
def test_streamed_in_chunks_it_plays_faster_at_the_same_pitch(speed: float) -> None:
    x = voiced(3.0, 200)
    s = Stretcher()
    out = [s.feed(x[i : i + 480], speed) for i in range(0, x.size, 480)]
    out.append(s.flush())
    y = np.concatenate(out)
    assert y.size / RATE == pytest.approx(3.0 / speed, abs=0.03)  # the whole input came out, just faster
    assert peak_hz(y[RATE // 2 : RATE // 2 + RATE]) == pytest.approx(200, abs=2)
    assert np.abs(y).max() < 1.2 * np.abs(x).max()  # overlap-add is normalised: no build-up


def test_the_speed_may_change_between_chunks_and_flush_resets_for_the_next_stretch() -> None:
    x = voiced(2.0, 150)
    s = Stretcher()
    first = [s.feed(x[i : i + 480], 1.0 + 0.3 * i / x.size) for i in range(0, x.size, 480)]
    y = np.concatenate([*first, s.flush()])
    assert 2.0 / 1.3 < y.size / RATE < 2.0
    again = np.concatenate([*(s.feed(x[i : i + 480], 1.0) for i in range(0, x.size, 480)), s.flush()])
    assert again.size / RATE == pytest.approx(2.0, abs=0.03)
    assert s.flush().size == 0  # nothing held after a flush


def test_it_holds_a_bounded_amount_before_its_first_output() -> None:
    s = Stretcher()
    held = 0
    x = voiced(0.5, 200)
    for i in range(0, x.size, 480):
        if s.feed(x[i : i + 480], 1.0).size:
            break
        held += 480
    assert held <= Stretcher.latency_samples()
