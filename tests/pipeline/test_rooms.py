"""RoomManager with a real SQLite Store, the real Mixer and an SDK-validated backend peer.

Only the Discord voice connection is a seam (no Discord here): a queue of VoiceFrames stands where
`ListeningVoiceClient.frames` is, exactly the type the receiver produces.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import pytest

from bot.config import Endpoint
from bot.pipeline.rooms import RoomManager, VoiceLink
from bot.pipeline.service import PipelineError
from bot.realtime.outputs import TargetText
from bot.store import Store
from bot.voice.worker import VoiceFrame
from tests.realtime.peer import Faults, Peer, numbered_audio
from tests.realtime.test_session import fast_settings

FRAME = 960


class FakeVoice:
    def __init__(self, bots: frozenset[int] = frozenset()) -> None:
        self.queues: dict[int, asyncio.Queue] = {}
        self.disconnected: list[int] = []
        self.bots = bots

    async def __call__(self, guild_id: int, channel_id: int) -> VoiceLink:
        q: asyncio.Queue = asyncio.Queue()
        self.queues[guild_id] = q

        async def disconnect() -> None:
            self.disconnected.append(guild_id)

        return VoiceLink(q, disconnect, lambda uid: uid in self.bots)


class FakePlayback:
    def __init__(self) -> None:
        self.mixers: dict[int, object] = {}

    async def play(self, guild_id: int, channel_id: int, mixer) -> None:
        self.mixers[guild_id] = mixer

    async def stop(self, guild_id: int) -> None:
        self.mixers.pop(guild_id, None)


async def speak(q: asyncio.Queue, user_id: int, pcm: bytes) -> None:
    for i in range(0, len(pcm), FRAME):
        q.put_nowait(VoiceFrame(user_id, pcm[i : i + FRAME]))
        await asyncio.sleep(0.02)
    q.put_nowait(VoiceFrame(user_id, b"", end=True))


@pytest.fixture
async def store(tmp_path: Path):
    s = await Store.open(tmp_path / "parley.sqlite3")
    yield s
    await s.close()


class ListCaptions(list):
    """Records text outputs per room; opened and closed with it."""

    def __init__(self) -> None:
        super().__init__()
        self.open_rooms: dict[int, int] = {}
        self.labels: dict[tuple[int, int], str] = {}

    async def open(self, guild_id: int, channel_id: int) -> None:
        self.open_rooms[guild_id] = channel_id

    def speaker(self, guild_id: int, user_id: int, language: str) -> None:
        self.labels[guild_id, user_id] = language

    def __call__(self, guild_id: int, user_id: int, output) -> None:
        self.append((guild_id, user_id, output))

    async def close(self, guild_id: int) -> None:
        self.open_rooms.pop(guild_id, None)


def manager(peer: Peer, store: Store, **caps) -> tuple[RoomManager, FakeVoice, FakePlayback, list]:
    settings = fast_settings()
    settings.session.idle_timeout_s = 0.5
    for k, v in caps.items():
        setattr(settings.caps, k, v)
    captions = ListCaptions()
    voice, playback = FakeVoice(bots=frozenset({666})), FakePlayback()
    rooms = RoomManager(settings, store, Endpoint(peer.url, "translation", "m", None, 0.034), voice, playback,
                        captions=captions)
    return rooms, voice, playback, captions


async def test_join_translate_play_caption_leave(store: Store) -> None:
    await store.set_language(1, 42, "fr")
    async with Peer() as peer:
        rooms, voice, playback, captions = manager(peer, store)
        status = await rooms.join(1, 100, 200, 300)
        assert captions.open_rooms == {1: 300}
        assert (status.source_channel_id, status.output_channel_id) == (100, 200)
        with pytest.raises(PipelineError, match="already interpreting"):
            await rooms.join(1, 101, 200, 300)
        await speak(voice.queues[1], 42, numbered_audio(6))
        await asyncio.sleep(0.2)
        mixer = playback.mixers[1]
        assert mixer.has_audio()
        frames = [np.frombuffer(mixer.read_frame(), "<i2") for _ in range(10)]
        assert all(f.size == 1920 for f in frames)  # 20 ms of 48 kHz stereo, as discord.py reads it
        assert max(np.abs(f).max() for f in frames) > 0  # the translation reached the output mix
        assert rooms.status(1).speakers[0].target_language == "fr"
        assert rooms.status(1).usd_today > 0  # the open session's cost counts before it is closed
        assert captions.labels == {(1, 42): "fr"}  # captions say which language the member is heard in
        await rooms.set_language(1, 42, "it")
        assert captions.labels == {(1, 42): "it"}
        await rooms.leave(1)
    assert peer.connections[0].languages == ["fr", "it"] and peer.connections[0].closed_by_client
    assert voice.disconnected == [1] and 1 not in playback.mixers and captions.open_rooms == {}
    assert any(isinstance(out, TargetText) and u == 42 for _, u, out in captions)
    assert await store.spend_today(1) > 0
    assert rooms.status(1) is None
    with pytest.raises(PipelineError, match="not interpreting"):
        await rooms.leave(1)


async def test_stored_opt_out_is_honoured_from_the_first_frame(store: Store) -> None:
    await store.set_opt_out(1, 13, True)
    async with Peer() as peer:
        rooms, voice, _, _ = manager(peer, store)
        await rooms.join(1, 100, None, None)
        await speak(voice.queues[1], 13, numbered_audio(5))
        await asyncio.sleep(0.1)
        assert peer.connections == []
        assert rooms.status(1).opted_out == 1
        await rooms.leave(1)


async def test_caps_max_sessions_and_daily_budget(store: Store) -> None:
    async with Peer() as peer:
        rooms, voice, _, _ = manager(peer, store, max_sessions=1)
        await rooms.join(1, 100, None, None)
        q = voice.queues[1]
        await asyncio.gather(speak(q, 1, numbered_audio(5)), speak(q, 2, numbered_audio(5)))
        await rooms.leave(1)
        assert len(peer.connections) == 1  # the second speaker was not admitted

    await store.add_spend(2, 5.0)
    async with Peer() as peer:
        rooms, voice, _, _ = manager(peer, store, daily_budget_usd=5.0)
        await rooms.join(2, 100, None, None)
        await speak(voice.queues[2], 1, numbered_audio(3))
        await rooms.leave(2)
    assert peer.connections == []  # today's budget was already spent


async def test_output_channel_must_differ(store: Store) -> None:
    async with Peer() as peer:
        rooms, _, _, _ = manager(peer, store)
        with pytest.raises(PipelineError, match="must differ"):
            await rooms.join(1, 100, 100, None)


async def test_bots_in_the_channel_are_not_interpreted(store: Store) -> None:
    async with Peer() as peer:
        rooms, voice, _, _ = manager(peer, store)
        await rooms.join(1, 100, None, None)
        await speak(voice.queues[1], 666, numbered_audio(5))  # a music bot
        await asyncio.sleep(0.1)
        assert peer.connections == [] and rooms.status(1).speakers == []
        await rooms.leave(1)


async def test_a_language_the_backend_refuses_is_refused_before_anything_changes(store: Store) -> None:
    async with Peer(faults=Faults(reject_language="fr")) as peer:
        rooms, *_ = manager(peer, store)
        await rooms.join(1, 100, None, None)
        with pytest.raises(PipelineError, match="can't translate into `fr`"):
            await rooms.set_language(1, 42, "fr")
        with pytest.raises(PipelineError, match="can't translate into `fr`"):  # also without a room
            await rooms.set_language(2, 42, "fr")
        asked = len(peer.connections)
        with pytest.raises(PipelineError):
            await rooms.set_language(1, 43, "fr")
        assert len(peer.connections) == asked, "the answer is cached: the backend is asked once per language"
        await rooms.set_language(1, 42, "es")  # accepted
        await rooms.leave(1)


async def test_voice_connection_ending_under_a_room_closes_it(store: Store) -> None:
    async with Peer() as peer:
        rooms, voice, playback, captions = manager(peer, store)
        ended = asyncio.Event()

        async def join(guild_id: int, channel_id: int) -> VoiceLink:
            link = await FakeVoice.__call__(voice, guild_id, channel_id)
            link.ended = ended
            return link

        rooms._join_voice = join
        await rooms.join(1, 100, 200, 300)
        assert rooms.status(1) is not None and 1 in playback.mixers
        ended.set()  # kicked by a moderator
        for _ in range(100):
            if rooms.status(1) is None:
                break
            await asyncio.sleep(0.02)
        assert rooms.status(1) is None, "a room without its voice connection must not look alive"
        assert 1 not in playback.mixers and 1 not in captions.open_rooms
        assert voice.disconnected == [], "the connection was already gone: nothing to disconnect"
        await rooms.join(1, 100, 200, 300)  # and it can be started again
        await rooms.leave(1)
