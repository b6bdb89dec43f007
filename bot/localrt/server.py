"""The websocket server: OpenAI's `/v1/realtime/translations` wire protocol over offline engines.

The event loop only parses, validates, frames and sends. Engines run in a small thread pool shared
by every session; each session has one worker task that hands its frames to the pool in order, so a
slow session occupies at most one thread and never holds up another session's events.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import hmac
import json
import logging
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from http import HTTPStatus
from typing import TypeVar
from urllib.parse import parse_qs, urlsplit

from pydantic import ValidationError
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from bot.localrt import languages
from bot.localrt.config import LocalRTConfig
from bot.localrt.engines.bundle import Engines
from bot.localrt.errors import ProtocolError
from bot.localrt.framing import FrameBuffer
from bot.localrt.interpreter import Failure, Interpreter, Output, SessionRequest, SourceText, TargetText
from bot.localrt.session import SessionState
from bot.realtime.translation_events import (
    CLIENT_EVENT_TYPES,
    ENGINE_FRAME_MS,
    SAMPLE_RATE,
    AnyServerEvent,
    ErrorDetail,
    ErrorEvent,
    InputAudioBufferAppend,
    InputTranscriptDelta,
    OutputAudioDelta,
    OutputTranscriptDelta,
    SessionClose,
    SessionClosed,
    SessionCreated,
    SessionUpdate,
    SessionUpdated,
    parse_client_event,
)

log = logging.getLogger(__name__)
T = TypeVar("T")
ServerEvent = AnyServerEvent

PATH = "/v1/realtime/translations"
LANGUAGES_PATH = "/v1/languages"  # plain HTTP GET: what this server can translate (JSON)
LOAD_PATH = "/v1/load"  # plain HTTP GET: how loaded this worker is, for a client's pool of workers (JSON)
DEFAULT_MODEL = "gpt-realtime-translate"
BATCH_FRAMES = 10  # frames handed to the engine thread per call (2 s of audio at most)
BACKLOG_FRAMES = 5  # above this many queued frames, skip partial decodes to catch up


class LocalRTServer:
    """Owns the listening socket, the engines and the engine thread pool."""

    def __init__(self, config: LocalRTConfig, engines: Engines, api_key: str | None = None) -> None:
        self.config = config
        self.engines = engines
        self.api_key = api_key
        self.pool = ThreadPoolExecutor(max_workers=config.workers, thread_name_prefix="localrt-engine")
        self.targets = engines.output_languages()
        self._languages_body = json.dumps(languages_document(engines), separators=(",", ":"))
        self._server: Server | None = None
        self.sessions: set[Session] = set()
        self.inflight = 0  # engine jobs submitted and not finished
        self.audio_bytes_received = 0  # pcm16 appended by all sessions (privacy tests count what arrives)

    async def run_engine(self, fn: Callable[..., T], *args: object) -> T:
        """Run blocking engine work on the shared pool, counting busy threads."""
        self.inflight += 1
        try:
            return await asyncio.get_running_loop().run_in_executor(self.pool, fn, *args)
        finally:
            self.inflight -= 1

    async def start(self) -> None:
        # The socket limit sits well above the protocol limit, so an oversized message gets an error
        # event (and the session lives on) instead of a closed connection.
        self._server = await serve(
            self._handle,
            self.config.host,
            self.config.port,
            process_request=self._process_request,
            max_size=max(4 * self.config.max_message_bytes, 16 << 20),
            compression=None,
        )

    @property
    def port(self) -> int:
        assert self._server is not None, "start() first"
        return self._server.sockets[0].getsockname()[1]

    @property
    def url(self) -> str:
        return f"ws://{self.config.host}:{self.port}"

    async def serve_forever(self) -> None:
        assert self._server is not None
        await self._server.serve_forever()

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        self.pool.shutdown(wait=False, cancel_futures=True)

    async def __aenter__(self) -> LocalRTServer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def _authorized(self, request: Request) -> bool:
        """The bearer token, compared in constant time (no key configured: everyone)."""
        if not self.api_key:
            return True
        auth = request.headers.get("Authorization", "")
        return hmac.compare_digest(auth.encode("utf-8", "surrogateescape"), f"Bearer {self.api_key}".encode())

    def load(self) -> dict[str, float | int]:
        """The body of ``GET /v1/load``: open sessions and the input audio queued for the engines (seconds)."""
        backlog = sum(s._pending_frames for s in self.sessions) * ENGINE_FRAME_MS / 1000
        return {"sessions": len(self.sessions), "backlog_s": round(backlog, 3), "workers": self.config.workers}

    def _process_request(self, connection: ServerConnection, request: Request) -> Response | None:
        """Reject wrong paths (404) and wrong bearer tokens (401) before the upgrade; answer
        ``GET /v1/languages`` with JSON (same token rule as the websocket)."""
        path = urlsplit(request.path).path.rstrip("/")
        if path not in (PATH, LANGUAGES_PATH, LOAD_PATH):
            return connection.respond(HTTPStatus.NOT_FOUND, f"not found; connect to {PATH} or GET {LANGUAGES_PATH}\n")
        if not self._authorized(request):
            return connection.respond(HTTPStatus.UNAUTHORIZED, "invalid or missing API key\n")
        if path in (LANGUAGES_PATH, LOAD_PATH):
            body = self._languages_body if path == LANGUAGES_PATH else json.dumps(self.load())
            response = connection.respond(HTTPStatus.OK, body)
            del response.headers["Content-Type"]
            response.headers["Content-Type"] = "application/json"
            return response
        return None

    async def _handle(self, ws: ServerConnection) -> None:
        query = parse_qs(urlsplit(ws.request.path if ws.request else "").query)
        model = (query.get("model") or [DEFAULT_MODEL])[0]
        try:
            spoken = speaker_languages(query, self.engines.asr.languages)
        except ProtocolError as exc:
            # a bad query fixes nothing by retrying: say why, then hang up (1008: policy violation)
            with contextlib.suppress(ConnectionClosed):
                await ws.send(exc.to_event().to_json())
                await ws.close(1008, exc.code)
            return
        session = Session(self, ws, model, spoken)
        self.sessions.add(session)
        try:
            await session.run()
        finally:
            self.sessions.discard(session)


@dataclass(frozen=True)
class SpeakerLanguages:
    """What the client said about the speaker, from the websocket URL (a bot.localrt extension; the
    official SDK passes it with ``extra_query``): ``input_language=xx`` (spoken, so no identification)
    and ``languages=xx,yy`` (candidates for identification)."""

    spoken: str | None = None
    candidates: frozenset[str] = frozenset()


def speaker_languages(query: dict[str, list[str]], known: frozenset[str]) -> SpeakerLanguages:
    """Validate the query against what the recogniser hears; a ProtocolError names the bad code."""

    def code_of(raw: str, param: str) -> str:
        code = languages.normalize(raw)
        if code is None or code not in known:
            heard = ", ".join(sorted(known)) if len(known) < 10 else f"{len(known)} languages (GET {LANGUAGES_PATH})"
            raise ProtocolError(
                "unsupported_language", f"{param} {raw!r} is not a language the recogniser knows; it knows {heard}",
                param,
            )
        return code

    spoken = [x for x in query.get("input_language", []) if x.strip()]
    listed = [x for value in query.get("languages", []) for x in value.split(",") if x.strip()]
    return SpeakerLanguages(
        spoken=code_of(spoken[-1], "input_language") if spoken else None,
        candidates=frozenset(code_of(x, "languages") for x in listed),
    )


def languages_document(engines: Engines) -> dict[str, object]:
    """The body of ``GET /v1/languages``: what ``python -m bot localrt --languages`` prints, as JSON.

    ``output_languages``: the codes a session may ask for (``audio.output.language``);
    ``input_languages``: spoken languages with at least one route (what ``input_language=`` and
    ``languages=`` may name usefully); ``recognised_languages``: every language the recogniser knows;
    ``routes``: every working pair with its expected quality; ``counts``: the totals the CLI prints.
    """
    routes = engines.routes()
    return {
        "output_languages": sorted(engines.output_languages()),
        "input_languages": sorted({r.source for r in routes}),
        "recognised_languages": sorted(engines.asr.languages),
        "routes": [
            {"input": r.source, "output": r.target, "translation": r.mt, "voice": r.tts, "quality": r.quality}
            for r in routes
        ],
        "counts": languages.count_routes(routes),
    }


@dataclass(frozen=True)
class _Batch:
    frames: list[bytes]
    settings: SessionRequest


class Session:
    """One client connection: reads events, frames audio, feeds its worker, sends results."""

    def __init__(
        self, server: LocalRTServer, ws: ServerConnection, model: str, spoken: SpeakerLanguages | None = None
    ) -> None:
        cfg = server.config
        self.server = server
        self.spoken = spoken or SpeakerLanguages()
        self.audio_bytes_received = 0
        self.ws = ws
        self.state = SessionState(model, cfg.default_output_language, cfg.session_ttl_s, server.targets)
        self.frames = FrameBuffer()
        self._queue: deque[_Batch | None] = deque()  # None: session.close
        self._max_backlog = max(BATCH_FRAMES, int(cfg.max_backlog_s * 1000) // ENGINE_FRAME_MS)
        self._drained = asyncio.Event()
        self._wake = asyncio.Event()
        self._pending_frames = 0
        self._closing = False
        self._worker_done = False  # the worker stopped (hung up, failed): nobody will drain the queue
        self._interpreter: Interpreter | None = None

    def _settings(self) -> SessionRequest:
        return SessionRequest(target=self.state.target, transcribe=self.state.transcribe)

    async def run(self) -> None:
        # building the VAD loads a model file: not on the event loop
        self._interpreter = await self.server.run_engine(
            Interpreter, self.server.engines, self.spoken.spoken, self.spoken.candidates, f"session {self.state.id}"
        )
        log.info(
            "session %s opened (model %s, speaker's language: %s)",
            self.state.id,
            self.state.model,
            self.spoken.spoken or "to be identified",
        )
        await self._send(SessionCreated(session=self.state.info()))
        worker = asyncio.create_task(self._work(), name=f"localrt-{self.state.id}")
        expiry = asyncio.create_task(self._expire())
        try:
            async for message in self.ws:
                try:
                    await self._on_message(message)
                except ProtocolError as exc:
                    await self._send(exc.to_event())
        except ConnectionClosed:
            pass
        finally:
            expiry.cancel()
            if not self._closing:
                worker.cancel()
            with contextlib.suppress(asyncio.CancelledError, ConnectionClosed):
                await worker
            log.info("session %s ended", self.state.id)

    # --- client events -------------------------------------------------------------------------

    async def _on_message(self, message: str | bytes) -> None:
        limit = self.server.config.max_message_bytes
        if len(message) > limit:
            raise ProtocolError(
                "message_too_large", f"message of {len(message)} bytes exceeds the limit of {limit} bytes"
            )
        if isinstance(message, bytes):
            raise ProtocolError("invalid_message", "binary frames are not accepted; send JSON text events")
        try:
            data = json.loads(message)
        except (ValueError, RecursionError) as exc:
            raise ProtocolError("invalid_json", f"message is not valid JSON: {exc}") from None
        if not isinstance(data, dict):
            raise ProtocolError("invalid_json", "an event must be a JSON object")
        event_id = data.get("event_id") if isinstance(data.get("event_id"), str) else None
        kind = data.get("type")
        if kind not in CLIENT_EVENT_TYPES:
            raise ProtocolError(
                "unknown_event_type" if kind is not None else "missing_type",
                f"unsupported event type {kind!r}; expected one of {', '.join(sorted(CLIENT_EVENT_TYPES))}",
                "type",
                event_id=event_id,
            )
        try:
            event = parse_client_event(data)
        except ValidationError as exc:
            first = exc.errors()[0]
            param = ".".join(str(p) for p in first["loc"] if not str(p).startswith("session."))
            raise ProtocolError("invalid_value", f"{kind}: {first['msg']}", param or None, event_id=event_id) from None
        if self._closing:
            raise ProtocolError(
                "session_closing", "the session is closing; no more events are accepted", event_id=event_id
            )
        if isinstance(event, InputAudioBufferAppend):
            self._append(event)
            if self._pending_frames > self._max_backlog and not self._worker_done:
                # Back-pressure instead of dropping: stop reading until the engines catch up, so a
                # client sending faster than real time is slowed down by TCP and nothing is lost.
                # Never park on a worker that has stopped: nothing would wake this reader, and the
                # server's close would wait for this connection forever.
                self._drained.clear()
                await self._drained.wait()
        elif isinstance(event, SessionUpdate):
            self.state.apply(event.session, event.event_id)
            await self._send(SessionUpdated(session=self.state.info()))
        elif isinstance(event, SessionClose):
            self._closing = True
            tail = self.frames.flush()
            if tail is not None:
                self._enqueue([tail])
            self._queue.append(None)
            self._wake.set()

    def _append(self, event: InputAudioBufferAppend) -> None:
        try:
            pcm = base64.b64decode(event.audio, validate=True)
        except (binascii.Error, ValueError):
            raise ProtocolError(
                "invalid_audio", "audio is not valid base64", "audio", event_id=event.event_id
            ) from None
        if len(pcm) % 2:
            raise ProtocolError(
                "invalid_audio_length",
                f"audio has {len(pcm)} bytes; pcm16 needs an even number of bytes",
                "audio",
                event_id=event.event_id,
            )
        self.server.audio_bytes_received += len(pcm)
        self.audio_bytes_received += len(pcm)
        frames = self.frames.push(pcm)
        if frames:
            self._enqueue(frames)

    def _enqueue(self, frames: list[bytes]) -> None:
        self._queue.append(_Batch(frames, self._settings()))
        self._pending_frames += len(frames)
        self._wake.set()

    # --- the worker ----------------------------------------------------------------------------

    async def _work(self) -> None:
        """Feed queued frames to the engine pool in order; send what comes back."""
        try:
            await self._work_loop()
        except (ConnectionClosed, asyncio.CancelledError):
            raise
        except Exception:
            # An engine bug must not leave the client waiting forever: say so and hang up.
            log.exception("session %s: engine failure", self.state.id)
            with contextlib.suppress(ConnectionClosed):
                await self._send(
                    ErrorEvent(error=ErrorDetail(type="server_error", code="engine_failed", message="internal error"))
                )
                await self.ws.close(1011, "engine failure")
        finally:
            self._worker_done = True
            self._drained.set()  # never leave the reader parked on a dead worker

    async def _work_loop(self) -> None:
        interp = self._interpreter
        assert interp is not None
        while True:
            while not self._queue:
                self._wake.clear()
                await self._wake.wait()
            item = self._queue.popleft()
            if item is None:  # session.close
                outputs = await self.server.run_engine(interp.finish, self._settings())
                await self._send_outputs(outputs)
                await self._send(SessionClosed())
                await self.ws.close(1000, "session closed")
                return
            frames, settings = list(item.frames), item.settings
            # merge queued frames of the same settings into one engine call
            while self._queue and len(frames) < BATCH_FRAMES:
                nxt = self._queue[0]
                if nxt is None or nxt.settings != settings:
                    break
                frames += nxt.frames
                self._queue.popleft()
            self._pending_frames -= len(frames)
            if self._pending_frames <= self._max_backlog // 2:
                self._drained.set()
            caught_up = self._pending_frames <= BACKLOG_FRAMES
            # Partial text is a luxury: only when an engine thread is idle, so that under load the
            # threads go to final decodes (which carry the translation) first.
            idle = self.server.inflight < self.server.config.workers
            settings = replace(settings, partials=caught_up and idle, ahead=caught_up)
            outputs = await self.server.run_engine(interp.process, frames, settings)
            await self._send_outputs(outputs)

    async def _send_outputs(self, outputs: list[Output]) -> None:
        for out in outputs:
            if isinstance(out, SourceText):
                await self._send(InputTranscriptDelta(delta=out.delta, elapsed_ms=out.elapsed_ms))
            elif isinstance(out, TargetText):
                await self._send(OutputTranscriptDelta(delta=out.delta, elapsed_ms=out.elapsed_ms))
            elif isinstance(out, Failure):
                await self._send(ErrorEvent(error=ErrorDetail(type="server_error", code=out.code, message=out.message)))
            else:
                await self._send(
                    OutputAudioDelta(
                        delta=base64.b64encode(out.pcm).decode("ascii"),
                        sample_rate=SAMPLE_RATE,
                        channels=1,
                        format="pcm16",
                        elapsed_ms=out.elapsed_ms,
                    )
                )

    async def _expire(self) -> None:
        """Like OpenAI's sessions, ours end at `expires_at` (1001: the client opens the next one)."""
        await asyncio.sleep(max(0.0, self.state.expires_at - time.time()))
        detail = ErrorDetail(type="invalid_request_error", code="session_expired", message="the session has expired")
        with contextlib.suppress(ConnectionClosed):
            await self._send(ErrorEvent(error=detail))
            await self.ws.close(1001, "session expired")

    async def _send(self, event: ServerEvent) -> None:
        await self.ws.send(event.to_json())
