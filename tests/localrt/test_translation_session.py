"""Parley's own TranslationSession against bot.localrt, configured the way `backend: local` is."""

from __future__ import annotations

import asyncio

import pytest

from bot.config import load_settings, resolve_endpoint
from bot.realtime.outputs import SessionError, SourceText, TargetText, TranslatedAudio
from bot.realtime.session import SessionFatal, TranslationSession
from tests.localrt.conftest import API_KEY
from tests.localrt.speech import SENTENCES, utterance


def local_settings(server, key: str = API_KEY):
    settings = load_settings(None, env={"PARLEY_BACKEND": "local", "LOCALRT_API_KEY": key})
    settings.local = settings.local.model_copy(update={"port": server.port})
    settings.reconnect.initial_delay_s = 0.02
    settings.session.close_timeout_s = 20
    settings.session.connect_timeout_s = 3  # the client waits this long for session.updated after an error
    return settings


async def collect(session: TranslationSession, sink: list) -> None:
    async for out in session.outputs():
        sink.append(out)


async def send(session: TranslationSession, pcm: bytes, piece: int = 1920) -> None:
    for i in range(0, len(pcm), piece):
        await session.send_audio(pcm[i : i + piece])


async def test_translation_session_end_to_end(server):
    settings = local_settings(server)
    endpoint = resolve_endpoint(settings)
    assert endpoint.url.startswith(f"ws://127.0.0.1:{server.port}/v1/realtime/translations?model=")
    outputs: list = []
    session = TranslationSession(endpoint, "es", settings, name="speaker-1")
    await session.open()
    reader = asyncio.create_task(collect(session, outputs))
    await send(session, utterance(SENTENCES[0]))
    # wait for the first sentence's translation, then switch language live
    for _ in range(200):
        if any(isinstance(o, TargetText) for o in outputs):
            break
        await asyncio.sleep(0.05)
    await session.set_language("ca")
    await send(session, utterance(SENTENCES[2]))
    await session.close()
    await asyncio.wait_for(reader, 10)

    assert not [o for o in outputs if isinstance(o, SessionError)]
    source = "".join(o.text for o in outputs if isinstance(o, SourceText))
    assert "train station" in source.lower() and "beach tomorrow" in source.lower()
    target = "".join(o.text for o in outputs if isinstance(o, TargetText))
    assert "Dónde" in target and "platja" in target  # Spanish first, then Catalan
    assert target.index("Dónde") < target.index("platja")
    audio = [o for o in outputs if isinstance(o, TranslatedAudio)]
    assert audio and sum(len(a.pcm16) for a in audio) > 24_000  # over half a second of speech
    assert [a.elapsed_ms for a in audio] == sorted(a.elapsed_ms for a in audio)
    assert session.acked_ms > 0  # the server's elapsed_ms acknowledged input


async def test_translation_session_fatal_on_unsupported_language(server):
    settings = local_settings(server)
    session = TranslationSession(resolve_endpoint(settings), "ja", settings)
    with pytest.raises(SessionFatal):
        await session.open()


async def test_translation_session_fatal_on_wrong_key(server):
    settings = local_settings(server, key="sk-wrong")
    session = TranslationSession(resolve_endpoint(settings), "es", settings)
    with pytest.raises(SessionFatal, match="401"):
        await session.open()
