"""Mixer: tones in at 24 kHz mono come out at 48 kHz stereo, summed, bounded, on time, and through libopus."""

from __future__ import annotations

import asyncio
import hashlib
import threading

import discord.opus
import numpy as np
import pytest

from bot.audio.mixer import DUCK_GAIN, OUT_FRAME_BYTES, SILENT_OUT_FRAME, Mixer, _soft_clip

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


def test_overlapping_speakers_the_floor_holder_full_the_other_ducked() -> None:
    """Policy: overlapping speakers are mixed; whoever was playing first holds the floor at full level, the one
    talking over them is ducked by 6 dB (ramped, no click) until the floor is free, then back to full."""
    a, b = tone(440, 0.6), tone(1250, 1.0)
    alone_a, alone_b, both = Mixer(), Mixer(), Mixer()
    alone_a.push(1, a)
    both.push(1, a)
    read(both, 3)  # Alice has been playing for 60 ms when Bob starts
    read(alone_a, 3)
    alone_b.push(2, b)
    both.push(2, b)
    xa, xb, xab = (read(m, 60)[:, 0].astype(np.float64) for m in (alone_a, alone_b, both))
    f = 960  # one 20 ms frame at 48 kHz; the resampler's delay is well under one
    overlap = slice(4 * f, 24 * f)  # both talking (Alice has 0.6 s, Bob 1.0 s)
    assert np.abs(xab[overlap] - (xa[overlap] + DUCK_GAIN * xb[overlap])).max() <= 3
    after = slice(32 * f, 44 * f)  # Alice done: Bob holds the floor, at full level again
    assert np.abs(xab[after] - xb[after]).max() <= 3
    assert band_level(xab[overlap], 440) > 0.8  # both still audible
    assert band_level(xab[overlap], 1250) > 0.4


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
    """Audio that has waited longer than the bound (in play time: 20 ms per read) while the queue is over it
    goes, oldest first; what came since stays."""
    mixer = Mixer(max_backlog_s=0.5, max_tempo=1.0)
    mixer.push(1, tone(500, 1.5))
    read(mixer, 30)  # 0.6 s played: the rest of the 500 Hz tone has now waited 0.6 s
    mixer.push(1, tone(2000, 0.5))
    stats = mixer.stats()
    assert stats.samples_dropped == int(0.9 * RATE_IN)
    assert mixer.backlog_ms(1) == pytest.approx(500)
    out = read(mixer, 40)[:, 0].astype(np.float64)
    assert peak_hz(out) == pytest.approx(2000, abs=3)  # what stayed is the newest audio
    assert band_level(out, 500) < 0.01
    assert mixer.stats().samples_mixed == int(0.6 * RATE_IN) + RATE_IN // 2


def test_one_burst_longer_than_the_bound_is_played_whole_and_faster() -> None:
    """bot.localrt sends a sentence's synthesized speech at once: 1.5 s into a 0.5 s bound is not cut at its
    start (the words a listener needs first); it plays faster until caught up."""
    mixer = Mixer(max_backlog_s=0.5)
    mixer.push(1, tone(500, 1.5))
    assert mixer.stats().samples_dropped == 0 and mixer.backlog_ms(1) == pytest.approx(1500)
    out = read(mixer, 100)[:, 0].astype(np.float64)
    stats = mixer.stats()
    assert stats.samples_dropped == 0 and stats.samples_mixed == int(1.5 * RATE_IN)
    assert stats.max_tempo_used > 1.0
    assert peak_hz(out[: int(0.5 * 48_000)]) == pytest.approx(500, abs=3)  # faster, same pitch


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


def test_the_frame_that_starts_a_delta_records_its_delay_and_dropped_deltas_record_none() -> None:
    from bot import latency

    mixer = Mixer(max_backlog_s=1.0, prebuffer_ms=0)
    before_n = latency.count(latency.DELTA_TO_FRAME)
    arrived = latency.now() - 0.5  # as if it had come off the websocket half a second ago
    mixer.push(7, tone(440, 0.1), received_at=arrived)
    mixer.push(7, tone(440, 0.1), received_at=arrived)  # starts 100 ms in: observed by the 6th frame
    read(mixer, 1)
    assert latency.count(latency.DELTA_TO_FRAME) == before_n + 1
    read(mixer, 5)
    assert latency.count(latency.DELTA_TO_FRAME) == before_n + 2
    # a delta pushed out by the backlog bound before it was heard is not a delay anyone felt
    mixer.push(8, tone(440, 0.4), received_at=latency.now())
    mixer.push(8, tone(440, 1.0), received_at=latency.now())  # drops the first 0.4 s
    read(mixer, 1)
    assert latency.count(latency.DELTA_TO_FRAME) == before_n + 3


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


def voiced(seconds: float, f0: float = 180.0, amp: float = 0.25) -> bytes:
    """A steady voiced sound (harmonics of f0): something with a pitch that a time-stretch must keep."""
    t = np.arange(int(seconds * RATE_IN)) / RATE_IN
    x = sum(np.sin(2 * np.pi * f0 * k * t) / k for k in range(1, 6))
    return (amp / 2.3 * 32767 * x).astype(np.int16).tobytes()


def run_continuous(mixer: Mixer, seconds: float, longer: float) -> tuple[np.ndarray, list[float]]:
    """A speaker talking for `seconds` whose translation runs `longer` (0.3: 30 %) longer arrives in odd-sized
    chunks as fast as it is produced, one push per 20 ms read; then the queue drains. Compressed time: reads
    are not paced, so a minute takes a second or two. Returns the left channel and the backlog after each read."""
    pcm = voiced(seconds * (1 + longer))
    frames = int(seconds * 50)
    per_frame = len(pcm) / frames
    out, backlog = [], []
    sent = 0
    for i in range(frames):
        upto = int(per_frame * (i + 1)) & ~1
        mixer.push(1, pcm[sent:upto])
        sent = upto
        out.append(mixer.read_frame())
        backlog.append(mixer.backlog_ms(1))
    while mixer.has_audio():
        out.append(mixer.read_frame())
        assert len(out) < frames * 2
    return np.frombuffer(b"".join(out), dtype=np.int16).reshape(-1, 2)[:, 0].astype(np.float64), backlog


def test_a_continuous_minute_whose_translation_runs_30_percent_longer_loses_nothing() -> None:
    mixer = Mixer()  # the defaults: 3 s bound, up to 1.35×
    out, backlog = run_continuous(mixer, 60, 0.30)
    stats = mixer.stats()
    assert stats.samples_dropped == 0
    assert stats.samples_mixed == int(60 * 1.3 * RATE_IN) & ~1  # every sample was played
    assert 1.25 < stats.max_tempo_used <= 1.35
    assert max(backlog) < 3000 * 0.8  # the delay settles below where the tempo is at its most
    on = audible(out)
    played = (on[-1] - on[0]) / RATE_OUT
    assert 60 < played < 63  # 78 s of translation heard within the bound (3 s) of the minute it took to say
    middle = out[30 * RATE_OUT : 31 * RATE_OUT]
    assert peak_hz(middle) == pytest.approx(180, abs=3)  # faster, same pitch
    assert stats.underruns == 0


def test_a_speaker_within_the_bound_keeps_only_the_backlogs_arrivals() -> None:
    mixer = Mixer()
    delta = tone(180, 0.1)  # a delta every 100 ms, played as fast as it comes: never near the bound
    for _ in range(600):  # a minute
        mixer.push(7, delta)
        read(mixer, 5)
    assert mixer.stats().samples_dropped == 0
    assert len(mixer._voices[7].arrivals) <= 3, "every delta's arrival was kept for the whole session"


def test_without_catch_up_the_same_minute_drops_audio() -> None:
    """The witness that the test above can fail: at 1× the 3 s bound overflows and the oldest audio goes."""
    mixer = Mixer(max_tempo=1.0)
    run_continuous(mixer, 60, 0.30)
    assert mixer.stats().samples_dropped > 10 * RATE_IN
    assert mixer.stats().max_tempo_used == 1.0


def test_catch_up_only_when_falling_behind_and_beyond_max_tempo_drops_are_counted() -> None:
    relaxed = Mixer()
    run_continuous(relaxed, 10, 0.0)  # a translation no longer than the speech: played as it is
    assert relaxed.stats().samples_sped_up == 0 and relaxed.stats().max_tempo_used == 1.0
    overrun = Mixer()
    run_continuous(overrun, 30, 0.6)  # 60 % longer: more than 1.35× can absorb
    stats = overrun.stats()
    assert stats.max_tempo_used == pytest.approx(1.35)
    assert 0 < stats.samples_dropped < 0.3 * 30 * 1.6 * RATE_IN


def test_a_burst_of_queued_audio_plays_faster_at_the_same_pitch_and_nothing_is_lost() -> None:
    mixer = Mixer()
    mixer.push(1, voiced(2.5, f0=220))  # a whole sentence at once (bot.localrt answers per sentence)
    frames = []
    while mixer.has_audio() or not frames:
        frames.append(mixer.read_frame())
    out = np.frombuffer(b"".join(frames), dtype=np.int16).reshape(-1, 2)[:, 0].astype(np.float64)
    on = audible(out)
    duration = (on[-1] - on[0]) / RATE_OUT
    assert 2.0 < duration < 2.45  # sped up while more than 1 s was queued
    assert peak_hz(out[on[0] + 4800 : on[0] + 4800 + RATE_OUT]) == pytest.approx(220, abs=3)
    stats = mixer.stats()
    assert stats.samples_dropped == 0 and stats.samples_mixed == int(2.5 * RATE_IN)
    assert stats.samples_sped_up > 0
    # The stretcher let go once the queue ran dry: the next short phrase is played as it is.
    mixer.push(1, tone(1000, 0.3))
    out2 = read(mixer, 25)[:, 0]
    on2 = audible(out2)
    assert (on2[-1] - on2[0]) / RATE_OUT == pytest.approx(0.3, abs=0.005)


@pytest.mark.parametrize("bad", [{"max_backlog_s": 0}, {"prebuffer_ms": -1}, {"max_tempo": 0.9}, {"max_tempo": 3}])
def test_bad_settings_are_refused(bad: dict) -> None:
    with pytest.raises(ValueError):
        Mixer(**bad)
