"""Test peers: websocket servers on 127.0.0.1 that speak both OpenAI realtime protocols.

They are witnesses, not mocks: every event they send is first validated with the `openai` package's
server-event models, and every event they receive is validated with its client-event models (any
failure is recorded and the tests assert there are none). Fault injection (transport abort, close
codes, malformed JSON, unknown events, error events, short `expires_at`, slow `session.updated`, an
unanswered `session.close`) is configurable, and every socket is counted at the server: `open_sockets`
says how many a client has left open.

Translation behaviour: for each 200 ms of input the server emits one `session.output_audio.delta`
echoing that input (so a test can check which audio reached a session) with `elapsed_ms` = the end of
that frame on the session's audio clock, plus a transcript delta.
"""

from __future__ import annotations

import asyncio
import base64
import json
import time
from dataclasses import dataclass, field
from typing import Any

from openai.types.realtime import (
    RealtimeClientEvent,
    RealtimeServerEvent,
    RealtimeTranslationClientEvent,
    RealtimeTranslationServerEvent,
)
from pydantic import TypeAdapter
from websockets.asyncio.server import ServerConnection, serve
from websockets.protocol import State

TR_CLIENT = TypeAdapter(RealtimeTranslationClientEvent)
TR_SERVER = TypeAdapter(RealtimeTranslationServerEvent)
RT_CLIENT = TypeAdapter(RealtimeClientEvent)
RT_SERVER = TypeAdapter(RealtimeServerEvent)
FRAME = 9600  # 200 ms of 24 kHz pcm16


@dataclass
class PeerConnection:
    index: int
    headers: dict[str, str]
    received: list[dict] = field(default_factory=list)
    audio: bytearray = field(default_factory=bytearray)
    languages: list[str] = field(default_factory=list)
    closed_by_client: bool = False
    ws: Any = None
    socket_closed: bool = False  # the websocket is gone (closed or aborted, by either side)


@dataclass
class Faults:
    abort_after_bytes: dict[int, int] = field(default_factory=dict)  # connection index → bytes
    close_after_bytes: dict[int, tuple[int, int]] = field(default_factory=dict)  # index → (bytes, code)
    expires_in_s: float | None = None
    garbage_every_frames: int = 0  # send malformed JSON + an unknown event every N frames
    error_on_connect: dict[int, dict] = field(default_factory=dict)  # index → error object
    reject_language: str | None = None
    require_key: str | None = None
    slow_update_s: float = 0.0  # answer every session.update but the first this much later
    ignore_close: bool = False  # never answer `session.close` (a server that hangs while flushing)
    close_delay_s: float = 0.0  # answer `session.close` this much later (a server slow to flush)
    stretch: float = 1.0  # translated audio this many times longer than the speech (Spanish runs ~1.3× English)


class Peer:
    def __init__(self, protocol: str = "translation", faults: Faults | None = None) -> None:
        self.protocol = protocol
        self.faults = faults or Faults()
        self.connections: list[PeerConnection] = []
        self.validation_failures: list[str] = []
        self._server: Any = None
        self.port = 0

    @property
    def url(self) -> str:
        path = "/v1/realtime/translations" if self.protocol == "translation" else "/v1/realtime"
        return f"ws://127.0.0.1:{self.port}{path}"

    async def __aenter__(self) -> Peer:
        self._server = await serve(self._handle, "127.0.0.1", 0, process_request=self._check_auth)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._server.close()
        await self._server.wait_closed()

    def _check_auth(self, connection: ServerConnection, request: Any) -> Any:
        key = self.faults.require_key
        if key and request.headers.get("Authorization") != f"Bearer {key}":
            return connection.respond(401, "invalid api key\n")
        return None

    async def _send(self, ws: ServerConnection, event: dict) -> None:
        adapter = TR_SERVER if self.protocol == "translation" else RT_SERVER
        try:
            adapter.validate_python(event)
        except Exception as e:  # a peer must never send what the real API would not
            self.validation_failures.append(f"server {event.get('type')}: {e}")
        await ws.send(json.dumps(event))

    def _validate_client(self, raw: str) -> dict:
        adapter = TR_CLIENT if self.protocol == "translation" else RT_CLIENT
        try:
            adapter.validate_json(raw)
        except Exception as e:
            self.validation_failures.append(f"client: {e}")
        return json.loads(raw)

    @property
    def open_sockets(self) -> int:
        """Connections whose socket is still open, counted at the server."""
        return sum(not c.socket_closed for c in self.connections)

    async def sockets_settled(self, timeout: float = 3.0) -> int:
        """Wait (bounded) for every socket to be closed; the number still open."""
        deadline = time.monotonic() + timeout
        while self.open_sockets and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        return self.open_sockets

    async def _handle(self, ws: ServerConnection) -> None:
        conn = PeerConnection(len(self.connections), dict(ws.request.headers), ws=ws)
        self.connections.append(conn)
        try:
            if self.protocol == "translation":
                await self._translation(ws, conn)
            else:
                await self._realtime(ws, conn)
            await ws.wait_closed()
        finally:
            conn.socket_closed = ws.state is State.CLOSED

    def drop(self, index: int) -> None:
        """Cut connection `index` at the transport (no close frame), as a network failure would."""
        self.connections[index].ws.transport.abort()

    # --- /v1/realtime/translations ---------------------------------------------------------------

    def _session(self, conn: PeerConnection) -> dict:
        expires = time.time() + (self.faults.expires_in_s or 3600)
        lang = conn.languages[-1] if conn.languages else None
        return {
            "id": f"sess_peer{conn.index}",
            "type": "translation",
            "model": "gpt-realtime-translate",
            "expires_at": int(expires),
            "audio": {"output": {"language": lang}} if lang else {},
        }

    async def _translation(self, ws: ServerConnection, conn: PeerConnection) -> None:
        n = 0
        await self._send(ws, {"type": "session.created", "event_id": "ev_c", "session": self._session(conn)})
        consumed = 0
        async for raw in ws:
            ev = self._validate_client(raw)
            conn.received.append(ev)
            kind = ev.get("type")
            n += 1
            if kind == "session.update":
                lang = ev["session"]["audio"]["output"]["language"]
                err = self.faults.error_on_connect.get(conn.index)
                if err is not None:
                    await self._send(ws, {"type": "error", "event_id": f"ev_{n}", "error": err})
                    continue
                if lang == self.faults.reject_language:
                    await self._send(ws, {"type": "error", "event_id": f"ev_{n}", "error": {
                        "type": "invalid_request_error", "code": "unsupported_language",
                        "message": f"Output language {lang!r} is not supported.",
                        "param": "session.audio.output.language", "event_id": ev.get("event_id")}})
                    continue
                if conn.languages and self.faults.slow_update_s:
                    await asyncio.sleep(self.faults.slow_update_s)
                conn.languages.append(lang)
                await self._send(ws, {"type": "session.updated", "event_id": f"ev_{n}", "session": self._session(conn)})
            elif kind == "session.input_audio_buffer.append":
                conn.audio += base64.b64decode(ev["audio"])
                abort = self.faults.abort_after_bytes.get(conn.index)
                if abort is not None and len(conn.audio) >= abort:
                    ws.transport.abort()  # a transport failure, not a clean close
                    return
                cut = self.faults.close_after_bytes.get(conn.index)
                if cut is not None and len(conn.audio) >= cut[0]:
                    await ws.close(cut[1], "peer closing")
                    return
                while len(conn.audio) - consumed >= FRAME:
                    await self._emit_frame(ws, conn, consumed, n)
                    consumed += FRAME
            elif kind == "session.close":
                conn.closed_by_client = True
                if self.faults.ignore_close:
                    continue
                if self.faults.close_delay_s:
                    await asyncio.sleep(self.faults.close_delay_s)
                if len(conn.audio) > consumed:
                    await self._emit_frame(ws, conn, consumed, n, end=len(conn.audio))
                    consumed = len(conn.audio)
                await self._send(ws, {"type": "session.closed", "event_id": f"ev_{n}_closed"})
                await ws.close()
                return

    async def _emit_frame(self, ws: ServerConnection, conn: PeerConnection, start: int, n: int,
                          end: int | None = None) -> None:
        end = end if end is not None else start + FRAME
        elapsed = end // 48
        frame = bytes(conn.audio[start:end])
        if self.faults.stretch != 1.0:  # a longer translation: the same sound, drawn out (pitch is not the point)
            import numpy as np

            x = np.frombuffer(frame, dtype="<i2").astype(np.float64)
            n = int(len(x) * self.faults.stretch)
            frame = np.interp(np.linspace(0, len(x) - 1, n), np.arange(len(x)), x).astype("<i2").tobytes()
        garbage = self.faults.garbage_every_frames
        if garbage and (start // FRAME) % garbage == 0:
            await ws.send("{not json")
            await ws.send(json.dumps({"type": "session.future_feature", "event_id": "ev_x", "x": 1}))
            await ws.send(json.dumps({"type": "session.output_audio.delta", "event_id": "ev_bad"}))  # no delta
        await self._send(ws, {"type": "session.input_transcript.delta", "event_id": f"ev_{n}_i",
                              "delta": f"[{start // 48}]", "elapsed_ms": elapsed})
        await self._send(ws, {"type": "session.output_transcript.delta", "event_id": f"ev_{n}_t",
                              "delta": f"<{start // 48}>", "elapsed_ms": elapsed})
        await self._send(ws, {"type": "session.output_audio.delta", "event_id": f"ev_{n}_a",
                              "delta": base64.b64encode(frame).decode(), "sample_rate": 24000,
                              "channels": 1, "format": "pcm16", "elapsed_ms": elapsed})

    # --- /v1/realtime (GA) as an interpreter ------------------------------------------------------

    async def _realtime(self, ws: ServerConnection, conn: PeerConnection) -> None:
        """Server VAD, simplified: every 1 s of input that is not all zeros is one turn, answered by
        echoing it; silence gets no answer at all (as from a real server VAD)."""
        turn = 24000 * 2
        await self._send(ws, {"type": "session.created", "event_id": "ev_c",
                              "session": {"type": "realtime", "model": "gpt-realtime"}})
        consumed, n = 0, 0
        async for raw in ws:
            ev = self._validate_client(raw)
            conn.received.append(ev)
            n += 1
            if ev.get("type") == "session.update":
                conn.languages.append(ev["session"]["instructions"])
                await self._send(ws, {"type": "session.updated", "event_id": f"ev_{n}",
                                      "session": {"type": "realtime", "model": "gpt-realtime"}})
            elif ev.get("type") == "input_audio_buffer.append":
                conn.audio += base64.b64decode(ev["audio"])
                abort = self.faults.abort_after_bytes.get(conn.index)
                if abort is not None and len(conn.audio) >= abort:
                    ws.transport.abort()
                    return
                while len(conn.audio) - consumed >= turn:
                    start_ms, end_ms = consumed // 48, (consumed + turn) // 48
                    item, resp = f"item_{n}", f"resp_{n}"
                    pcm = bytes(conn.audio[consumed : consumed + turn])
                    consumed += turn
                    if not any(pcm):
                        continue
                    for e in (
                        {"type": "input_audio_buffer.speech_started", "event_id": f"e{n}a",
                         "item_id": item, "audio_start_ms": start_ms},
                        {"type": "input_audio_buffer.speech_stopped", "event_id": f"e{n}b",
                         "item_id": item, "audio_end_ms": end_ms},
                        {"type": "conversation.item.input_audio_transcription.completed", "event_id": f"e{n}c",
                         "item_id": item, "content_index": 0, "transcript": f"[{start_ms}]",
                         "usage": {"type": "duration", "seconds": 1.0}},
                        {"type": "response.output_audio.delta", "event_id": f"e{n}d", "response_id": resp,
                         "item_id": f"out_{n}", "output_index": 0, "content_index": 0,
                         "delta": base64.b64encode(pcm).decode()},
                        {"type": "response.output_audio_transcript.delta", "event_id": f"e{n}e",
                         "response_id": resp, "item_id": f"out_{n}", "output_index": 0, "content_index": 0,
                         "delta": f"<{start_ms}>"},
                        {"type": "rate_limits.updated", "event_id": f"e{n}f",
                         "rate_limits": [{"name": "requests", "limit": 100, "remaining": 99, "reset_seconds": 1.0}]},
                        {"type": "response.done", "event_id": f"e{n}g", "response": {
                            "id": resp, "object": "realtime.response", "status": "completed",
                            "usage": {"input_tokens": 10, "output_tokens": 20, "total_tokens": 30}}},
                    ):
                        await self._send(ws, e)


def numbered_audio(blocks: int, block_ms: int = 100) -> bytes:
    """Test input whose every block is identifiable: block i is the constant sample value i + 1."""
    import numpy as np

    per = 24 * block_ms
    return np.repeat(np.arange(1, blocks + 1, dtype="<i2"), per).tobytes()


def blocks_in(audio: bytes | bytearray) -> list[int]:
    """Which numbered blocks (1-based) an echoed stream contains, in order, with repeats."""
    import numpy as np

    samples = np.frombuffer(bytes(audio), dtype="<i2")
    if samples.size == 0:
        return []
    edges = np.flatnonzero(np.diff(samples)) + 1
    starts = np.concatenate([[0], edges])
    return [int(samples[i]) for i in starts if samples[i] > 0]
