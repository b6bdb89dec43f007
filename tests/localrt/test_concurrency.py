"""Many sessions at once: each gets its own language, and a stuck one holds up nobody else."""

from __future__ import annotations

import asyncio
import base64
import json
import threading

import numpy as np
from websockets.asyncio.client import connect

from bot.localrt.engines.asr import ASR_RATE, Transcript
from bot.localrt.engines.bundle import Engines
from bot.localrt.server import LocalRTServer
from tests.localrt.conftest import API_KEY
from tests.localrt.sdk import sdk_session, text_of
from tests.localrt.speech import ENGINE_FRAME_BYTES, SENTENCES, speech, utterance
from tests.localrt.test_errors import AUTH, endpoint, recv

LONG = "We are going to the beach tomorrow and my brother lives in a big house."


async def test_parallel_sessions_each_get_their_own_language(server):
    audio = utterance(SENTENCES[0])
    results = await asyncio.gather(
        *(
            sdk_session(server.url, audio, {"audio": {"output": {"language": lang}}})
            for lang in ("es", "ca", "en", "es")
        )
    )
    texts = [text_of(events, "session.output_transcript.delta") for events in results]
    assert "Dónde" in texts[0] and "Dónde" in texts[3]
    assert "estació" in texts[1]
    assert "train station" in texts[2].lower()  # same language: passthrough of the source text


class GatedRecognizer:
    """Blocks on long segments until the test opens the gate: a deterministic 'slow session'."""

    def __init__(self, inner) -> None:
        self.inner = inner
        self.languages = inner.languages
        self.fixed_language = inner.fixed_language
        self.partial_interval_ms = inner.partial_interval_ms
        self.gate = threading.Event()
        self.blocked = threading.Event()

    def identify(self, audio: np.ndarray, candidates: frozenset[str] | None = None):
        return self.inner.identify(audio, candidates)

    def transcribe(self, audio: np.ndarray, prefix: str | None = None, language: str | None = None) -> Transcript:
        if len(audio) > 4 * ASR_RATE:
            self.blocked.set()
            self.gate.wait(timeout=60)
        return self.inner.transcribe(audio, prefix, language)


async def test_a_stuck_session_does_not_stall_others(engines):
    gated = GatedRecognizer(engines.asr)
    slow_engines = Engines(config=engines.config, asr=gated, mt=engines.mt, tts=engines.tts)
    config = engines.config.model_copy(update={"port": 0})
    async with LocalRTServer(config, slow_engines, api_key=API_KEY) as server:
        assert len(speech(LONG)) > 4 * 48_000  # one long segment: the gated kind
        slow = asyncio.create_task(sdk_session(server.url, utterance(LONG)))
        await asyncio.to_thread(gated.blocked.wait, 30)
        assert gated.blocked.is_set() and not slow.done()
        # while one engine thread is stuck, another session runs start to finish
        fast = await asyncio.wait_for(
            sdk_session(server.url, utterance(SENTENCES[0])), timeout=30
        )
        assert "tren" in text_of(fast, "session.output_transcript.delta")
        assert not slow.done()
        gated.gate.set()
        events = await asyncio.wait_for(slow, timeout=60)
    assert "playa" in text_of(events, "session.output_transcript.delta")


async def test_appends_are_answered_while_engines_work(server):
    """The event loop stays responsive: a session.update is acknowledged mid-speech."""
    audio = utterance(LONG)
    async with connect(endpoint(server), additional_headers=AUTH) as ws:
        await recv(ws)
        for i in range(0, len(audio), ENGINE_FRAME_BYTES):
            event = {"type": "session.input_audio_buffer.append"}
            event["audio"] = base64.b64encode(audio[i : i + ENGINE_FRAME_BYTES]).decode()
            await ws.send(json.dumps(event))
        await ws.send('{"type":"session.update","session":{"audio":{"output":{"language":"ca"}}}}')
        loop = asyncio.get_running_loop()
        start = loop.time()
        while (event := await recv(ws)).type != "session.updated":
            pass
        assert loop.time() - start < 1.0


async def test_a_fast_client_is_slowed_down_not_dropped(engines):
    """With the engine stuck, the server stops reading at its backlog limit; nothing is lost."""
    gated = GatedRecognizer(engines.asr)
    slow_engines = Engines(config=engines.config, asr=gated, mt=engines.mt, tts=engines.tts)
    config = engines.config.model_copy(update={"port": 0, "max_backlog_s": 3.0})  # 15 frames
    async with LocalRTServer(config, slow_engines, api_key=API_KEY) as server:
        audio = utterance(LONG) + utterance(SENTENCES[0]) + utterance(SENTENCES[2])
        task = asyncio.create_task(sdk_session(server.url, audio))
        await asyncio.to_thread(gated.blocked.wait, 30)
        await asyncio.sleep(0.5)  # let the client push as much as the server will read
        (session,) = server.sessions
        assert session._pending_frames <= 15 + 1  # the limit, plus the message that crossed it
        assert session.frames.frames_out < len(audio) // ENGINE_FRAME_BYTES  # the rest waits in the socket
        gated.gate.set()
        events = await asyncio.wait_for(task, timeout=60)
    target = text_of(events, "session.output_transcript.delta")
    assert target.count("playa") == 2 and "tren" in target  # the long sentence, then both short ones
