"""A client that hangs up while the server is busy: the server lets go of it, and closes in time."""

from __future__ import annotations

import asyncio
import base64
import json

import pytest
from websockets.asyncio.client import connect

from bot.localrt.engines.bundle import Engines
from bot.localrt.server import LocalRTServer
from tests.localrt.conftest import API_KEY
from tests.localrt.speech import ENGINE_FRAME_BYTES, SENTENCES, utterance
from tests.localrt.test_concurrency import LONG, GatedRecognizer


@pytest.mark.timeout(60)
async def test_a_client_that_hangs_up_under_back_pressure_does_not_hang_the_server(engines):
    """The reader is parked at the backlog limit; the client gives up and goes; the worker then finds
    the socket gone and stops. The reader must not park again on that dead worker (it did: the
    server's close then waited forever, and `translate --fast` hung at 0 % CPU)."""
    gated = GatedRecognizer(engines.asr)
    slow = Engines(config=engines.config, asr=gated, mt=engines.mt, tts=engines.tts)
    config = engines.config.model_copy(update={"port": 0, "max_backlog_s": 2.0})  # 10 frames
    async with LocalRTServer(config, slow, api_key=API_KEY) as server:
        audio = utterance(LONG) + b"".join(utterance(s) for s in SENTENCES * 4)
        ws = await connect(f"{server.url}/v1/realtime/translations",
                           additional_headers={"Authorization": f"Bearer {API_KEY}"}, close_timeout=0.5)
        assert json.loads(await ws.recv())["type"] == "session.created"

        async def push() -> None:
            for i in range(0, len(audio), ENGINE_FRAME_BYTES):
                chunk = base64.b64encode(audio[i : i + ENGINE_FRAME_BYTES]).decode()
                await ws.send(json.dumps({"type": "session.input_audio_buffer.append", "audio": chunk}))

        pusher = asyncio.create_task(push())
        await asyncio.to_thread(gated.blocked.wait, 30)
        await asyncio.sleep(0.5)  # the server has stopped reading: the client's sends now block
        pusher.cancel()
        await ws.close()  # gives up (close handshake times out: the server is not reading)
        gated.gate.set()  # the engine finishes; its answer finds the socket gone
        await asyncio.sleep(1.0)
        await asyncio.wait_for(server.close(), timeout=15)
        assert not server.sessions
