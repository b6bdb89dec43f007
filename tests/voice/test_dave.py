"""DAVE end-to-end encryption with real davey sessions in a locally formed MLS group."""

import numpy as np
import pytest

from bot.audio.opus import SILENCE_FRAME
from bot.voice.dave import DaveDecryptor, looks_dave
from tests.voice.conftest import assert_accounted, feed_all, receive_all, speaking
from tests.voice.dave_group import make_group
from tests.voice.peers import DiscordPeer, similarity, to_stereo_bytes

ALICE, BOT = 111_111_111_111, 222_222_222_222


@pytest.fixture
def group():
    return make_group([ALICE, BOT])


def test_group_roundtrip_sanity(group):
    frame = b"\xfc" + bytes(range(60))
    sealed = group[ALICE].encrypt_opus(frame)
    assert sealed != frame and looks_dave(sealed) and not looks_dave(frame)
    assert DaveDecryptor(lambda: group[BOT]).decrypt(ALICE, sealed) == frame


def test_dave_encrypted_speech_is_decoded(make_receiver, sink, speech, group):
    peer = DiscordPeer(ssrc=900, dave_session=group[ALICE])
    datagrams = peer.send_pcm(to_stereo_bytes(speech))
    datagrams += [peer.send_opus(SILENCE_FRAME) for _ in range(3)]
    receiver = make_receiver(dave=DaveDecryptor(lambda: group[BOT]))
    speaking(receiver, ALICE, 900)
    feed_all(receiver, datagrams)
    c = assert_accounted(receiver)
    assert c["outcomes"]["decoded"] == len(datagrams) - 3 and c["outcomes"]["dave_failed"] == 0
    assert c["outcomes"]["silence"] == 3
    out = np.frombuffer(sink.pcm(ALICE), dtype=np.int16)
    sim = similarity(speech, out)
    assert sim["env_corr"] >= 0.97 and sim["snr_db"] >= 10, sim


def test_wrong_user_or_undecryptable_frames_are_counted_and_concealed(make_receiver, sink, speech, group):
    peer = DiscordPeer(ssrc=901, dave_session=group[ALICE])
    datagrams = peer.send_pcm(to_stereo_bytes(speech[: 48000]))
    receiver = make_receiver(dave=DaveDecryptor(lambda: group[BOT]))
    speaking(receiver, ALICE, 901)
    # frames 10-12 get a flipped DAVE tag byte (transport re-sealed by the same discord.py peer)
    bad_peer = DiscordPeer(ssrc=901, sequence=10, timestamp=10 * 960)
    corrupted = []
    for _ in range(3):
        bad = bytearray(group[ALICE].encrypt_opus(b"\xfc" + bytes(40)))
        bad[-6] ^= 0xFF
        corrupted.append(bad_peer.send_opus(bytes(bad)))
    stream = datagrams[:10] + corrupted + datagrams[13:]
    t = feed_all(receiver, stream)
    receiver.tick(t + 1)
    c = assert_accounted(receiver)
    assert c["outcomes"]["dave_failed"] == 3
    assert c["outcomes"]["decoded"] == len(datagrams) - 3
    assert c["frames"]["frames_plc"] == 3  # timing kept by concealment
    assert len(sink.frames[ALICE]) in range(49, 52)
    # the same stream attributed to another member cannot be decrypted
    other = make_receiver(dave=DaveDecryptor(lambda: group[BOT], e2ee_required=lambda: True))
    speaking(other, 333, 901)
    feed_all(other, datagrams)
    other.flush()
    assert assert_accounted(other)["outcomes"]["dave_failed"] == len(datagrams)


def test_passthrough_frames_during_transition(make_receiver, sink, speech, group):
    plain_peer = DiscordPeer(ssrc=902)  # a member whose client has not switched to E2EE yet
    datagrams = plain_peer.send_pcm(to_stereo_bytes(speech[:48000]))
    strict = make_receiver(dave=DaveDecryptor(lambda: group[BOT], e2ee_required=lambda: True))
    speaking(strict, ALICE, 902)
    feed_all(strict, datagrams)
    strict.flush()
    assert assert_accounted(strict)["outcomes"]["dave_failed"] == len(datagrams)
    group[BOT].set_passthrough_mode(True, 10)  # what discord.py does on a downgrade/transition
    lenient = make_receiver(dave=DaveDecryptor(lambda: group[BOT], e2ee_required=lambda: True))
    c = receive_all(lenient, ALICE, 902, datagrams)
    assert c["outcomes"]["decoded"] == len(datagrams)
    assert similarity(speech[:48000], np.frombuffer(sink.pcm(ALICE), dtype=np.int16))["snr_db"] >= 10


def test_no_session_live_is_plain_and_replay_counts_dave_frames(make_receiver, sink, speech, group):
    enc_peer = DiscordPeer(ssrc=903, dave_session=group[ALICE])
    datagrams = enc_peer.send_pcm(to_stereo_bytes(speech[:19200]))
    replay = make_receiver(dave=DaveDecryptor(None))  # a capture: no MLS secrets
    speaking(replay, ALICE, 903)
    feed_all(replay, datagrams)
    replay.flush()
    assert assert_accounted(replay)["outcomes"]["dave_failed"] == len(datagrams)
    live = make_receiver(dave=DaveDecryptor(lambda: None))  # connection without E2EE
    speaking(live, 5, 904)
    feed_all(live, DiscordPeer(ssrc=904).send_pcm(to_stereo_bytes(speech[:19200])))
    live.flush()
    assert assert_accounted(live)["outcomes"]["decoded"] == 20


def test_session_replaced_mid_stream_is_followed(make_receiver, sink, speech):
    first, second = make_group([ALICE, BOT]), make_group([ALICE, BOT], channel_id=99)
    current = {"s": first[BOT]}
    receiver = make_receiver(dave=DaveDecryptor(lambda: current["s"]))
    speaking(receiver, ALICE, 905)
    a = DiscordPeer(ssrc=905, dave_session=first[ALICE])
    feed_all(receiver, a.send_pcm(to_stereo_bytes(speech[:19200])))
    current["s"] = second[BOT]
    a.vc._connection.dave_session = second[ALICE]
    feed_all(receiver, a.send_pcm(to_stereo_bytes(speech[19200:38400])), t0=1)
    receiver.flush()
    c = assert_accounted(receiver)
    assert c["outcomes"]["decoded"] == 40 and c["outcomes"]["dave_failed"] == 0



def test_downgrade_to_no_e2ee_accepts_plain_audio_from_members_davey_never_knew(make_receiver, sink, speech, group):
    """After a downgrade discord.py resets the session and enables passthrough, but davey still has
    no decryptor for members who joined later (NoDecryptorForUser): their plain frames must play."""
    session = group[BOT]
    session.reset()
    session.set_passthrough_mode(True, 10)
    version = {"v": 0}
    dave = DaveDecryptor(lambda: session, e2ee_required=lambda: version["v"] > 0)
    newcomer = DiscordPeer(ssrc=906)
    receiver = make_receiver(dave=dave)
    speaking(receiver, 999, 906)
    feed_all(receiver, newcomer.send_pcm(to_stereo_bytes(speech[:19200])))
    late_dave = group[ALICE].encrypt_opus(b"\xfc" + bytes(30))  # a frame still E2EE-encrypted
    feed_all(receiver, [newcomer.send_opus(late_dave)], t0=1)
    receiver.flush()
    c = assert_accounted(receiver)
    assert c["outcomes"]["decoded"] == 20 and c["outcomes"]["dave_failed"] == 1
    version["v"] = 1  # E2EE on again: plain frames from an unknown decryptor are refused
    strict = make_receiver(dave=dave)
    speaking(strict, 999, 906)
    feed_all(strict, newcomer.send_pcm(to_stereo_bytes(speech[:9600])))
    strict.flush()
    assert assert_accounted(strict)["outcomes"]["dave_failed"] == 10
