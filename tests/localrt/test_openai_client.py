"""The official OpenAI SDK, pointed at bot.localrt, gets Spanish speech and text for English speech."""

from __future__ import annotations

import base64
import json

import numpy as np
import pytest
from openai import AsyncOpenAI
from openai.types.realtime import RealtimeTranslationServerEvent
from pydantic import TypeAdapter

from tests.localrt.conftest import API_KEY
from tests.localrt.speech import ENGINE_FRAME_BYTES, SENTENCES, speech, utterance

SERVER_EVENT = TypeAdapter(RealtimeTranslationServerEvent)


async def run_sdk_session(url: str, audio: bytes, chunk: int, update: dict | None) -> list:
    client = AsyncOpenAI(api_key=API_KEY, websocket_base_url=f"{url}/v1")
    events = []
    async with client.realtime.translations.connect(model="gpt-realtime-translate") as conn:
        if update is not None:
            await conn.session.update(session=update)
        for i in range(0, len(audio), chunk):
            await conn.session.input_audio_buffer.append(audio=base64.b64encode(audio[i : i + chunk]).decode())
        await conn.session.close()
        while True:
            raw = await conn.recv_bytes()
            # strict validation against the SDK's own models, not the SDK's lenient construct
            event = SERVER_EVENT.validate_python(json.loads(raw))
            events.append(event)
            if event.type == "session.closed":
                break
    return events


def text_of(events, kind: str) -> str:
    return "".join(e.delta for e in events if e.type == kind)


async def test_english_speech_becomes_spanish_speech_and_text(server):
    audio = utterance(SENTENCES[0], SENTENCES[1])
    update = {"audio": {"output": {"language": "es"}, "input": {"transcription": {"model": "whisper-1"}}}}
    events = await run_sdk_session(server.url, audio, chunk=4096, update=update)

    created, updated = events[0], events[1]
    assert created.type == "session.created"
    assert created.session.id.startswith("sess_") and created.session.type == "translation"
    assert created.session.model == "gpt-realtime-translate"
    assert updated.type == "session.updated"
    assert updated.session.audio.output.language == "es"
    assert updated.session.audio.input.transcription.model == "whisper-1"
    assert not [e for e in events if e.type == "error"]

    source = text_of(events, "session.input_transcript.delta").lower()
    assert "train station" in source and "brother lives in a big house" in source
    target = text_of(events, "session.output_transcript.delta")
    assert "tren" in target and "casa grande" in target, target

    audio_events = [e for e in events if e.type == "session.output_audio.delta"]
    assert audio_events
    assert {(e.sample_rate, e.channels, e.format) for e in audio_events} == {(24000, 1, "pcm16")}
    elapsed = [e.elapsed_ms for e in audio_events]
    assert all(ms % 200 == 0 for ms in elapsed) and elapsed == sorted(elapsed)
    assert max(elapsed) <= len(audio) // ENGINE_FRAME_BYTES * 200 + 200
    pcm = np.frombuffer(b"".join(base64.b64decode(e.delta) for e in audio_events), dtype="<i2")
    # The audio is the Spanish text spoken: about as long as espeak-ng saying that text in Spanish.
    expected = len(speech(target.strip(), voice="es", wpm=165)) // 2
    assert 0.7 * expected < len(pcm) < 1.4 * expected
    assert np.sqrt(np.mean(pcm.astype(np.float64) ** 2)) > 300  # speech, not silence


async def test_without_transcription_no_source_text_is_sent(server):
    events = await run_sdk_session(server.url, utterance(SENTENCES[0]), chunk=ENGINE_FRAME_BYTES, update=None)
    kinds = [e.type for e in events]
    assert kinds[0] == "session.created" and kinds[-1] == "session.closed"
    assert "session.input_transcript.delta" not in kinds
    assert events[0].session.audio.output.language == "es"  # the configured default
    assert "tren" in text_of(events, "session.output_transcript.delta")


@pytest.mark.parametrize("chunk", [1000, 9600 * 3 + 2])
async def test_any_chunk_size_is_reframed(server, chunk):
    """Odd-sized (but whole-sample) chunks give the same transcript as 200 ms chunks."""
    update = {"audio": {"input": {"transcription": {"model": "x"}}}}
    events = await run_sdk_session(server.url, utterance(SENTENCES[1]), chunk=chunk, update=update)
    assert "brother lives in a big house" in text_of(events, "session.input_transcript.delta").lower()
