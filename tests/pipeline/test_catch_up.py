"""Translated speech is never silently dropped (issue 13), through the room in real time: a member talks for a
continuous minute, the backend's translation runs 30 % longer (the SDK-validating peer draws every 200 ms of
speech out to 260 ms), and the output channel's player reads the mix 50 times a second on its own thread, as
discord.py's does. The mixer catches up by playing faster at the same pitch; nothing is dropped."""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from bot.config import Endpoint
from bot.pipeline.rooms import RoomManager, VoiceLink
from bot.store import Store
from bot.voice.worker import VoiceFrame
from tests.pipeline.test_rooms import FakePlayback
from tests.realtime.peer import Faults, Peer
from tests.realtime.test_session import fast_settings

pytestmark = pytest.mark.timeout(150)
G, MEMBER, SECONDS = 1, 42, 60
RATE = 24_000


async def test_a_continuous_minute_whose_translation_runs_30_percent_longer_loses_nothing(tmp_path: Path) -> None:
    async with Peer(faults=Faults(stretch=1.3)) as peer, await Store.open(tmp_path / "p.sqlite3") as store:
        frames: asyncio.Queue = asyncio.Queue()

        async def join_voice(guild_id: int, channel_id: int, exclude=None, **_: object) -> VoiceLink:
            async def disconnect() -> None:
                pass

            return VoiceLink(frames, disconnect)

        settings = fast_settings()
        settings.session.idle_timeout_s = 1.0  # the session closes (last words flushed) a second after the minute
        playback = FakePlayback()
        rooms = RoomManager(settings, store, Endpoint(peer.url, "translation", "m", None, 0.0), join_voice,
                            playback)
        await rooms.join(G, 100, 200, None)
        mixer = playback.mixers[G]
        pushed = [0]  # translated samples handed to the mixer
        push = mixer.push

        def counting_push(key: int, pcm: bytes, received_at: float | None = None) -> None:
            pushed[0] += len(pcm) // 2
            push(key, pcm, received_at)

        mixer.push = counting_push  # type: ignore[method-assign]

        stop = threading.Event()

        def player() -> None:  # discord.py's player: one 20 ms frame every 20 ms, on its own thread
            due = time.monotonic()
            while not stop.is_set():
                mixer.read_frame()
                due += 0.02
                time.sleep(max(0.0, due - time.monotonic()))

        reader = threading.Thread(target=player, name="player")
        reader.start()
        try:
            t = np.arange(SECONDS * RATE) / RATE
            speech = (0.3 * 32767 * np.sin(2 * np.pi * 180 * t)).astype("<i2").tobytes()
            loop = asyncio.get_running_loop()
            t0 = loop.time()
            for i in range(SECONDS * 50):  # the member's 20 ms frames, in real time
                frames.put_nowait(VoiceFrame(MEMBER, speech[i * 960 : (i + 1) * 960], False, time.monotonic()))
                await asyncio.sleep(max(0.0, t0 + (i + 1) * 0.02 - loop.time()))
            frames.put_nowait(VoiceFrame(MEMBER, b"", True))
            deadline = loop.time() + 15
            while (rooms.open_sessions or mixer.has_audio()) and loop.time() < deadline:
                await asyncio.sleep(0.1)  # the session closes, then the player plays what is left
            status = rooms.status(G)
        finally:
            stop.set()
            reader.join()
            await rooms.leave(G)
            await rooms.close()

    stats = mixer.stats()
    heard = sum(len(c.audio) for c in peer.connections) // 2  # what reached the backend (24 kHz samples)
    assert heard >= (SECONDS - 0.5) * RATE, "the whole minute went upstream"
    assert pushed[0] >= 1.3 * SECONDS * RATE * 0.99, "its translation ran 30 % longer"
    assert stats.samples_dropped == 0, "no translated audio was dropped"
    assert stats.samples_mixed == pushed[0], "every translated sample was played"
    assert 1.2 < stats.max_tempo_used <= settings.playback.max_tempo
    assert status is not None and status.audio_dropped_s == 0 and status.fastest_tempo > 1.2
