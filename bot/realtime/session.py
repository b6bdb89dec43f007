"""`TranslationSession`: one speaker's realtime translation session over a websocket, any backend.

The session hides the socket's life from its user: audio goes in with `send_audio`, typed outputs come
out of `outputs()`, and in between the session

- keeps every chunk it sent until the server has answered for it (`ReplayBuffer`), so when the socket
  drops it reconnects with backoff, re-sends the configuration and replays from the acknowledged
  point: nothing the speaker said is lost, and little is sent twice;
- rotates before the server's `expires_at` (or the 60-minute cap): the next session is opened and
  configured first, then takes over between two chunks, and the old one is closed gracefully;
- surfaces `error` events, stops on fatal ones (bad key, unknown model), backs off on rate limits;
- meters audio time sent, for cost.

Chunks are whole multiples of 20 ms (`audio.chunk_ms`), so a take-over always lands on a frame boundary.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import time
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import urlsplit

import websockets
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus

from bot.config import Endpoint, Settings
from bot.logsafe import redacting_logger
from bot.realtime.backoff import Backoff
from bot.realtime.cost import CostMeter
from bot.realtime.outputs import SessionError, SessionOutput
from bot.realtime.protocol import RealtimeProtocol, TranslationProtocol, WireProtocol
from bot.realtime.replay import BYTES_PER_MS, ReplayBuffer

log = logging.getLogger("parley.realtime")
_WS_LOG = redacting_logger("parley.realtime.websocket")
_END = object()
_FATAL_HTTP = {401: "the API key was refused", 403: "access is forbidden", 404: "no such endpoint or model"}
_RETRYABLE = (OSError, TimeoutError, InvalidHandshake, ConnectionClosed)


class SessionFatal(Exception):
    """Retrying cannot help (bad key, unknown model, unsupported language): the operator must act."""


class SessionUnavailable(Exception):
    """The backend could not be reached within the allowed attempts."""


@dataclasses.dataclass
class SessionStats:
    connects: int = 0
    drops: int = 0
    rotations: int = 0
    unknown_events: int = 0
    malformed_events: int = 0
    errors: int = 0
    reconnect_gaps_s: list[float] = dataclasses.field(default_factory=list)


class _Connection:
    """One websocket = one server-side session; `base` maps its audio clock onto the speaker's stream."""

    def __init__(self, ws: Any, protocol: WireProtocol) -> None:
        self.ws = ws
        self.protocol = protocol
        self.base = 0  # stream byte offset of this server session's audio time 0
        self.expires_at: float | None = None
        self.opened_at = time.time()
        self.created = asyncio.Event()
        self.ready = asyncio.Event()
        self.closed = asyncio.Event()  # the server said session.closed
        self.done = asyncio.Event()  # the socket is gone
        self.first_error: SessionError | None = None
        self.rejected = asyncio.Event()  # an error arrived before the configuration was applied
        self.rate_limited = False
        self.fatal: SessionError | None = None
        self.reader: asyncio.Task[None] | None = None

    @property
    def close_code(self) -> int | None:
        return getattr(self.ws, "close_code", None)


async def _wait_any(*events: asyncio.Event, timeout: float | None = None) -> bool:
    """Wait until any event is set; False on timeout."""
    waiters = [asyncio.ensure_future(e.wait()) for e in events]
    try:
        done, _ = await asyncio.wait(waiters, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        return bool(done)
    finally:
        for w in waiters:
            w.cancel()


class TranslationSession:
    def __init__(
        self,
        endpoint: Endpoint,
        language: str,
        settings: Settings | None = None,
        *,
        name: str = "session",
        backoff: Backoff | None = None,
    ) -> None:
        self.endpoint = endpoint
        self.language = language
        self.settings = settings or Settings()
        self.name = name
        s = self.settings
        self._chunk_bytes = s.audio.chunk_ms * BYTES_PER_MS
        self._replay = ReplayBuffer(int(s.session.replay_buffer_s * 1000) * BYTES_PER_MS)
        self._backoff = backoff or Backoff(
            s.reconnect.initial_delay_s, s.reconnect.max_delay_s, s.reconnect.multiplier, s.reconnect.jitter
        )
        self.cost = CostMeter(endpoint.price_per_minute)
        self.stats = SessionStats()
        self._pending = bytearray()  # less than one chunk, not yet sent
        self._sent = 0  # stream bytes handed to a socket (or buffered for one)
        self._ack = 0  # stream bytes the server has answered for
        self._live: _Connection | None = None
        self._live_event = asyncio.Event()
        self._lock = asyncio.Lock()
        self._queue: asyncio.Queue[Any] = asyncio.Queue()
        self._supervisor: asyncio.Task[None] | None = None
        self._retiring: set[asyncio.Task[None]] = set()
        self._closing = False
        self._ended = False
        self._failure: BaseException | None = None

    # --- public surface -------------------------------------------------------------------------

    @property
    def sent_ms(self) -> float:
        return (self._sent + len(self._pending)) / BYTES_PER_MS

    @property
    def acked_ms(self) -> float:
        return self._ack / BYTES_PER_MS

    @property
    def dropped_ms(self) -> float:
        """Audio that fell out of the bounded replay buffer during a long outage."""
        return self._replay.dropped_bytes / BYTES_PER_MS

    @property
    def connected(self) -> bool:
        return self._live is not None

    @property
    def failure(self) -> BaseException | None:
        """Why the session gave up (SessionFatal / SessionUnavailable), if it did."""
        return self._failure

    async def open(self) -> None:
        """Connect and configure; raises SessionFatal or SessionUnavailable with a clear message."""
        attempts = self.settings.reconnect.open_attempts
        for attempt in range(1, attempts + 1):
            try:
                conn = await self._connect()
                break
            except SessionFatal:
                raise
            except _RETRYABLE as e:
                if attempt == attempts:
                    raise SessionUnavailable(f"cannot reach {self._where()}: {_describe(e)}") from None
                await asyncio.sleep(self._backoff.next_delay())
        self._backoff.reset()
        await self._install(conn, replay=False)
        self._supervisor = asyncio.create_task(self._supervise(conn), name=f"{self.name}-supervisor")

    async def send_audio(self, pcm16: bytes) -> None:
        """Append 24 kHz mono pcm16. Sent in whole chunks; buffered (bounded) while reconnecting."""
        if self._failure is not None:
            raise self._failure
        if self._closing:
            raise RuntimeError(f"{self.name}: send_audio after close()")
        if len(pcm16) & 1:
            raise ValueError("pcm16 audio must be a whole number of 16-bit samples")
        self._pending += pcm16
        while len(self._pending) >= self._chunk_bytes:
            chunk = bytes(self._pending[: self._chunk_bytes])
            del self._pending[: self._chunk_bytes]
            await self._send_chunk(chunk)

    async def set_language(self, language: str) -> None:
        """Change the target language live; reconnects and rotations keep the new one."""
        self.language = language
        async with self._lock:
            conn = self._live
            if conn is not None:
                with contextlib.suppress(ConnectionClosed):
                    await conn.ws.send(conn.protocol.session_update(language))

    async def outputs(self) -> AsyncIterator[SessionOutput]:
        """Typed outputs until the session has closed (or failed: the last item is then fatal)."""
        while True:
            item = await self._queue.get()
            if item is _END:
                self._queue.put_nowait(_END)
                return
            yield item

    async def close(self) -> None:
        """Flush what is pending, let the server translate it (`session.close` → `session.closed`), end."""
        if self._ended:
            return
        if self._pending and self._failure is None:
            await self._send_chunk(bytes(self._pending))
            self._pending.clear()
        self._closing = True
        try:
            if self._supervisor is not None and self._failure is None:
                await asyncio.wait_for(self._drain(), timeout=self.settings.session.close_timeout_s)
            if self._retiring:  # sessions replaced by a rotation are still flushing
                await asyncio.wait(set(self._retiring), timeout=self.settings.session.close_timeout_s)
        except TimeoutError:
            log.warning("%s: server did not finish within close_timeout_s; closing anyway", self.name)
        finally:
            await self._shutdown()

    async def abort(self) -> None:
        """Stop at once: nothing pending is sent or flushed (a member opted out mid-sentence)."""
        self._pending.clear()
        await self._shutdown()

    async def __aenter__(self) -> TranslationSession:
        await self.open()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # --- sending --------------------------------------------------------------------------------

    async def _send_chunk(self, chunk: bytes) -> None:
        async with self._lock:
            self._replay.append(chunk)
            self._sent += len(chunk)
            conn = self._live
            if conn is None:
                return  # kept in the replay buffer; sent when the socket is back
            try:
                await conn.ws.send(conn.protocol.append(chunk))
                self.cost.add_audio(len(chunk))
            except ConnectionClosed:
                self._mark_down(conn)

    async def _install(self, conn: _Connection, replay: bool) -> None:
        """Make `conn` the live connection; after a drop, first replay what was not acknowledged."""
        async with self._lock:
            start, data = self._replay.since(self._ack) if replay else (self._sent, b"")
            conn.base = start
            for i in range(0, len(data), self._chunk_bytes):
                part = data[i : i + self._chunk_bytes]
                await conn.ws.send(conn.protocol.append(part))
                self.cost.add_audio(len(part), replay=True)
            self._live = conn
            self._live_event.set()
        if data:
            log.info("%s: replayed %.0f ms of audio after reconnect", self.name, len(data) / BYTES_PER_MS)

    def _mark_down(self, conn: _Connection) -> None:
        if self._live is conn:
            self._live = None
            self._live_event.clear()

    # --- connecting -----------------------------------------------------------------------------

    def _make_protocol(self) -> WireProtocol:
        s = self.settings
        if self.endpoint.protocol == "realtime":
            i = s.interpreter
            return RealtimeProtocol(
                self.endpoint.model, i.prompt, i.voice, s.models.transcription,
                i.vad_threshold, i.silence_ms, i.prefix_padding_ms,
            )
        return TranslationProtocol(s.models.transcription, s.audio.noise_reduction)

    def _where(self) -> str:
        parts = urlsplit(self.endpoint.url)
        return f"{parts.scheme}://{parts.netloc}{parts.path}"

    async def _connect(self) -> _Connection:
        """Open a socket, wait for `session.created`, configure, wait for the configuration to apply."""
        headers = {}
        if self.endpoint.api_key is not None:
            headers["Authorization"] = f"Bearer {self.endpoint.api_key.get_secret_value()}"
        timeout = self.settings.session.connect_timeout_s
        try:
            ws = await websockets.connect(
                self.endpoint.url,
                additional_headers=headers,
                open_timeout=timeout,
                max_size=16 * 2**20,
                logger=_WS_LOG,
            )
        except InvalidStatus as e:
            status = e.response.status_code
            if status in _FATAL_HTTP:
                raise SessionFatal(f"{self._where()} answered HTTP {status}: {_FATAL_HTTP[status]}") from None
            if status == 429:
                self._backoff.penalize(self.settings.reconnect.rate_limit_delay_s)
            raise
        conn = _Connection(ws, self._make_protocol())
        conn.reader = asyncio.create_task(self._read(conn), name=f"{self.name}-reader")
        try:
            if not await _wait_any(conn.created, conn.done, timeout=timeout) or not conn.created.is_set():
                raise ConnectionError("no session.created from the server")
            await ws.send(conn.protocol.session_update(self.language))
            if not await _wait_any(conn.ready, conn.done, conn.rejected, timeout=timeout) or not conn.ready.is_set():
                if conn.rate_limited:
                    raise ConnectionError("rate limited by the server")
                if conn.first_error is not None:
                    err = conn.first_error
                    raise SessionFatal(f"{self._where()} rejected the session: {err.message} ({err.code})")
                raise ConnectionError("the server did not apply the session configuration")
        except BaseException:
            await self._discard(conn)
            raise
        self.stats.connects += 1
        self._schedule_rotation(conn)
        return conn

    def _schedule_rotation(self, conn: _Connection) -> None:
        cap = conn.opened_at + self.settings.session.max_duration_s
        conn.expires_at = min(conn.expires_at or cap, cap)

    def _rotation_delay(self, conn: _Connection) -> float:
        assert conn.expires_at is not None
        return max(0.0, conn.expires_at - self.settings.session.rotate_before_s - time.time())

    async def _discard(self, conn: _Connection) -> None:
        with contextlib.suppress(Exception):
            await conn.ws.close()
        if conn.reader is not None:
            conn.reader.cancel()
            with contextlib.suppress(BaseException):
                await conn.reader

    # --- reading --------------------------------------------------------------------------------

    async def _read(self, conn: _Connection) -> None:
        try:
            async for raw in conn.ws:
                self._handle(conn, raw)
                if conn.fatal is not None:
                    await conn.ws.close()
                    break
        except ConnectionClosed:
            pass
        finally:
            self._mark_down(conn)
            conn.done.set()

    def _handle(self, conn: _Connection, raw: str | bytes) -> None:
        try:
            data = json.loads(raw)
        except ValueError:
            data = None
        if not isinstance(data, dict):
            self.stats.malformed_events += 1
            log.warning("%s: ignored a server message that is not a JSON object", self.name)
            return
        r = conn.protocol.read(data)
        if r.unknown:
            self.stats.unknown_events += 1
            log.debug("%s: ignored unknown server event %r", self.name, data.get("type"))
            return
        if r.malformed:
            self.stats.malformed_events += 1
            log.warning("%s: ignored a malformed %r event", self.name, data.get("type"))
            return
        if r.created:
            if r.created_expires_at:
                conn.expires_at = float(r.created_expires_at)
            conn.created.set()
        if r.ready:
            conn.ready.set()
        if r.closed:
            conn.closed.set()
        if r.ack_ms is not None:
            ack = min(conn.base + r.ack_ms * BYTES_PER_MS, self._sent)
            if ack > self._ack:
                self._ack = ack
                self._replay.ack(ack)
        if r.usage is not None:
            self.cost.add_tokens(*r.usage)
        if r.error is not None:
            self.stats.errors += 1
            log.warning("%s: server error %s: %s", self.name, r.error.code, r.error.message)
            if r.rate_limited:
                conn.rate_limited = True
                self._backoff.penalize(self.settings.reconnect.rate_limit_delay_s)
            err = r.outputs[0]
            assert isinstance(err, SessionError)
            if not conn.ready.is_set() and conn.first_error is None:
                conn.first_error = err
                conn.rejected.set()
            if r.fatal:
                conn.fatal = err
        base_ms = conn.base // BYTES_PER_MS
        for out in r.outputs:
            if getattr(out, "elapsed_ms", None) is not None:
                out = dataclasses.replace(out, elapsed_ms=base_ms + out.elapsed_ms)  # type: ignore[arg-type]
            self._queue.put_nowait(out)

    # --- supervising ----------------------------------------------------------------------------

    async def _supervise(self, conn: _Connection) -> None:
        try:
            while True:
                rotated = not await _wait_any(conn.done, timeout=self._rotation_delay(conn))
                if rotated and not self._closing:
                    conn = await self._rotate(conn)
                    continue
                if rotated:  # closing: the drain decides when to stop
                    await conn.done.wait()
                if conn.fatal is not None:
                    raise SessionFatal(f"{self._where()}: {conn.fatal.message} ({conn.fatal.code})")
                if self._closing and (conn.closed.is_set() or self._ack >= self._sent):
                    return
                conn = await self._reconnect(conn)
        except (SessionFatal, SessionUnavailable) as e:
            self._fail(e)

    async def _reconnect(self, old: _Connection) -> _Connection:
        dropped_at = time.monotonic()
        self.stats.drops += 1
        log.warning(
            "%s: connection lost (close code %s); reconnecting, %.0f ms to replay",
            self.name, old.close_code, (self._sent - self._ack) / BYTES_PER_MS,
        )
        limit = self.settings.reconnect.max_attempts
        attempt = 0
        while True:
            attempt += 1
            if limit is not None and attempt > limit:
                raise SessionUnavailable(f"gave up on {self._where()} after {limit} attempts")
            # A server that said "going away" (1001) expects us back at once; anything else backs off.
            if not (attempt == 1 and old.close_code == 1001):
                await asyncio.sleep(self._backoff.next_delay())
            try:
                conn = await self._connect()
                await self._install(conn, replay=True)
            except SessionFatal:
                raise
            except _RETRYABLE as e:
                log.info("%s: reconnect failed: %s", self.name, _describe(e))
                continue
            self._backoff.reset()
            gap = time.monotonic() - dropped_at
            self.stats.reconnect_gaps_s.append(gap)
            log.info("%s: reconnected after %.0f ms", self.name, gap * 1000)
            return conn

    async def _rotate(self, old: _Connection) -> _Connection:
        """Open the next session before the old one expires, then hand over between two chunks."""
        try:
            new = await self._connect()
        except (SessionFatal, *_RETRYABLE) as e:
            log.warning("%s: could not open the next session yet (%s); retrying", self.name, _describe(e))
            old.expires_at = time.time() + self.settings.session.rotate_before_s / 2
            return old
        if self._closing:  # close() began while the next session was opening: the old one finishes
            await self._discard(new)
            return old
        await self._install(new, replay=False)  # under the send lock: lands on a chunk boundary
        self.stats.rotations += 1
        task = asyncio.create_task(self._retire(old), name=f"{self.name}-retire")
        self._retiring.add(task)
        task.add_done_callback(self._retiring.discard)
        log.info("%s: rotated to a new session at %.0f ms", self.name, new.base / BYTES_PER_MS)
        return new

    async def _retire(self, conn: _Connection) -> None:
        """Let a replaced session translate what it still holds, then close it."""
        timeout = self.settings.session.close_timeout_s
        with contextlib.suppress(Exception):
            close = conn.protocol.close()
            if close is not None:
                await conn.ws.send(close)
                await _wait_any(conn.closed, conn.done, timeout=timeout)
            else:
                end = self._sent
                deadline = time.monotonic() + timeout
                while self._ack < end and not conn.done.is_set() and time.monotonic() < deadline:
                    await _wait_any(conn.done, timeout=0.1)
        await self._discard(conn)

    async def _drain(self) -> None:
        """Closing: ask the live session to finish; if the socket drops meanwhile, the supervisor
        reconnects and replays, and we ask the new one."""
        assert self._supervisor is not None
        while not self._supervisor.done():
            if not await _wait_any(self._live_event, timeout=0.05):
                continue
            conn = self._live
            if conn is None:
                continue
            close = conn.protocol.close()
            if close is not None:
                with contextlib.suppress(ConnectionClosed):
                    await conn.ws.send(close)
                await _wait_any(conn.closed, conn.done)
                if conn.closed.is_set():
                    return
            else:
                while self._ack < self._sent and not conn.done.is_set():
                    await _wait_any(conn.done, timeout=0.05)
                if not conn.done.is_set():
                    return
            await _wait_any(conn.done)

    def _fail(self, e: BaseException) -> None:
        log.error("%s: %s", self.name, e)
        self._failure = e
        self._queue.put_nowait(SessionError(None, str(e), fatal=True))
        self._queue.put_nowait(_END)
        self._ended = True

    async def _shutdown(self) -> None:
        self._closing = True
        tasks = [t for t in (self._supervisor, *self._retiring) if t is not None]
        for t in tasks:
            t.cancel()
        for t in tasks:
            with contextlib.suppress(BaseException):
                await t
        conn, self._live = self._live, None
        if conn is not None:
            await self._discard(conn)
        if not self._ended:
            self._ended = True
            self._queue.put_nowait(_END)


def _describe(e: BaseException) -> str:
    if isinstance(e, InvalidStatus):
        return f"HTTP {e.response.status_code}"
    return str(e) or type(e).__name__
