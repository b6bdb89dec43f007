"""A pool of two real bot.localrt workers behind `backend: local` (`local.urls`): load reporting, least-loaded
picks, and a worker closed mid-sentence, its session moved to the other by the client's reconnect + replay."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

import aiohttp
import pytest
from prometheus_client import CollectorRegistry, generate_latest

from bot.config import resolve_endpoint
from bot.localrt.server import LocalRTServer
from bot.metrics import AppCollector
from bot.pipeline.rooms import RoomManager
from bot.realtime.outputs import SessionError, SourceText, TargetText, TranslatedAudio
from bot.realtime.session import TranslationSession
from tests.localrt.conftest import API_KEY
from tests.localrt.speech import SENTENCES, utterance
from tests.localrt.test_translation_session import collect, local_settings, send


@pytest.fixture
async def workers(engines):
    config = engines.config.model_copy(update={"port": 0, "max_message_bytes": 256 * 1024})
    servers = [LocalRTServer(config, engines, api_key=API_KEY) for _ in range(2)]
    for s in servers:
        await s.start()
    try:
        yield servers
    finally:
        for s in servers:
            await s.close()


def pool_settings(servers):
    settings = local_settings(servers[0])
    settings.local = settings.local.model_copy(update={"urls": [f"ws://127.0.0.1:{s.port}" for s in servers]})
    return settings


async def test_workers_report_their_load_and_sessions_go_to_the_least_loaded(workers) -> None:
    a, b = workers
    async with aiohttp.ClientSession() as http:
        async with http.get(f"http://127.0.0.1:{a.port}/v1/load") as resp:
            assert resp.status == 401, "the same token rule as the websocket"
        async with http.get(f"http://127.0.0.1:{a.port}/v1/load",
                            headers={"Authorization": f"Bearer {API_KEY}"}) as resp:
            assert resp.status == 200
            assert await resp.json() == {"sessions": 0, "backlog_s": 0.0, "workers": a.config.workers}

    settings = pool_settings(workers)
    endpoint = resolve_endpoint(settings)
    assert endpoint.pool is not None
    sessions = [TranslationSession(endpoint, "es", settings, name=f"speaker-{i}") for i in range(4)]
    try:
        for s in sessions:
            await s.open()
        assert (len(a.sessions), len(b.sessions)) == (2, 2), "spread over both workers"
        on_a = [x for x in sessions if f":{a.port}/" in x._url]
        assert len(on_a) == 2
        for x in on_a:  # worker a is left with none, b keeps two
            await x.close()
        for _ in range(100):
            if not a.sessions:
                break
            await asyncio.sleep(0.02)
        await asyncio.sleep(0.6)  # the pool asks the workers again
        extra = TranslationSession(endpoint, "es", settings, name="speaker-9")
        sessions.append(extra)
        await extra.open()
        assert (len(a.sessions), len(b.sessions)) == (1, 2), "the new session went to the least-loaded worker"
        assert {w.name for w in endpoint.pool.workers if w.healthy} == {f"127.0.0.1:{a.port}", f"127.0.0.1:{b.port}"}
    finally:
        for s in sessions:
            await s.close()


async def test_a_worker_closed_mid_sentence_loses_no_speech(workers) -> None:
    settings = pool_settings(workers)
    endpoint = resolve_endpoint(settings)
    outputs: list = []
    session = TranslationSession(endpoint, "es", settings, name="speaker-1")
    await session.open()
    reader = asyncio.create_task(collect(session, outputs))
    try:
        first = next(s for s in workers if s.sessions)
        other = next(s for s in workers if s is not first)
        first_port = first.port
        other_url = next(w.url for w in endpoint.pool.workers if f":{other.port}/" in w.url)
        pcm = utterance(SENTENCES[0], SENTENCES[1])
        cut = (len(pcm) // 4) // 2 * 2  # in the middle of the first sentence
        await send(session, pcm[:cut])
        await asyncio.sleep(0.3)
        before = "".join(o.text for o in outputs if isinstance(o, TargetText))
        await first.close()  # the worker goes away mid-sentence (1001 to its clients)
        await send(session, pcm[cut:])
        await session.close()
        await asyncio.wait_for(reader, 60)
    finally:
        reader.cancel()
        await session.abort()
    assert before == "", "nothing of the first sentence was translated before the worker went away"
    assert session.stats.drops >= 1 and other.audio_bytes_received > 0
    assert not [o for o in outputs if isinstance(o, SessionError)]
    source = "".join(o.text for o in outputs if isinstance(o, SourceText)).lower()
    target = "".join(o.text for o in outputs if isinstance(o, TargetText))
    assert "train station" in source and "big house" in source, source
    assert "Dónde" in target and "casa" in target, target
    assert any(isinstance(o, TranslatedAudio) for o in outputs)
    await asyncio.sleep(0.6)
    assert await endpoint.pool.pick() == other_url, "a worker that went away is not picked"
    healthy = {w.name: w.healthy for w in endpoint.pool.workers}
    assert healthy[f"127.0.0.1:{first_port}"] is False and healthy[f"127.0.0.1:{other.port}"] is True
    # /translate status shows them (through the RoomManager that owns the endpoint)
    rooms = RoomManager(settings, SimpleNamespace(), endpoint, join_voice=None)  # type: ignore[arg-type]
    assert sorted(rooms.workers()) == sorted([(f"127.0.0.1:{first_port}", False, 0),
                                              (f"127.0.0.1:{other.port}", True, 0)])
    # the metrics show the workers
    registry = CollectorRegistry()
    registry.register(AppCollector(SimpleNamespace(listener=None, speaker=None,
                                                   rooms=SimpleNamespace(endpoint=endpoint))))
    text = generate_latest(registry).decode()
    assert f'parley_localrt_worker_up{{worker="127.0.0.1:{first_port}"}} 0.0' in text
    assert f'parley_localrt_worker_up{{worker="127.0.0.1:{other.port}"}} 1.0' in text
    assert f'parley_localrt_worker_picks_total{{worker="127.0.0.1:{other.port}"}}' in text
