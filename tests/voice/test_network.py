"""Loss, reordering, duplicates, wrap-around, late SSRC mapping, op 12/13, video SSRCs."""

import numpy as np
from discord import opus

from bot.voice.config import VoiceConfig
from tests.voice.conftest import assert_accounted, feed_all, receive_all, speaking
from tests.voice.peers import DiscordPeer, similarity, to_stereo_bytes


def pcm(sink, uid):
    return np.frombuffer(sink.pcm(uid), dtype=np.int16)


def test_loss_is_concealed_with_fec_when_present(make_receiver, sink, speech):
    enc = opus.Encoder(application="voip", bitrate=32, expected_packet_loss=0.2)
    peer = DiscordPeer(ssrc=3, encoder=enc)
    datagrams = peer.send_pcm(to_stereo_bytes(speech))
    lost = set(range(20, len(datagrams), 10))
    receiver = make_receiver()
    speaking(receiver, 1, 3)
    t = feed_all(receiver, [d for i, d in enumerate(datagrams) if i not in lost])
    receiver.tick(t + 1)
    c = assert_accounted(receiver)
    assert c["outcomes"]["decoded"] == len(datagrams) - len(lost)
    frames = c["frames"]
    assert frames["frames_fec"] + frames["frames_plc"] == len(lost)
    assert frames["frames_fec"] >= len(lost) // 2  # voip at 32 kb/s is SILK: LBRR is there
    out = pcm(sink, 1)
    assert abs(len(out) - len(speech) // 2) <= 960  # timing kept: every lost frame was filled
    assert similarity(speech, out)["env_corr"] >= 0.9


def test_burst_longer_than_conceal_limit_restarts_stream(make_receiver, sink, speech):
    peer = DiscordPeer(ssrc=3)
    datagrams = peer.send_pcm(to_stereo_bytes(speech))
    receiver = make_receiver(VoiceConfig(max_conceal_frames=5))
    c = receive_all(receiver, 1, 3, datagrams[:50] + datagrams[70:])
    assert c["frames"]["frames_plc"] == 0 and c["frames"]["streams"] == 2
    assert sink.ends[1] == 2


def test_reordering_and_duplicates(make_receiver, sink, speech):
    peer = DiscordPeer(ssrc=4)
    datagrams = peer.send_pcm(to_stereo_bytes(speech))
    rng = np.random.default_rng(1)
    shuffled = list(datagrams)
    for i in range(5, len(shuffled) - 3, 7):  # swap neighbours within the jitter depth
        j = i + int(rng.integers(1, 3))
        shuffled[i], shuffled[j] = shuffled[j], shuffled[i]
    dups = [shuffled[i] for i in range(3, len(shuffled), 11)]
    stream = []
    for i, d in enumerate(shuffled):
        stream.append(d)
        if i % 11 == 3:
            stream.append(d)  # network duplicate right behind
    receiver = make_receiver()
    c = receive_all(receiver, 8, 4, stream)
    assert c["outcomes"]["decoded"] == len(datagrams)
    assert c["outcomes"]["duplicate"] == len(dups)
    assert c["frames"]["frames_plc"] == c["frames"]["frames_fec"] == 0
    ref = DiscordPeer(ssrc=4)
    in_order = make_receiver()
    speaking(in_order, 9, 4)
    feed_all(in_order, ref.send_pcm(to_stereo_bytes(speech)))
    in_order.flush()
    assert sink.pcm(8) == sink.pcm(9)  # bit-exact with the in-order delivery


def test_sequence_wraparound_is_seamless(make_receiver, sink, speech):
    peer = DiscordPeer(ssrc=5, sequence=65500)
    datagrams = peer.send_pcm(to_stereo_bytes(speech))
    assert len(datagrams) > 36  # crosses 65535 → 0
    datagrams[40], datagrams[41] = datagrams[41], datagrams[40]
    receiver = make_receiver()
    c = receive_all(receiver, 1, 5, datagrams)
    assert c["outcomes"]["decoded"] == len(datagrams)
    assert c["frames"]["frames_plc"] == 0 and c["outcomes"]["late"] == 0
    assert similarity(speech, pcm(sink, 1))["snr_db"] >= 10


def test_late_ssrc_mapping_releases_held_packets(make_receiver, sink, speech):
    peer = DiscordPeer(ssrc=6)
    datagrams = peer.send_pcm(to_stereo_bytes(speech))
    receiver = make_receiver()
    t = feed_all(receiver, datagrams[:15])  # op 5 not seen yet
    assert receiver.pending == 15 and sink.frames == {}
    speaking(receiver, 77, 6, t)
    feed_all(receiver, datagrams[15:], t0=t)
    receiver.flush()
    c = assert_accounted(receiver)
    assert c["outcomes"]["decoded"] == len(datagrams) and c["outcomes"]["unmapped_dropped"] == 0
    assert similarity(speech, pcm(sink, 77))["snr_db"] >= 10


def test_unmapped_hold_is_bounded_in_count_and_age(make_receiver, speech):
    peer = DiscordPeer(ssrc=6)
    datagrams = peer.send_pcm(to_stereo_bytes(speech))[:60]
    receiver = make_receiver(VoiceConfig(unmapped_hold_packets=20, unmapped_hold_seconds=0.5))
    feed_all(receiver, datagrams[:50], step=0.001)
    c = assert_accounted(receiver)
    assert c["outcomes"]["unmapped_dropped"] == 30 and c["pending"] == 20
    receiver.tick(10.0)
    c = assert_accounted(receiver)
    assert c["outcomes"]["unmapped_dropped"] == 50 and c["pending"] == 0


def test_op13_drops_speaker_and_video_ssrcs_are_ignored(make_receiver, sink, speech):
    a = DiscordPeer(ssrc=30)
    video = DiscordPeer(ssrc=31)
    da = a.send_pcm(to_stereo_bytes(speech[: 48000]))
    receiver = make_receiver()
    receiver.on_gateway(12, {"user_id": "5", "audio_ssrc": 30, "video_ssrc": 31, "rtx_ssrc": 32,
                             "streams": [{"ssrc": 31, "rtx_ssrc": 32}]}, 0)
    assert receiver.speakers == {30: 5}
    feed_all(receiver, da[:30])
    feed_all(receiver, video.send_pcm(to_stereo_bytes(speech[:9600])))
    receiver.on_gateway(13, {"user_id": "5"}, 1.0)
    assert receiver.speakers == {} and sink.ends == {5: 1}
    frames_before = len(sink.frames[5])
    feed_all(receiver, da[30:], t0=1.0)  # stale packets after leaving: held, never decoded
    receiver.flush()
    c = assert_accounted(receiver)
    assert c["outcomes"]["video"] == 10
    assert c["outcomes"]["decoded"] == 30
    assert c["outcomes"]["unmapped_dropped"] == len(da) - 30
    assert len(sink.frames[5]) == frames_before


def test_malformed_gateway_payloads_are_ignored(make_receiver):
    receiver = make_receiver()
    for op, d in [(5, None), (5, {"ssrc": "x"}), (12, []), (13, {}), (11, {"user_ids": 3}), (4, {"mode": 1})]:
        receiver.on_gateway(op, d, 0)
    assert receiver.speakers == {}


def test_one_broken_speaker_does_not_disturb_another(make_receiver, sink, speech, monkeypatch):
    good, bad = DiscordPeer(ssrc=40), DiscordPeer(ssrc=41)
    dg = good.send_pcm(to_stereo_bytes(speech))
    db = bad.send_pcm(to_stereo_bytes(speech))
    receiver = make_receiver()
    speaking(receiver, 1, 40)
    speaking(receiver, 2, 41)
    broken = receiver._by_ssrc[41]

    def explode(*a, **k):
        raise RuntimeError("decoder bug")

    monkeypatch.setattr(broken, "_decoder", type("D", (), {"decode": explode, "reset": lambda s: None})())
    for x, y in zip(dg, db, strict=True):
        receiver.feed(x, 0)
        receiver.feed(y, 0)
    receiver.flush()
    c = assert_accounted(receiver)
    assert c["outcomes"]["internal_error"] == 1  # then the speaker was rebuilt and recovered
    assert c["outcomes"]["decoded"] == 2 * len(dg) - 1
    assert similarity(speech, pcm(sink, 1))["snr_db"] >= 10


class FailNth:
    """E2EE stand-in that fails the n-th frame it sees (0-based) and passes the others through."""

    def __init__(self, n: int) -> None:
        self.n, self.calls = n, 0

    def decrypt(self, user_id: int, frame: bytes) -> bytes | None:
        self.calls += 1
        return None if self.calls - 1 == self.n else frame


def test_loss_followed_by_undecryptable_frame_conceals_both(make_receiver, sink, speech):
    datagrams = DiscordPeer(ssrc=50).send_pcm(to_stereo_bytes(speech[:48000]))
    receiver = make_receiver(dave=FailNth(10))  # after dropping #10, the 11th frame seen is #11
    speaking(receiver, 1, 50)
    t = feed_all(receiver, datagrams[:10] + datagrams[11:])
    receiver.tick(t + 1)
    c = assert_accounted(receiver)
    assert c["outcomes"]["dave_failed"] == 1 and c["outcomes"]["decoded"] == 48
    assert c["frames"]["frames_plc"] == 2 and c["frames"]["frames_fec"] == 0
    assert 49 <= len(sink.frames[1]) <= 51  # 50 frames of timing kept


def test_corrupt_opus_is_concealed(make_receiver, sink, speech):
    peer = DiscordPeer(ssrc=51)
    datagrams = peer.send_pcm(to_stereo_bytes(speech[:19200]))
    bad = DiscordPeer(ssrc=51, sequence=10, timestamp=9600).send_opus(b"\xff")  # code 3, no count byte
    receiver = make_receiver()
    c = receive_all(receiver, 1, 51, [*datagrams[:10], bad, *datagrams[11:]])
    assert c["outcomes"]["opus_error"] == 1 and c["outcomes"]["decoded"] == 19
    assert c["frames"]["frames_plc"] == 1


def test_first_packets_of_a_new_talk_spurt_may_arrive_reordered(make_receiver, sink, speech):
    from bot.audio.opus import SILENCE_FRAME

    peer = DiscordPeer(ssrc=60)
    first = peer.send_pcm(to_stereo_bytes(speech[:19200]))
    silence = [peer.send_opus(SILENCE_FRAME) for _ in range(5)]
    second = peer.send_pcm(to_stereo_bytes(speech[19200:38400]))
    second[0], second[1] = second[1], second[0]
    receiver = make_receiver()
    speaking(receiver, 1, 60)
    t = feed_all(receiver, first + silence)
    assert sink.ends == {1: 1}
    feed_all(receiver, second, t0=t + 2.0)  # after a pause; sequence numbers carried on
    receiver.flush()
    c = assert_accounted(receiver)
    assert c["outcomes"]["decoded"] == 40 and c["outcomes"]["late"] == 0
    assert c["frames"]["streams"] == 2 and c["frames"]["frames_plc"] == 0
