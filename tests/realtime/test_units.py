"""Pure pieces of the client: replay buffer, backoff, cost meter, and both wire dialects checked
against the `openai` package's own models in both directions."""

from __future__ import annotations

import base64
import json
import random

import pytest
from openai.types.realtime import (
    RealtimeClientEvent,
    RealtimeTranslationClientEvent,
)
from openai.types.realtime.realtime_translation_output_audio_delta_event import (
    RealtimeTranslationOutputAudioDeltaEvent,
)
from openai.types.realtime.realtime_translation_session_created_event import RealtimeTranslationSessionCreatedEvent
from openai.types.realtime.response_done_event import ResponseDoneEvent
from pydantic import TypeAdapter

from bot.realtime.backoff import Backoff
from bot.realtime.cost import CostMeter
from bot.realtime.outputs import SessionError, TranslatedAudio
from bot.realtime.protocol import RealtimeProtocol, TranslationProtocol, language_name
from bot.realtime.replay_buffer import ReplayBuffer

TR_CLIENT = TypeAdapter(RealtimeTranslationClientEvent)
RT_CLIENT = TypeAdapter(RealtimeClientEvent)


def test_replay_buffer_acks_trims_and_bounds() -> None:
    buf = ReplayBuffer(capacity_bytes=1000)
    buf.append(b"\x01" * 600)
    buf.ack(200)
    assert (buf.start, buf.end) == (200, 600)
    assert buf.since(100) == (200, b"\x01" * 400)
    buf.append(b"\x02" * 800)  # 1200 held > 1000: the oldest 200 fall out, counted
    assert buf.dropped_bytes == 200 and buf.end - buf.start == 1000
    start, data = buf.since(0)
    assert start == 400 and data == b"\x01" * 200 + b"\x02" * 800
    buf.ack(10_000)  # an ack past the end trims everything, never beyond
    assert buf.start == buf.end == 1400


def test_backoff_grows_caps_jitters_and_respects_rate_limits() -> None:
    b = Backoff(0.5, 8.0, 2.0, jitter=0.2, rng=random.Random(1))
    delays = [b.next_delay() for _ in range(8)]
    for n, d in enumerate(delays):
        base = min(8.0, 0.5 * 2**n)
        assert base * 0.8 <= d <= base * 1.2
    assert len(set(delays)) == len(delays)  # jittered
    b.reset()
    b.penalize(5.0)
    assert b.next_delay() >= 5.0
    b.reset()
    assert b.next_delay() < 1.0


def test_cost_meter_prices_audio_time() -> None:
    m = CostMeter(price_per_minute=0.034)
    m.add_audio(48 * 60_000)  # one minute
    m.add_audio(48 * 30_000, replay=True)
    assert m.minutes == pytest.approx(1.5)
    assert m.dollars == pytest.approx(0.051)
    assert m.summary()["replayed_seconds"] == 30.0


@pytest.mark.parametrize("transcription", [None, "gpt-4o-mini-transcribe"])
@pytest.mark.parametrize("noise", [None, "near_field", "far_field"])
def test_translation_client_events_match_the_sdk(transcription: str | None, noise: str | None) -> None:
    p = TranslationProtocol(transcription, noise)
    update = TR_CLIENT.validate_json(p.session_update("pt-BR"))
    assert update.session.audio.output.language == "pt-BR"
    got = update.session.audio.input
    assert (got.transcription.model if got and got.transcription else None) == transcription
    assert (got.noise_reduction.type if got and got.noise_reduction else None) == noise
    append = TR_CLIENT.validate_json(p.append(b"\x00\x01" * 10))
    assert base64.b64decode(append.audio) == b"\x00\x01" * 10
    assert TR_CLIENT.validate_json(p.close()).type == "session.close"


def test_interpreter_client_events_match_the_sdk() -> None:
    p = RealtimeProtocol("gpt-realtime", "Interpret into {language}.", "marin", "gpt-4o-mini-transcribe", 0.5, 500, 300)
    ev = RT_CLIENT.validate_json(p.session_update("ja"))
    assert ev.session.type == "realtime" and ev.session.instructions == "Interpret into Japanese."
    assert ev.session.audio.input.turn_detection.type == "server_vad"
    assert ev.session.audio.input.format.rate == 24000
    assert RT_CLIENT.validate_json(p.append(b"\x00\x00")).type == "input_audio_buffer.append"
    assert p.close() is None


def test_sdk_built_server_events_parse() -> None:
    """The reverse direction: events built by the SDK's models are read correctly."""
    p = TranslationProtocol()
    created = RealtimeTranslationSessionCreatedEvent.model_validate({
        "type": "session.created", "event_id": "e1",
        "session": {"id": "sess_1", "type": "translation", "model": "gpt-realtime-translate",
                    "expires_at": 1_900_000_000, "audio": {"output": {"language": "es"}}},
    })
    r = p.read(json.loads(created.model_dump_json()))
    assert r.created and r.created_expires_at == 1_900_000_000
    delta = RealtimeTranslationOutputAudioDeltaEvent(
        type="session.output_audio.delta", event_id="e2", delta=base64.b64encode(b"ab").decode(),
        elapsed_ms=400, sample_rate=24000, channels=1, format="pcm16",
    )
    r = p.read(json.loads(delta.model_dump_json()))
    assert r.outputs == [TranslatedAudio(b"ab", 400)] and r.ack_ms == 400
    done = ResponseDoneEvent.model_validate({"type": "response.done", "event_id": "e3", "response": {
        "id": "r1", "status": "completed", "usage": {"input_tokens": 7, "output_tokens": 9}}})
    assert RealtimeProtocol("m", "{language}", "v", None, 0.5, 500, 300).read(
        json.loads(done.model_dump_json())).usage == (7, 9)


def test_error_classification() -> None:
    p = TranslationProtocol()
    fatal = p.read({"type": "error", "event_id": "e", "error": {"type": "invalid_request_error",
                                                                  "code": "invalid_api_key", "message": "bad key"}})
    assert fatal.fatal and fatal.outputs == [SessionError("invalid_api_key", "bad key", fatal=True)]
    limited = p.read({"type": "error", "event_id": "e", "error": {"type": "rate_limit_error",
                                                                    "code": "rate_limit_exceeded", "message": "slow"}})
    assert limited.rate_limited and not limited.fatal
    assert p.read({"type": "session.something_new"}).unknown
    assert p.read({"type": "session.output_audio.delta", "delta": "!!notbase64", "event_id": "x"}).malformed


def test_language_names_for_the_prompt() -> None:
    assert language_name("es") == "Spanish"
    assert language_name("pt-BR") == "Portuguese (Brazil)"
