"""The official OpenAI SDK, pointed at bot.localrt, gets Spanish speech and text for English speech."""

from __future__ import annotations

import base64

import numpy as np
import pytest

from tests.localrt.sdk import sdk_session, text_of
from tests.localrt.speech import ENGINE_FRAME_BYTES, SENTENCES, speech, utterance


async def test_english_speech_becomes_spanish_speech_and_text(server):
    audio = utterance(SENTENCES[0], SENTENCES[1])
    update = {"audio": {"output": {"language": "es"}, "input": {"transcription": {"model": "whisper-1"}}}}
    events = await sdk_session(server.url, audio, update, chunk=4096)

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
    events = await sdk_session(server.url, utterance(SENTENCES[0]), None, chunk=ENGINE_FRAME_BYTES)
    kinds = [e.type for e in events]
    assert kinds[0] == "session.created" and kinds[-1] == "session.closed"
    assert "session.input_transcript.delta" not in kinds
    assert events[0].session.audio.output.language == "es"  # the configured default
    assert "tren" in text_of(events, "session.output_transcript.delta")


@pytest.mark.parametrize("chunk", [1000, 9600 * 3 + 2])
async def test_any_chunk_size_is_reframed(server, chunk):
    """Odd-sized (but whole-sample) chunks give the same transcript as 200 ms chunks."""
    update = {"audio": {"input": {"transcription": {"model": "x"}}}}
    events = await sdk_session(server.url, utterance(SENTENCES[1]), update, chunk=chunk)
    assert "brother lives in a big house" in text_of(events, "session.input_transcript.delta").lower()
