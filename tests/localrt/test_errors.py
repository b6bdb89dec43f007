"""Bad input gets an OpenAI-shaped error event, the session stays open, and nothing is lost."""

from __future__ import annotations

import base64
import json

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from tests.localrt.conftest import API_KEY
from tests.localrt.sdk import SERVER_EVENT
from tests.localrt.speech import ENGINE_FRAME_BYTES, SENTENCES, utterance

AUTH = {"Authorization": f"Bearer {API_KEY}"}


def endpoint(server, model: str = "gpt-realtime-translate") -> str:
    return f"{server.url}/v1/realtime/translations?model={model}"


async def recv(ws):
    event = SERVER_EVENT.validate_python(json.loads(await ws.recv()))
    return event


async def expect_error(ws, code: str, param: str | None = None, event_id: str | None = None):
    event = await recv(ws)
    assert event.type == "error", event
    assert event.error.code == code, event.error
    assert event.error.type == "invalid_request_error"
    assert event.error.message
    assert event.event_id.startswith("event_")
    if param is not None:
        assert event.error.param == param
    if event_id is not None:
        assert event.error.event_id == event_id
    return event


async def speak_and_close(ws, audio: bytes) -> list:
    for i in range(0, len(audio), ENGINE_FRAME_BYTES):
        chunk = base64.b64encode(audio[i : i + ENGINE_FRAME_BYTES]).decode()
        await ws.send(json.dumps({"type": "session.input_audio_buffer.append", "audio": chunk}))
    await ws.send(json.dumps({"type": "session.close"}))
    events = []
    while True:
        event = await recv(ws)
        events.append(event)
        if event.type == "session.closed":
            return events


def append(audio_b64: str, event_id: str | None = None) -> str:
    event = {"type": "session.input_audio_buffer.append", "audio": audio_b64}
    if event_id:
        event["event_id"] = event_id
    return json.dumps(event)


async def test_every_bad_input_is_an_error_and_the_session_keeps_translating(server):
    async with connect(endpoint(server), additional_headers=AUTH) as ws:
        assert (await recv(ws)).type == "session.created"
        await ws.send("{not json")
        await expect_error(ws, "invalid_json")
        await ws.send("[1, 2]")
        await expect_error(ws, "invalid_json")
        await ws.send(json.dumps({"type": "response.create", "event_id": "evt_1"}))
        await expect_error(ws, "unknown_event_type", "type", "evt_1")
        await ws.send(json.dumps({"audio": "AAAA"}))
        await expect_error(ws, "missing_type", "type")
        await ws.send(append("not base64 at all!", "evt_2"))
        await expect_error(ws, "invalid_audio", "audio", "evt_2")
        await ws.send(append(base64.b64encode(b"\x01\x02\x03").decode(), "evt_3"))
        await expect_error(ws, "invalid_audio_length", "audio", "evt_3")
        await ws.send(json.dumps({"type": "session.input_audio_buffer.append"}))
        await expect_error(ws, "invalid_value", "audio")
        await ws.send(b"\x00\x01binary")
        await expect_error(ws, "invalid_message")
        huge = base64.b64encode(bytes(300 * 1024)).decode()  # over the 256 KiB limit of the fixture
        await ws.send(append(huge))
        await expect_error(ws, "message_too_large")
        update = {"type": "session.update", "event_id": "evt_4"}
        update["session"] = {"audio": {"output": {"language": "xx"}}}
        await ws.send(json.dumps(update))
        error = await expect_error(ws, "unsupported_language", "session.audio.output.language", "evt_4")
        assert "es" in error.error.message  # names what is supported

        events = await speak_and_close(ws, utterance(SENTENCES[0]))
    assert not [e for e in events if e.type == "error"]
    # the rejected odd-length chunk did not shift the sample alignment: speech is still understood
    assert "tren" in "".join(e.delta for e in events if e.type == "session.output_transcript.delta")


async def test_unsupported_language_keeps_the_previous_one(server):
    async with connect(endpoint(server), additional_headers=AUTH) as ws:
        await recv(ws)
        for lang in ("ca", "ja"):
            msg = {"type": "session.update", "session": {"audio": {"output": {"language": lang}}}}
            await ws.send(json.dumps(msg))
        assert (await recv(ws)).session.audio.output.language == "ca"
        await expect_error(ws, "unsupported_language")
        events = await speak_and_close(ws, utterance(SENTENCES[0]))
    target = "".join(e.delta for e in events if e.type == "session.output_transcript.delta")
    assert "estació" in target, target  # Catalan, not Spanish and not dropped


async def test_output_language_changes_live(server):
    async with connect(endpoint(server), additional_headers=AUTH) as ws:
        await recv(ws)
        first = await speak_segment(ws, utterance(SENTENCES[0]))
        msg = {"type": "session.update", "session": {"audio": {"output": {"language": "ca"}}}}
        await ws.send(json.dumps(msg))
        events = await speak_and_close(ws, utterance(SENTENCES[0]))
    assert "Dónde" in first
    updated = [e for e in events if e.type == "session.updated"]
    assert updated and updated[0].session.audio.output.language == "ca"
    second = "".join(e.delta for e in events if e.type == "session.output_transcript.delta")
    assert "estació" in second and "Dónde" not in second
    assert second.startswith(" ")  # append-only deltas: the second segment continues the first


async def speak_segment(ws, audio: bytes) -> str:
    """Send one sentence and wait for its translated text (the session stays open)."""
    for i in range(0, len(audio), ENGINE_FRAME_BYTES):
        await ws.send(append(base64.b64encode(audio[i : i + ENGINE_FRAME_BYTES]).decode()))
    while True:
        event = await recv(ws)
        if event.type == "session.output_transcript.delta":
            return event.delta


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer wrong"}, {"Authorization": API_KEY}])
async def test_wrong_or_missing_key_is_401(server, headers):
    with pytest.raises(InvalidStatus) as info:
        async with connect(endpoint(server), additional_headers=headers):
            pass
    assert info.value.response.status_code == 401


async def test_wrong_path_is_404(server):
    with pytest.raises(InvalidStatus) as info:
        async with connect(f"{server.url}/v1/realtime?model=x", additional_headers=AUTH):
            pass
    assert info.value.response.status_code == 404


async def test_session_object_echoes_the_model_from_the_url(server):
    async with connect(endpoint(server, "my-local-model"), additional_headers=AUTH) as ws:
        created = await recv(ws)
    assert created.session.model == "my-local-model"
    assert created.session.expires_at > 0


async def test_an_expired_session_says_so_and_closes_1001(server, monkeypatch):
    import time as real_time

    from websockets.exceptions import ConnectionClosed

    import bot.localrt.server as server_module

    class Clock:
        @staticmethod
        def time() -> float:
            return real_time.time() + 7200  # past every session's expires_at

    monkeypatch.setattr(server_module, "time", Clock)
    async with connect(endpoint(server), additional_headers=AUTH) as ws:
        assert (await recv(ws)).type == "session.created"
        event = await recv(ws)
        assert event.type == "error" and event.error.code == "session_expired"
        with pytest.raises(ConnectionClosed):
            await ws.recv()
        assert ws.close_code == 1001
