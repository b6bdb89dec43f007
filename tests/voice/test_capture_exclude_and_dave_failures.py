"""Issue 9, bot/voice part: DAVE failures counted and logged once (defect 9), captures never hold an
opted-out member's audio (defect 10), receive counters include frames the asyncio sink dropped."""

from __future__ import annotations

import asyncio
import base64
import gc
import json
import logging
import time
from types import SimpleNamespace

import discord
import pytest

from bot.audio.sink import CollectingSink
from bot.voice import replay
from bot.voice.capture import CaptureWriter
from bot.voice.client import ListeningVoiceClient
from bot.voice.config import VoiceConfig
from bot.voice.dave import DaveDecryptor
from bot.voice.receiver import VoiceReceiver
from bot.voice.rtp import parse_rtp
from bot.voice.worker import ReceiveWorker, VoiceFrame
from tests.voice.conftest import assert_accounted, feed_all, speaking
from tests.voice.dave_group import make_group
from tests.voice.peers import SECRET_KEY, XCHACHA, DiscordPeer, to_stereo_bytes

ALICE, BOT = 111_111_111_111, 222_222_222_222
DAVE_LOG = "bot.voice.dave"


def sealed_frames(group, n: int) -> list[bytes]:
    return [group[ALICE].encrypt_opus(b"\xfc" + bytes([i]) * 40) for i in range(n)]


def warnings(caplog) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == DAVE_LOG and r.levelno == logging.WARNING]


# --- defect 9: DAVE failures are counted by reason and logged once ---------------------------------


class ChangedApi:
    """A davey whose decrypt signature changed: every call raises TypeError."""

    def decrypt(self, *args):
        raise TypeError("decrypt() takes 3 positional arguments but 4 were given")


def test_an_unexpected_davey_exception_is_logged_once_with_its_type(caplog):
    group = make_group([ALICE, BOT])
    dave = DaveDecryptor(lambda: ChangedApi(), e2ee_required=lambda: True)
    caplog.set_level(logging.DEBUG)
    frames = sealed_frames(group, 200)
    assert [dave.decrypt(ALICE, f) for f in frames] == [None] * 200  # 100 % dropped...
    assert dave.failures == {"unexpected TypeError": 200}  # ...counted...
    logged = warnings(caplog)
    assert len(logged) == 1  # ...and said once, not per frame
    assert "TypeError" in logged[0].getMessage() and logged[0].exc_info is not None


def test_expected_failures_are_counted_by_reason_and_each_reason_logged_once(caplog):
    group = make_group([ALICE, BOT])
    caplog.set_level(logging.DEBUG)
    busy = SimpleNamespace(decrypt=lambda *a: (_ for _ in ()).throw(RuntimeError("Already borrowed")))
    sessions = iter([*[group[BOT]] * 30, *[busy] * 20, *[group[BOT]] * 10])
    dave = DaveDecryptor(lambda: next(sessions), e2ee_required=lambda: True)
    frames = sealed_frames(group, 30)
    assert all(dave.decrypt(333, f) is None for f in frames)  # a member davey has no decryptor for
    assert all(dave.decrypt(ALICE, f) is None for f in frames[:20])  # discord.py mid-commit
    assert all(dave.decrypt(ALICE, f) is not None for f in frames[:10])  # and it recovers
    assert dave.failures == {"davey: NoDecryptorForUser": 30, "busy": 20}
    logged = sorted(r.getMessage() for r in warnings(caplog))
    assert len(logged) == 2
    assert "busy" in logged[0] and "NoDecryptorForUser" in logged[1]


def test_a_broken_session_lookup_is_counted_not_raised_per_frame(caplog):
    """discord.py renaming ``dave_session`` must not become a speaker reset (and a traceback) per frame."""
    caplog.set_level(logging.DEBUG)

    def lookup():
        raise AttributeError("'VoiceConnectionState' object has no attribute 'dave_session'")

    dave = DaveDecryptor(lookup, e2ee_required=lambda: True)
    assert [dave.decrypt(ALICE, b"\xfc" + bytes(40)) for _ in range(50)] == [None] * 50
    # the exception is counted, and so is the drop it caused (plain audio refused in an E2EE call)
    assert dave.failures == {"unexpected AttributeError in the session lookup": 50, "e2ee_required": 50}
    assert len(warnings(caplog)) == 2


def test_dave_failures_reach_the_receive_counters(make_receiver, speech):
    group = make_group([ALICE, BOT])
    peer = DiscordPeer(ssrc=900, dave_session=group[ALICE])
    datagrams = peer.send_pcm(to_stereo_bytes(speech[:48000]))
    receiver = make_receiver(dave=DaveDecryptor(lambda: ChangedApi(), e2ee_required=lambda: True))
    speaking(receiver, ALICE, 900)
    feed_all(receiver, datagrams)
    receiver.flush()
    c = assert_accounted(receiver)
    assert c["outcomes"]["dave_failed"] == len(datagrams) == c["dave_failures"]["unexpected TypeError"]
    assert c["outcomes"]["internal_error"] == 0


# --- defect 10: captures never hold an excluded (opted-out) member's audio -------------------------


class FakeClock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def captured_ssrcs(path) -> list[int]:
    out = []
    for line in path.read_text().splitlines()[1:]:
        record = json.loads(line)
        if "data" in record:
            header = parse_rtp(base64.b64decode(record["data"]))
            out.append(getattr(header, "ssrc", -1))
    return out


def test_capture_leaves_out_excluded_members_and_unmapped_ssrcs(tmp_path, speech):
    """Alice (1) is captured; Bob (2) opted out; Carol (3) speaks before op 5 maps her (held, then
    written); Dan (4) opts out while his packets are held (dropped); SSRC 55 is never mapped (dropped)."""
    path = tmp_path / "cap.jsonl"
    opted_out = {2}
    clock = FakeClock()
    worker = ReceiveWorker(
        VoiceReceiver(CollectingSink()),
        capture=CaptureWriter(path),
        clock=clock,
        exclude=lambda user_id: user_id in opted_out,
    )
    worker.start()
    worker.feed_gateway(4, {"mode": XCHACHA, "secret_key": list(SECRET_KEY)})
    worker.feed_gateway(5, {"user_id": "1", "ssrc": 11, "speaking": 1})
    worker.feed_gateway(5, {"user_id": "2", "ssrc": 22, "speaking": 1})
    clip = to_stereo_bytes(speech[:48000])  # 1 s: 50 packets each
    peers = {ssrc: DiscordPeer(ssrc=ssrc) for ssrc in (11, 22, 33, 44, 55)}
    streams = {ssrc: peer.send_pcm(clip) for ssrc, peer in peers.items()}
    for i in range(50):
        if i == 10:
            opted_out.add(4)
            worker.feed_gateway(5, {"user_id": "3", "ssrc": 33, "speaking": 1})
            worker.feed_gateway(12, {"user_id": "4", "audio_ssrc": 44})
        for ssrc in streams:
            worker.feed_datagram(streams[ssrc][i])
        clock.t += 0.02
    worker.feed_datagram(b"\x81\xc9" + bytes(30))  # RTCP: no media, kept
    clock.t += 5  # past the hold: SSRC 55's packets expire
    time.sleep(0.1)
    worker.stop()
    ssrcs = captured_ssrcs(path)
    assert 22 not in ssrcs and 44 not in ssrcs and 55 not in ssrcs
    assert ssrcs.count(11) == 50 and ssrcs.count(33) == 50 and ssrcs.count(-1) == 1
    capture = worker.counters()["capture"]
    assert capture == {"written": 101, "excluded": 100, "unmapped_dropped": 50, "not_audio_dropped": 0, "held": 0}
    # the replay hears Alice and Carol (whose first 10 packets were held, not lost), nobody else
    counters, written = replay.replay(path, tmp_path / "out")
    assert sorted(written) == [1, 3]
    assert counters["outcomes"]["unmapped_dropped"] == 0 and counters["outcomes"]["rtcp"] == 1


def test_excluding_someone_mid_call_stops_their_capture_from_the_next_datagram(tmp_path, speech):
    path = tmp_path / "cap.jsonl"
    opted_out: set[int] = set()
    worker = ReceiveWorker(VoiceReceiver(CollectingSink()), capture=CaptureWriter(path), clock=FakeClock())
    worker.exclude = lambda user_id: user_id in opted_out
    worker.start()
    worker.feed_gateway(4, {"mode": XCHACHA, "secret_key": list(SECRET_KEY)})
    worker.feed_gateway(5, {"user_id": "1", "ssrc": 11, "speaking": 1})
    datagrams = DiscordPeer(ssrc=11).send_pcm(to_stereo_bytes(speech[:48000]))
    for d in datagrams[:20]:
        worker.feed_datagram(d)
    time.sleep(0.1)
    opted_out.add(1)
    for d in datagrams[20:]:
        worker.feed_datagram(d)
    worker.stop()
    assert captured_ssrcs(path) == [11] * 20


def test_a_failing_exclude_predicate_leaves_audio_out(tmp_path, speech, caplog):
    path = tmp_path / "cap.jsonl"

    def broken(user_id: int) -> bool:
        raise KeyError(user_id)

    worker = ReceiveWorker(VoiceReceiver(CollectingSink()), capture=CaptureWriter(path), clock=FakeClock(),
                           exclude=broken)
    worker.start()
    worker.feed_gateway(4, {"mode": XCHACHA, "secret_key": list(SECRET_KEY)})
    worker.feed_gateway(5, {"user_id": "1", "ssrc": 11, "speaking": 1})
    for d in DiscordPeer(ssrc=11).send_pcm(to_stereo_bytes(speech[:48000])):
        worker.feed_datagram(d)
    worker.stop()
    assert captured_ssrcs(path) == []
    assert sum("exclude predicate failed" in r.getMessage() for r in caplog.records) == 1


# --- the listening client: exclude wired before the first datagram; counters for metrics -----------


@pytest.fixture
async def make_client(tmp_path, monkeypatch):
    made = []
    loop = asyncio.get_running_loop()

    async def fake_connect(self, **kwargs):
        self._connection._socket_reader.resume()

    monkeypatch.setattr(discord.VoiceClient, "connect", fake_connect)

    def make(cls):
        client = SimpleNamespace(_connection=SimpleNamespace(loop=loop, _remove_voice_client=lambda key: None))
        guild = SimpleNamespace(id=5555)
        channel = SimpleNamespace(id=7777, guild=guild, members=[], _get_voice_client_key=lambda: (5555, "guild_id"))
        vc = cls(client, channel)
        made.append(vc)
        return vc

    yield make
    for vc in made:
        vc.cleanup()
        vc.receive.stop()
        vc._connection._socket_reader.stop()
    made.clear()
    gc.collect()


async def test_listening_client_takes_the_exclude_predicate(make_client, tmp_path):
    opted_out = {ALICE}.__contains__
    cls = ListeningVoiceClient.configured(VoiceConfig(capture=True, capture_dir=tmp_path), exclude=opted_out)
    assert ListeningVoiceClient.capture_exclude is None  # the base class is untouched
    vc = make_client(cls)
    assert vc.receive.exclude is opted_out and vc.exclude is opted_out
    other = {BOT}.__contains__
    vc.exclude = other
    assert vc.receive.exclude is other


async def test_receive_counters_include_frames_the_asyncio_sink_dropped(make_client):
    vc = make_client(ListeningVoiceClient.configured(VoiceConfig(frame_queue_size=2)))
    for _ in range(5):
        vc._sink.on_frame(ALICE, bytes(960))
    vc._sink.flush()
    await asyncio.sleep(0.05)
    assert vc.frames.qsize() == 2 and isinstance(vc.frames.get_nowait(), VoiceFrame)
    counters = vc.receive_counters
    assert counters["frames_dropped"] == 3 == vc.frames_dropped
    assert counters["overflow"] == 0 and "dave_failures" in counters
    json.dumps(counters)  # JSON-ready


