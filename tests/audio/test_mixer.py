"""Mixer: tones in at 24 kHz mono come out at 48 kHz stereo, summed, bounded, on time, and through libopus."""

from __future__ import annotations

import asyncio
import hashlib
import threading

import discord.opus
import numpy as np
import pytest

from bot.audio.mixer import OUT_FRAME_BYTES, SILENT_OUT_FRAME, Mixer, _soft_clip

RATE_IN = 24_000
RATE_OUT = 48_000


def tone(freq: float, seconds: float, amp: float = 0.3) -> bytes:
    t = np.arange(int(seconds * RATE_IN)) / RATE_IN
    return (amp * 32767 * np.sin(2 * np.pi * freq * t)).astype(np.int16).tobytes()


def read(mixer: Mixer, frames: int) -> np.ndarray:
    """`frames` reads as an (n, 2) int16 array, checking the frame size on the way."""
    out = []
    for _ in range(frames):
        frame = mixer.read_frame()
        assert len(frame) == OUT_FRAME_BYTES
        out.append(frame)
    return np.frombuffer(b"".join(out), dtype=np.int16).reshape(-1, 2)


def peak_hz(x: np.ndarray, rate: int = RATE_OUT) -> float:
    spectrum = np.abs(np.fft.rfft(x * np.hanning(x.size)))
    return float(np.argmax(spectrum) * rate / x.size)


def band_level(x: np.ndarray, freq: float, rate: int = RATE_OUT, width: float = 20.0) -> float:
    """Spectral magnitude around `freq`, relative to the strongest bin."""
    spectrum = np.abs(np.fft.rfft(x * np.hanning(x.size)))
    bins = np.fft.rfftfreq(x.size, 1 / rate)
    return float(spectrum[np.abs(bins - freq) <= width].max() / spectrum.max())


def audible(x: np.ndarray, floor: int = 200) -> np.ndarray:
    return np.nonzero(np.abs(x.astype(np.int32)) > floor)[0]


def test_a_tone_comes_out_at_48k_stereo_same_pitch_same_duration() -> None:
    mixer = Mixer()
    mixer.push(1, tone(1000, 1.0))
    out = read(mixer, 70)
    assert np.array_equal(out[:, 0], out[:, 1])  # mono duplicated to both channels
    on = audible(out[:, 0])
    duration = (on[-1] - on[0] + 1) / RATE_OUT
    assert duration == pytest.approx(1.0, abs=0.005)
    assert on[0] / RATE_OUT < 0.1  # latency: prebuffer + resampler, well under 100 ms
    assert peak_hz(out[on[0] : on[-1], 0].astype(np.float64)) == pytest.approx(1000, abs=2)
    # amplitude preserved through the resampler (0.3 of full scale in, below the limiter's knee)
    assert np.abs(out[:, 0]).max() == pytest.approx(0.3 * 32767, rel=0.03)
    stats = mixer.stats()
    assert stats.samples_mixed == RATE_IN
    assert stats.frames == 70 and stats.frames_mixed == 50
    assert stats.underruns == 0 and stats.output_gaps == 0 and stats.samples_dropped == 0


def test_silence_when_nothing_is_queued_and_has_audio_follows_the_tail() -> None:
    mixer = Mixer()
    assert not mixer.has_audio()
    assert mixer.read_frame() == SILENT_OUT_FRAME
    mixer.push(7, tone(500, 0.1))
    assert mixer.has_audio()
    frames = [mixer.read_frame() for _ in range(20)]
    assert any(f != SILENT_OUT_FRAME for f in frames)
    while mixer.has_audio():  # the resampler's tail drains, then the mixer says so
        frames.append(mixer.read_frame())
        assert len(frames) < 100
    assert mixer.read_frame() == SILENT_OUT_FRAME


def test_two_speakers_sum_linearly() -> None:
    a, b = tone(440, 0.6), tone(1250, 0.6)
    alone_a, alone_b, both = Mixer(), Mixer(), Mixer()
    alone_a.push(1, a)
    alone_b.push(2, b)
    both.push(1, a)
    both.push(2, b)
    xa, xb, xab = (read(m, 40)[:, 0].astype(np.int32) for m in (alone_a, alone_b, both))
    assert np.abs(xab - (xa + xb)).max() <= 2  # rounding only: the sum is exact below the knee
    assert band_level(xab.astype(np.float64), 440) > 0.8
    assert band_level(xab.astype(np.float64), 1250) > 0.8


def test_loud_speakers_are_soft_clipped_never_wrapped() -> None:
    loud = tone(150, 0.5, amp=1.0)
    one, three = Mixer(), Mixer()
    one.push(0, loud)
    for key in range(3):  # three full-scale sines in phase: 3.0 × full scale before the limiter
        three.push(key, loud)
    x1, x3 = (read(m, 35)[:, 0].astype(np.int32) for m in (one, three))
    clear = np.abs(x1) > 3000
    assert np.all(np.sign(x3[clear]) == np.sign(x1[clear]))  # int16 wrap-around would flip signs
    assert 0.95 * 32767 < np.abs(x3).max() < 32767  # loud, bent towards the ceiling, not hard-clipped
    assert np.all(np.abs(x3[clear]) >= np.abs(x1[clear]) * 0.97)  # and never quieter than one speaker


def test_soft_clip_is_identity_below_the_knee_and_bounded_monotonic_above() -> None:
    quiet = np.linspace(-0.8, 0.8, 101, dtype=np.float32)
    assert np.array_equal(_soft_clip(quiet), quiet)
    loud = np.linspace(-20, 20, 4001, dtype=np.float32)
    bent = _soft_clip(loud)
    assert np.all(np.abs(bent) <= 0.97)
    assert np.all(np.diff(bent) >= 0)


def test_backlog_bound_drops_the_oldest_audio_and_counts_it() -> None:
    mixer = Mixer(max_backlog_s=0.5)
    mixer.push(1, tone(500, 1.5))
    mixer.push(1, tone(2000, 0.5))
    stats = mixer.stats()
    assert stats.samples_dropped == int(1.5 * RATE_IN)
    assert mixer.backlog_ms(1) == pytest.approx(500)
    out = read(mixer, 40)[:, 0].astype(np.float64)
    assert peak_hz(out) == pytest.approx(2000, abs=3)  # what stayed is the newest audio
    assert band_level(out, 500) < 0.01
    assert mixer.stats().samples_mixed == RATE_IN // 2


def test_odd_sized_chunks_join_seamlessly() -> None:
    pcm = tone(700, 0.5)
    whole, pieces = Mixer(), Mixer()
    whole.push(1, pcm)
    for i in range(0, len(pcm), 777):  # odd sizes: samples split across pushes
        pieces.push(1, pcm[i : i + 777])
    assert np.array_equal(read(whole, 35), read(pieces, 35))


def test_a_short_tail_plays_after_the_prebuffer_wait_and_late_audio_counts_an_underrun() -> None:
    mixer = Mixer(prebuffer_ms=40)
    mixer.push(1, tone(1000, 0.010))  # 10 ms, shorter than the prebuffer
    out = read(mixer, 12)[:, 0]
    assert audible(out).size > 0
    assert mixer.stats().underruns == 0  # a tail is not an underrun
    mixer.push(1, tone(1000, 0.030))  # 30 ms: two reads waiting, one frame plays, then 10 ms wait for more
    read(mixer, 4)
    mixer.push(1, tone(1000, 0.100))  # ...which arrives late
    read(mixer, 10)
    assert mixer.stats().underruns == 1


def test_prebuffer_holds_a_speaker_back_until_enough_is_queued() -> None:
    mixer = Mixer(prebuffer_ms=60)
    for _ in range(2):  # 20 ms arriving per read: below the 60 ms prebuffer, waits
        mixer.push(1, tone(1000, 0.020))
        mixer.read_frame()
    assert mixer.stats().samples_mixed == 0
    mixer.push(1, tone(1000, 0.020))
    mixer.read_frame()
    assert mixer.stats().samples_mixed == 480


def test_remove_discards_a_speaker() -> None:
    mixer = Mixer()
    mixer.push(3, tone(300, 0.2))
    assert mixer.remove(3) == int(0.2 * RATE_IN)
    assert mixer.remove(3) == 0
    assert mixer.backlog_ms(3) == 0
    assert mixer.stats().speakers == 0
    assert all(f == SILENT_OUT_FRAME for f in (mixer.read_frame() for _ in range(10)))


def test_output_is_deterministic() -> None:
    def run() -> str:
        mixer = Mixer()
        digest = hashlib.sha256()
        for i in range(50):
            mixer.push(i % 3, tone(300 + 100 * (i % 3), 0.037, amp=0.5))
            digest.update(mixer.read_frame())
        for _ in range(100):
            digest.update(mixer.read_frame())
        return digest.hexdigest()

    assert run() == run()


async def test_reading_on_a_thread_while_the_loop_pushes() -> None:
    mixer = Mixer(max_backlog_s=30)
    stop = threading.Event()
    frames: list[bytes] = []
    errors: list[BaseException] = []

    def player() -> None:  # like discord.py's AudioPlayer, but as fast as it can go
        try:
            while not stop.is_set():
                frames.append(mixer.read_frame())
        except BaseException as exc:  # pragma: no cover - the assertion below reports it
            errors.append(exc)

    thread = threading.Thread(target=player, daemon=True)
    thread.start()
    pcm = tone(900, 2.0)
    pushed = 0
    for i, size in enumerate(range(0, len(pcm), 1001)):
        mixer.push(i % 4, pcm[size : size + 1001])
        pushed += len(pcm[size : size + 1001])
        await asyncio.sleep(0)
    while mixer.has_audio():
        await asyncio.sleep(0.001)
    stop.set()
    thread.join(5)
    assert not errors
    assert all(len(f) == OUT_FRAME_BYTES for f in frames)
    stats = mixer.stats()
    assert stats.samples_mixed + stats.samples_dropped == pushed // 2
    assert stats.frames == len(frames)


def test_the_tone_survives_discord_py_opus_encode_and_decode() -> None:
    """Exactly what discord.py's player does with read(): Encoder().encode(frame, 960); a client decodes it."""
    mixer = Mixer()
    mixer.push(1, tone(1000, 1.0, amp=0.5))
    encoder, decoder = discord.opus.Encoder(), discord.opus.Decoder()
    decoded = []
    for _ in range(60):
        packet = encoder.encode(mixer.read_frame(), encoder.SAMPLES_PER_FRAME)
        assert 0 < len(packet) < 1276
        decoded.append(decoder.decode(packet, fec=False))
    pcm = np.frombuffer(b"".join(decoded), dtype=np.int16).reshape(-1, 2).astype(np.float64)
    on = audible(pcm[:, 0], floor=1000)
    assert (on[-1] - on[0]) / RATE_OUT == pytest.approx(1.0, abs=0.01)
    body = pcm[on[0] + 2400 : on[-1] - 2400]
    for channel in (0, 1):
        assert peak_hz(body[:, channel]) == pytest.approx(1000, abs=2)
        rms = np.sqrt(np.mean(body[:, channel] ** 2))
        assert rms == pytest.approx(0.5 * 32767 / np.sqrt(2), rel=0.1)


@pytest.mark.parametrize("bad", [{"max_backlog_s": 0}, {"prebuffer_ms": -1}])
def test_bad_settings_are_refused(bad: dict) -> None:
    with pytest.raises(ValueError):
        Mixer(**bad)
