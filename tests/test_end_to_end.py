"""The whole chain, offline, with every real part we have: a member's client (discord.py's sender code,
real Opus, XChaCha20) → Parley's receiver → RoomManager/Room/Speaker → TranslationSession →
bot.localrt (whisper, apertium, espeak-ng) → Mixer → what discord.py's player would read; plus captions.
Only Discord's servers are missing: the datagrams go straight from the sender to the receiver.
"""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path

import numpy as np
import pytest

from bot import latency
from bot.config import load_settings, resolve_endpoint
from bot.localrt.config import LocalRTConfig
from bot.localrt.engines.bundle import Engines
from bot.localrt.server import LocalRTServer
from bot.pipeline.rooms import RoomManager, VoiceLink
from bot.realtime.outputs import SourceText, TargetText
from bot.store import Store
from bot.voice.receiver import VoiceReceiver
from bot.voice.worker import AsyncioFrameSink
from tests.pipeline.test_rooms import FakePlayback, ListCaptions
from tests.voice.peers import SECRET_KEY, XCHACHA, DiscordPeer, espeak_speech, to_stereo_bytes

pytestmark = pytest.mark.skipif(
    shutil.which("espeak-ng") is None or shutil.which("apertium") is None,
    reason="needs espeak-ng and apertium (make test installs them)",
)
SILENCE_FRAME = b"\xf8\xff\xfe"


async def test_member_speech_comes_out_translated_in_the_output_mix(tmp_path: Path) -> None:
    local = LocalRTConfig(port=0)
    engines = await asyncio.to_thread(Engines.load, local)
    async with LocalRTServer(local, engines) as server:
        settings = load_settings(None, env={"PARLEY_BACKEND": "local"})
        settings.local.port = server.port
        settings.session.idle_timeout_s = 1.5
        store = await Store.open(tmp_path / "p.sqlite3")
        await store.set_language(1, 42, "es")
        frames: asyncio.Queue = asyncio.Queue()

        async def join_voice(guild_id: int, channel_id: int, exclude=None) -> VoiceLink:
            async def disconnect() -> None:
                pass

            return VoiceLink(frames, disconnect)

        playback, captions = FakePlayback(), ListCaptions()
        rooms = RoomManager(settings, store, resolve_endpoint(settings), join_voice, playback, captions)
        await rooms.join(1, 100, 200, 300)
        mixer = playback.mixers[1]

        # the member's client, as Discord would relay it
        loop = asyncio.get_running_loop()
        sink = AsyncioFrameSink(loop, frames)
        receiver = VoiceReceiver(sink, mode=XCHACHA, secret_key=SECRET_KEY)
        receiver.on_gateway(5, {"user_id": "42", "ssrc": 4242, "speaking": 1}, loop.time())
        peer = DiscordPeer(4242)
        speech = espeak_speech("Good morning everyone. The meeting starts at ten o'clock.")
        datagrams = peer.send_pcm(to_stereo_bytes(speech)) + [peer.send_opus(SILENCE_FRAME) for _ in range(5)]
        played: list[np.ndarray] = []
        before = [latency.count(h) for h in latency.ALL]
        t0 = loop.time()
        for i, d in enumerate(datagrams):
            receiver.feed(d, loop.time())
            sink.flush()
            await asyncio.sleep(max(0.0, t0 + (i + 1) * 0.02 - loop.time()))
            played.append(np.frombuffer(mixer.read_frame(), "<i2"))  # discord.py's player, 50 times a second
        for _ in range(250):  # 5 s more of the output channel
            await asyncio.sleep(0.02)
            played.append(np.frombuffer(mixer.read_frame(), "<i2"))
        await rooms.leave(1)
        await store.close()

    # every delay a member feels was measured along the way (bot.latency, exported at /metrics)
    after = [latency.count(h) for h in latency.ALL]
    upstream, downstream, end_to_audio = (a - b for a, b in zip(after, before, strict=True))
    assert upstream >= 10  # one per 200 ms chunk of speech sent (the trailing silence has no arrival)
    assert downstream >= 1 and end_to_audio >= 1
    outcomes = receiver.counters()["outcomes"]
    assert outcomes["decoded"] == len(datagrams) - 5 and outcomes["silence"] == 5
    source = "".join(o.text for _, _, o in captions if isinstance(o, SourceText)).lower()
    target = "".join(o.text for _, _, o in captions if isinstance(o, TargetText)).lower()
    assert "morning" in source, source
    assert "buenos" in target or "reunión" in target, target
    out = np.concatenate(played)
    voiced = sum(1 for f in played if np.abs(f).max() > 1000)
    assert out.size == len(played) * 1920 and voiced >= 25  # at least half a second of Spanish speech played
