"""The official `openai` client as the tests' peer of bot.localrt: one session, its events strictly validated."""

from __future__ import annotations

import base64
import json
from collections.abc import Awaitable, Callable
from typing import Any

from openai import AsyncOpenAI
from openai.types.realtime import RealtimeTranslationServerEvent
from pydantic import TypeAdapter

from tests.localrt.conftest import API_KEY
from tests.localrt.speech import ENGINE_FRAME_BYTES

SERVER_EVENT = TypeAdapter(RealtimeTranslationServerEvent)  # the SDK's own models, not its lenient construct


def update_for(target: str) -> dict:
    """A `session.update` into `target`, with the source transcript on."""
    return {"audio": {"output": {"language": target}, "input": {"transcription": {"model": "local"}}}}


async def append_all(conn: Any, audio: bytes, chunk: int = ENGINE_FRAME_BYTES) -> None:
    for i in range(0, len(audio), chunk):
        await conn.session.input_audio_buffer.append(audio=base64.b64encode(audio[i : i + chunk]).decode())


async def sdk_session(
    url: str, audio: bytes, update: dict | None = None, *, chunk: int = ENGINE_FRAME_BYTES,
    query: dict | None = None, then: Callable[[Any, list], Awaitable[None]] | None = None,
) -> list:
    """One session through the official client: `update`, the audio, `then(conn, events)`, the close; every
    event up to `session.closed`."""
    client = AsyncOpenAI(api_key=API_KEY, websocket_base_url=f"{url}/v1")
    events: list = []
    async with client.realtime.translations.connect(model="gpt-realtime-translate", extra_query=query or {}) as conn:
        if update is not None:
            await conn.session.update(session=update)
        await append_all(conn, audio, chunk)
        if then is not None:
            await then(conn, events)
        await conn.session.close()
        while True:
            event = SERVER_EVENT.validate_python(json.loads(await conn.recv_bytes()))
            events.append(event)
            if event.type == "session.closed":
                break
    return events


def text_of(events: list, kind: str) -> str:
    return "".join(e.delta for e in events if e.type == kind)


def errors(events: list) -> list:
    return [e.error for e in events if e.type == "error"]
