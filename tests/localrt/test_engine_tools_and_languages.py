"""Issue 9, bot.localrt part: `GET /v1/languages`, engine timeouts survive, constant-time token check."""

from __future__ import annotations

import base64
import json
import stat
import time

import aiohttp
import pytest
from websockets.asyncio.client import connect

import bot.localrt.engines.tool as tool
import bot.localrt.server as server_module
from bot.localrt.config import LocalRTConfig, TTSConfig
from bot.localrt.engines.asr import EngineError
from bot.localrt.engines.mt import ApertiumTranslator
from bot.localrt.engines.tool import EngineTimeout, run_tool
from bot.localrt.engines.tts import EspeakSynthesizer
from bot.localrt.languages import format_table
from bot.localrt.server import LANGUAGES_PATH, LocalRTServer, languages_document
from tests.localrt.conftest import API_KEY
from tests.localrt.sdk import SERVER_EVENT
from tests.localrt.speech import ENGINE_FRAME_BYTES, SENTENCES, require_tools, utterance

AUTH = {"Authorization": f"Bearer {API_KEY}"}


def http_url(server, path: str = LANGUAGES_PATH) -> str:
    return f"http://{server.config.host}:{server.port}{path}"


# --- GET /v1/languages ---------------------------------------------------------------------------


async def test_languages_endpoint_reports_what_the_engines_can_do(server, engines):
    async with aiohttp.ClientSession() as http, http.get(http_url(server), headers=AUTH) as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"] == "application/json"
        body = await resp.json()
    routes = engines.routes()
    assert body["output_languages"] == sorted({r.target for r in routes}) == sorted(server.targets)
    assert body["input_languages"] == sorted({r.source for r in routes})
    assert {"es", "ca"} <= set(body["output_languages"]) and "en" in body["input_languages"]
    # the same rows as `python -m bot localrt --languages`
    rows = [(r["input"], r["output"], r["translation"], r["voice"]) for r in body["routes"]]
    assert format_table(routes).count("\n") - 3 == len(rows)  # header, rule; a blank line and the counts
    assert rows == [(r.source, r.target, r.mt, r.tts) for r in routes]
    assert body == languages_document(engines)


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer wrong"}, {"Authorization": API_KEY}])
async def test_languages_endpoint_requires_the_same_token_as_the_websocket(server, headers):
    async with aiohttp.ClientSession() as http, http.get(http_url(server), headers=headers) as resp:
        assert resp.status == 401


async def test_languages_endpoint_without_a_key_is_open_and_other_paths_are_404(engines):
    config = engines.config.model_copy(update={"port": 0})
    async with LocalRTServer(config, engines, api_key=None) as srv, aiohttp.ClientSession() as http:
        async with http.get(http_url(srv, LANGUAGES_PATH + "/")) as resp:
            assert resp.status == 200 and (await resp.json())["output_languages"] == sorted(srv.targets)
        async with http.get(http_url(srv, "/v1/other")) as resp:
            assert resp.status == 404


# --- bearer token: constant time ---------------------------------------------------------------


async def test_bearer_token_is_compared_with_hmac_compare_digest(server, monkeypatch):
    calls = []
    real = server_module.hmac.compare_digest

    def spy(a, b):
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(server_module.hmac, "compare_digest", spy)
    async with connect(f"{server.url}/v1/realtime/translations", additional_headers=AUTH) as ws:
        assert json.loads(await ws.recv())["type"] == "session.created"
    assert calls and calls[-1][1] == f"Bearer {API_KEY}".encode()


# --- engine timeouts are EngineErrors ----------------------------------------------------------


def _script(path, body: str):
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return path


def _alive(pid: int) -> bool:
    """Running (a zombie waiting for a reaper that is not ours counts as dead)."""
    for _ in range(50):
        try:
            with open(f"/proc/{pid}/stat") as f:
                state = f.read().rsplit(")", 1)[1].split()[0]
        except (FileNotFoundError, ProcessLookupError):
            return False
        if state in "ZX":
            return False
        time.sleep(0.02)
    return True


def test_a_hung_tool_is_an_engine_timeout_and_its_whole_group_is_killed(tmp_path, monkeypatch):
    monkeypatch.setattr(tool, "TOOL_TIMEOUT_S", 0.5)
    pidfile = tmp_path / "grandchild.pid"
    hang = _script(tmp_path / "hang", f"sleep 60 & echo $! > {pidfile}\nwait\n")
    start = time.monotonic()
    with pytest.raises(EngineTimeout, match=r"did not finish within 0\.5 s") as info:
        run_tool("hang", [str(hang)])
    assert isinstance(info.value, EngineError)
    assert time.monotonic() - start < 5
    grandchild = int(pidfile.read_text())
    assert not _alive(grandchild)  # the pipeline is killed with it, not orphaned
    with pytest.raises(EngineError, match="could not run"):
        run_tool("gone", [str(tmp_path / "missing")])


def test_hung_apertium_and_espeak_raise_engine_errors(tmp_path, monkeypatch):
    require_tools()
    monkeypatch.setattr(tool, "TOOL_TIMEOUT_S", 0.5)
    hang = _script(tmp_path / "hang", "exec sleep 60\n")
    mt = ApertiumTranslator(LocalRTConfig().mt)
    monkeypatch.setattr(mt, "_exe", str(hang))
    with pytest.raises(EngineError, match="apertium did not finish"):
        mt.translate("Hello there.", "en", "es")
    tts = EspeakSynthesizer(TTSConfig())
    monkeypatch.setattr(tts, "_exe", str(hang))
    with pytest.raises(EngineError, match="espeak-ng did not finish"):
        tts.synthesize("Hola.", "es")


async def _recv(ws):
    return SERVER_EVENT.validate_python(json.loads(await ws.recv()))


async def test_a_hung_apertium_loses_one_segment_not_the_session(server, engines, tmp_path, monkeypatch):
    """Defect 11: `TimeoutExpired` used to end the session with 1011; now an `error` event, and on."""
    monkeypatch.setattr(tool, "TOOL_TIMEOUT_S", 1.0)
    marker = tmp_path / "hang-now"
    marker.touch()
    inner = engines.mt._inner
    wrapper = _script(tmp_path / "apertium", f'[ -e "{marker}" ] && exec sleep 60\nexec "{inner._exe}" "$@"\n')
    monkeypatch.setattr(inner, "_exe", str(wrapper))

    async with connect(f"{server.url}/v1/realtime/translations", additional_headers=AUTH) as ws:
        assert (await _recv(ws)).type == "session.created"
        audio = utterance(SENTENCES[0])
        for i in range(0, len(audio), ENGINE_FRAME_BYTES):
            chunk = base64.b64encode(audio[i : i + ENGINE_FRAME_BYTES]).decode()
            await ws.send(json.dumps({"type": "session.input_audio_buffer.append", "audio": chunk}))
        while True:
            event = await _recv(ws)
            if event.type == "error":
                break
        assert event.error.code == "engine_failed" and "apertium did not finish" in event.error.message
        marker.unlink()  # apertium works again: the same session goes on translating
        audio = utterance(SENTENCES[0])
        for i in range(0, len(audio), ENGINE_FRAME_BYTES):
            chunk = base64.b64encode(audio[i : i + ENGINE_FRAME_BYTES]).decode()
            await ws.send(json.dumps({"type": "session.input_audio_buffer.append", "audio": chunk}))
        await ws.send(json.dumps({"type": "session.close"}))
        events = []
        while True:
            event = await _recv(ws)
            events.append(event)
            if event.type == "session.closed":
                break
    assert ws.close_code == 1000
    assert "Dónde" in "".join(e.delta for e in events if e.type == "session.output_transcript.delta")
    assert any(e.type == "session.output_audio.delta" for e in events)
