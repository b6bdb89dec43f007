"""Speech sent by discord.py's sender code comes out of the receiver as the same speech.

Similarity: the source is resampled to 24 kHz, aligned with the output by the lag of maximum
normalized waveform correlation (searched over 0-100 ms), then compared by (a) the correlation of
10 ms RMS envelopes (threshold 0.97) and (b) the waveform SNR after alignment and least-squares gain
(threshold 10 dB; Opus at discord.py's 128 kb/s gives ~17 dB here). A misaligned copy of the
same output scores near 0 on both, so the thresholds can fail.
"""

import numpy as np

from bot.audio.opus import SILENCE_FRAME
from tests.voice.conftest import assert_accounted, feed_all, receive_all, speaking
from tests.voice.peers import DiscordPeer, similarity, to_stereo_bytes

ENV_MIN = 0.97
SNR_MIN_DB = 10.0


def output(sink, user_id: int) -> np.ndarray:
    return np.frombuffer(sink.pcm(user_id), dtype=np.int16)


def test_speech_roundtrip(make_receiver, sink, speech):
    peer = DiscordPeer(ssrc=1111)
    datagrams = peer.send_pcm(to_stereo_bytes(speech))
    datagrams += [peer.send_opus(SILENCE_FRAME) for _ in range(5)]
    receiver = make_receiver()
    speaking(receiver, 42, 1111)
    feed_all(receiver, datagrams)
    c = assert_accounted(receiver)
    assert c["pending"] == 0  # the silence frames ended the stream without a flush
    assert c["outcomes"]["decoded"] == len(datagrams) - 5
    assert c["outcomes"]["silence"] == 5
    assert sink.ends == {42: 1}
    assert all(len(f) == 960 for f in sink.frames[42])
    sim = similarity(speech, output(sink, 42))
    assert sim["env_corr"] >= ENV_MIN and sim["snr_db"] >= SNR_MIN_DB, sim
    assert 0.98 < sim["length_ratio"] < 1.02
    shifted = np.roll(output(sink, 42), 4800)[4800:]
    bad = similarity(speech[9600:], shifted[: len(shifted) - 4800])
    assert bad["snr_db"] < 3.0  # the measure does reject a wrong signal


def test_forwarded_datagrams_with_header_extension(make_receiver, sink, speech):
    peer = DiscordPeer(ssrc=2222, sequence=100)
    datagrams = peer.send_with_extension(to_stereo_bytes(speech), ext_words=1)
    receiver = make_receiver()
    c = receive_all(receiver, 7, 2222, datagrams)
    assert c["outcomes"]["decoded"] == len(datagrams)
    sim = similarity(speech, output(sink, 7))
    assert sim["env_corr"] >= ENV_MIN and sim["snr_db"] >= SNR_MIN_DB, sim


def test_two_speakers_interleaved_stay_separate(make_receiver, sink, speech):
    a, b = DiscordPeer(ssrc=10), DiscordPeer(ssrc=20, sequence=60000)
    tone = (np.sin(2 * np.pi * 330 * np.arange(len(speech)) / 48000) * 6000).astype(np.int16)
    da = a.send_pcm(to_stereo_bytes(speech))
    db = b.send_pcm(to_stereo_bytes(tone))
    receiver = make_receiver()
    speaking(receiver, 1, 10)
    speaking(receiver, 2, 20)
    for x, y in zip(da, db, strict=True):
        receiver.feed(x, 0)
        receiver.feed(y, 0)
    receiver.flush()
    assert similarity(speech, output(sink, 1))["snr_db"] >= SNR_MIN_DB
    assert similarity(tone, output(sink, 2))["snr_db"] >= SNR_MIN_DB
    assert similarity(tone, output(sink, 1))["env_corr"] < 0.5


def test_stream_ends_on_timeout_and_restarts(make_receiver, sink, speech):
    peer = DiscordPeer(ssrc=5)
    first = peer.send_pcm(to_stereo_bytes(speech[: 48000]))
    second = peer.send_pcm(to_stereo_bytes(speech[48000:96000]))
    receiver = make_receiver()
    speaking(receiver, 9, 5)
    t = feed_all(receiver, first)
    receiver.tick(t + 0.1)
    assert sink.ends == {}
    receiver.tick(t + 1.0)  # > stream_timeout, no silence frames were sent
    assert sink.ends == {9: 1}
    n_first = len(sink.frames[9])
    assert 49 <= n_first <= 51
    feed_all(receiver, second, t0=t + 2.0)
    receiver.tick(t + 5.0)
    assert sink.ends == {9: 2}
    assert receiver.counters()["frames"]["streams"] == 2
    assert receiver.counters()["frames"]["frames_plc"] == 0
