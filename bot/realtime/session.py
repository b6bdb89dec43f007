"""`TranslationSession`: one speaker's realtime translation session over a websocket, any backend.

The session hides the socket's life from its user: audio goes in with `send_audio`, typed outputs come
out of `outputs()`, and in between the session

- keeps every chunk it sent until the server has answered for it (`ReplayBuffer`), so when the socket
  drops it reconnects with backoff, re-sends the configuration and replays from the acknowledged
  point: nothing the speaker said is lost, and little is sent twice;
- rotates before the server's `expires_at` (or the 60-minute cap): the next session is opened and
  configured first, then takes over between two chunks, and the old one is closed gracefully;
- surfaces `error` events, stops on fatal ones (bad key, unknown model), backs off on rate limits;
- changes the target language only when the server confirms it (`LanguageRejected` otherwise);
- meters audio time sent, for cost.

Ownership: the session owns every socket it opens (`open_sockets`). `_connect` closes its socket on any
way out but success; whoever then holds the connection (`open`, the supervisor, a rotation's retire task)
closes it in its own `finally`, so close, abort, cancellation and errors all release it; `_shutdown`, the
`finally` of `close()`/`abort()`, stops the tasks and sweeps up anything left (logged: that would be a bug).
The session's life is one `SessionPhase` (not bot.localrt's server-side `SessionState`), each socket's
one `ConnState`.

The GA realtime protocol answers only speech (server VAD), never the silence the speaker's clock pads
with. Digital silence sent while nothing is pending (no turn open, every sound already answered) counts
as answered at once: a close with nothing pending finishes immediately, and a reconnect replays only the
unanswered audio from the first sound on, never idle silence.

Chunks are whole multiples of 20 ms (`audio.chunk_ms`), so a take-over always lands on a frame boundary.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import enum
import json
import logging
import time
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import urlencode, urlsplit, urlunsplit

import websockets
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus

from bot import latency
from bot.logsafe import redacting_logger
from bot.realtime.backoff import Backoff
from bot.realtime.cost import CostMeter
from bot.realtime.options import Endpoint, RealtimeOptions, SessionOptions
from bot.realtime.outputs import SessionError, SessionOutput, TranslatedAudio
from bot.realtime.protocol import RealtimeProtocol, TranslationProtocol, WireProtocol
from bot.realtime.replay_buffer import BYTES_PER_MS, ReplayBuffer

log = logging.getLogger("parley.realtime")
_WS_LOG = redacting_logger("parley.realtime.websocket")
_END = object()
_FATAL_HTTP = {401: "the API key was refused", 403: "access is forbidden", 404: "no such endpoint or model"}
_RETRYABLE = (OSError, TimeoutError, InvalidHandshake, ConnectionClosed)
_LANGUAGE_CODES = frozenset({"unsupported_language", "invalid_language"})


class SessionFatal(Exception):
    """Retrying cannot help (bad key, unknown model, unsupported language): the operator must act."""


class LanguageRejected(SessionFatal):
    """The server refused a target language (its code, e.g. `unsupported_language`, is in the message).

    Raised by `open()` (the session never started) and by `set_language()` (the session goes on in its
    previous language)."""

    def __init__(self, message: str, code: str | None = None) -> None:
        super().__init__(message)
        self.code = code


class SessionUnavailable(Exception):
    """The backend could not be reached within the allowed attempts."""


class SessionPhase(enum.Enum):
    """Where a session is in its life; every step only moves forward (`LIVE` ⇄ `RECONNECTING` aside)."""

    NEW = "new"  # constructed, `open()` not called or not finished
    LIVE = "live"  # a configured socket carries the audio
    RECONNECTING = "reconnecting"  # the socket dropped; audio is kept for replay while a new one is opened
    CLOSING = "closing"  # `close()`/`abort()` began: no more audio is accepted
    CLOSED = "closed"  # ended normally: outputs are finished, every socket is closed
    FAILED = "failed"  # gave up (`failure` says why): outputs are finished, every socket is closed


_ENDED = frozenset({SessionPhase.CLOSED, SessionPhase.FAILED})


class ConnState(enum.IntEnum):
    """One socket's life, in order; a connection only moves forward."""

    CONNECTING = 0  # the socket is open, waiting for `session.created`
    CREATED = 1  # `session.created` arrived; being configured
    READY = 2  # the configuration was applied (`session.updated`)
    CLOSED = 3  # the server said `session.closed`: everything was answered (end)
    DOWN = 4  # the socket dropped or its reader stopped without `session.closed` (end)


@dataclasses.dataclass
class SessionStats:
    connects: int = 0
    drops: int = 0
    rotations: int = 0
    unknown_events: int = 0
    malformed_events: int = 0
    errors: int = 0
    reader_errors: int = 0  # readers that died of something other than a closed socket
    sockets_opened: int = 0
    sockets_closed: int = 0
    reconnect_gaps_s: list[float] = dataclasses.field(default_factory=list)


class _Connection:
    """One websocket = one server-side session; `base` maps its audio clock onto the speaker's stream."""

    def __init__(self, ws: Any, protocol: WireProtocol) -> None:
        self.ws = ws
        self.protocol = protocol
        self.base = 0  # stream byte offset of this server session's audio time 0
        self.expires_at: float | None = None
        self.opened_at = time.time()
        self.state = ConnState.CONNECTING
        self._changed = asyncio.Event()
        self.language: str | None = None  # what the server confirmed for this socket
        self.update: tuple[str | None, asyncio.Future[SessionError | None]] | None = None  # pending session.update
        self.rate_limited = False
        self.fatal: SessionError | None = None
        self.reader: asyncio.Task[None] | None = None
        self.released = False

    @property
    def close_code(self) -> int | None:
        return getattr(self.ws, "close_code", None)

    @property
    def ended(self) -> bool:
        return self.state >= ConnState.CLOSED

    def advance(self, state: ConnState) -> None:
        if state > self.state:
            self.state = state
            self._changed.set()
            self._changed = asyncio.Event()

    async def wait_for(self, state: ConnState, timeout: float | None = None) -> bool:
        """Wait until the connection has reached `state` (or ended); False on timeout."""
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        while self.state < state and not self.ended:
            remaining = None if deadline is None else deadline - loop.time()
            if remaining is not None and remaining <= 0:
                return False
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), remaining)
        return True


async def _wait_any(*events: asyncio.Event, timeout: float | None = None) -> bool:
    """Wait until any event is set; False on timeout."""
    waiters = [asyncio.ensure_future(e.wait()) for e in events]
    try:
        done, _ = await asyncio.wait(waiters, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        return bool(done)
    finally:
        for w in waiters:
            w.cancel()


def _is_silent(chunk: bytes) -> bool:
    """Digital silence, as the speaker's clock pads it (and Opus decodes comfort silence). Anything else,
    however quiet, may be speech: only the server's VAD may call it silence."""
    return chunk.count(0) == len(chunk)


class TranslationSession:
    def __init__(
        self,
        endpoint: Endpoint,
        language: str,
        settings: SessionOptions | None = None,
        *,
        name: str = "session",
        backoff: Backoff | None = None,
        query: dict[str, str] | None = None,
    ) -> None:
        """`query`: extra parameters for the URL of every connect — what bot.localrt is told about the speaker's
        language (`input_language`, `languages`); only for a backend that says it takes them."""
        self.endpoint = endpoint
        self.query = dict(query or {})
        self.language = language
        self.settings: SessionOptions = settings or RealtimeOptions()
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
        self._pending_since = 0.0  # arrival of the earliest audio in _pending (0: none known)
        self._sent = 0  # stream bytes handed to a socket (or buffered for one)
        self._ack = 0  # stream bytes the server has answered for
        self._url = endpoint.url  # where the current (or next) socket connects; a pool chooses per connect
        self._voiced_end = 0  # stream offset where the last chunk that was not silence ended
        self._phase = SessionPhase.NEW
        self._live: _Connection | None = None
        self._live_event = asyncio.Event()  # mirrors `_live is not None`, for waiting
        self._conns: set[_Connection] = set()  # every socket this session opened and has not closed yet
        self._lock = asyncio.Lock()  # the send order: chunks, replays and take-overs never interleave
        self._update_lock = asyncio.Lock()  # one language change at a time
        self._queue: asyncio.Queue[Any] = asyncio.Queue()
        self._supervisor: asyncio.Task[None] | None = None
        self._retiring: set[asyncio.Task[None]] = set()
        self._failure: BaseException | None = None

    # --- public surface -------------------------------------------------------------------------

    @property
    def phase(self) -> SessionPhase:
        return self._phase

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

    @property
    def open_sockets(self) -> int:
        return len(self._conns)

    async def open(self) -> None:
        """Connect and configure; raises SessionFatal (LanguageRejected) or SessionUnavailable."""
        attempts = self.settings.reconnect.open_attempts
        for attempt in range(1, attempts + 1):
            try:
                conn = await self._connect()
                try:
                    await self._install(conn, replay=False)
                except BaseException:  # failed or cancelled between connect and take-over
                    await self._discard(conn)
                    raise
                break
            except SessionFatal:
                raise
            except _RETRYABLE as e:
                if attempt == attempts:
                    raise SessionUnavailable(f"cannot reach {self._where()}: {_describe(e)}") from None
                await asyncio.sleep(self._backoff.next_delay())
        self._backoff.reset()
        # from here the supervisor owns `conn`: it closes it in its `finally`
        self._supervisor = asyncio.create_task(self._supervise(conn), name=f"{self.name}-supervisor")

    async def send_audio(self, pcm16: bytes, arrived_at: float = 0.0) -> None:
        """Append 24 kHz mono pcm16. Sent in whole chunks; buffered (bounded) while reconnecting.

        ``arrived_at``: when this audio reached Parley (`bot.latency`'s clock; 0 = unknown, e.g. padding), so
        the delay until its chunk is on the websocket is measured from the chunk's earliest arrival."""
        if self._failure is not None:
            raise self._failure
        if self._phase in (SessionPhase.CLOSING, SessionPhase.CLOSED):
            raise RuntimeError(f"{self.name}: send_audio after close()")
        if len(pcm16) & 1:
            raise ValueError("pcm16 audio must be a whole number of 16-bit samples")
        if arrived_at and not self._pending_since:
            self._pending_since = arrived_at
        self._pending += pcm16
        while len(self._pending) >= self._chunk_bytes:
            chunk = bytes(self._pending[: self._chunk_bytes])
            del self._pending[: self._chunk_bytes]
            since, self._pending_since = self._pending_since, (arrived_at if self._pending else 0.0)
            await self._send_chunk(chunk, since)

    async def set_language(self, language: str) -> None:
        """Change the target language live and wait for the server to apply it.

        Raises LanguageRejected (with the server's code) when the server refuses it: the session goes on in
        its previous language. Raises SessionUnavailable when no live server session confirmed it within
        `session.connect_timeout_s` (the previous language stays too). Later reconnects and rotations keep
        the language confirmed last. On a session that has ended this only records the language.
        """
        if self._phase in (SessionPhase.NEW, SessionPhase.CLOSING, *_ENDED):
            self.language = language  # not running: `open()` configures (and checks) it
            return
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.settings.session.connect_timeout_s
        async with self._update_lock:
            while True:
                conn = self._live
                if conn is None:
                    if self._phase in _ENDED or not await _wait_any(
                        self._live_event, timeout=max(0.0, deadline - loop.time())
                    ):
                        break
                    continue
                if conn.language == language:
                    self.language = language
                    return
                try:
                    err = await self._configure(conn, language, max(0.0, deadline - loop.time()))
                except (ConnectionError, ConnectionClosed):
                    if loop.time() >= deadline:
                        break
                    continue  # this socket went away first: apply it on the next one
                if err is not None and err.fatal:  # e.g. the quota ran out: the whole session ends
                    raise SessionFatal(f"{self._where()}: {err.message} ({err.code})")
                if err is not None:
                    raise LanguageRejected(
                        f"{self._where()} refused target language {language!r}: {err.message} ({err.code})",
                        err.code,
                    )
                self.language = language
                live = self._live
                if live is None or live.language == language:
                    return
                # a rotation or reconnect took over meanwhile with the previous language: apply it there too
        if self._phase in _ENDED:
            self.language = language
            return
        raise SessionUnavailable(
            f"{self.name}: the server did not confirm target language {language!r} within "
            f"{self.settings.session.connect_timeout_s:g} s; still translating into {self.language!r}"
        )

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
        if self._phase is SessionPhase.CLOSED:
            return
        if self._phase is SessionPhase.FAILED:  # nothing to flush; still stop what is left
            await self._shutdown()
            return
        try:
            if self._pending and self._failure is None and self._phase is not SessionPhase.CLOSING:
                chunk = bytes(self._pending)
                self._pending.clear()
                await self._send_chunk(chunk)
            self._to_closing()
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

    # --- state ----------------------------------------------------------------------------------

    def _to_closing(self) -> None:
        if self._phase not in _ENDED:
            self._phase = SessionPhase.CLOSING

    def _set_live(self, conn: _Connection | None) -> None:
        self._live = conn
        if conn is not None:
            self._live_event.set()
            if self._phase in (SessionPhase.NEW, SessionPhase.RECONNECTING):
                self._phase = SessionPhase.LIVE
        else:
            self._live_event.clear()
            if self._phase is SessionPhase.LIVE:
                self._phase = SessionPhase.RECONNECTING

    def _mark_down(self, conn: _Connection) -> None:
        if self._live is conn:
            self._set_live(None)

    # --- sending --------------------------------------------------------------------------------

    async def _send_chunk(self, chunk: bytes, since: float = 0.0) -> None:
        async with self._lock:
            silent = _is_silent(chunk)
            self._replay.append(chunk)
            self._sent += len(chunk)
            if not silent:
                self._voiced_end = self._sent
            elif self._idle():
                # Idle silence on a protocol that only answers speech: no turn will ever cover it, so it
                # counts as answered now (a close does not wait for it, a reconnect does not replay it).
                self._advance_ack(self._sent)
            conn = self._live
            if conn is None:
                return  # kept in the replay buffer; sent when the socket is back
            try:
                await conn.ws.send(conn.protocol.append(chunk))
                self.cost.add_audio(len(chunk))
                if since:
                    latency.PACKET_TO_WEBSOCKET.observe(latency.now() - since)
            except ConnectionClosed:
                self._mark_down(conn)

    def _idle(self) -> bool:
        """Nothing is pending on a protocol that does not answer silence: every sound was answered for
        and no turn is open (speech_started … response.done)."""
        conn = self._live
        protocol = conn.protocol if conn is not None else None
        if protocol is not None and (protocol.acks_silence or protocol.in_turn):
            return False
        if protocol is None and self.endpoint.protocol != "realtime":
            return False
        return self._voiced_end <= self._ack

    def _advance_ack(self, ack: int) -> None:
        if ack > self._ack:
            self._ack = ack
            self._replay.ack(ack)

    async def _install(self, conn: _Connection, replay: bool) -> None:
        """Make `conn` the live connection; after a drop, first replay what was not acknowledged."""
        async with self._lock:
            start, data = self._replay.since(self._ack) if replay else (self._sent, b"")
            conn.base = start
            if conn.language != self.language:  # confirmed elsewhere while this one was being configured
                await conn.ws.send(conn.protocol.session_update(self.language))
                conn.language = self.language
            for i in range(0, len(data), self._chunk_bytes):
                part = data[i : i + self._chunk_bytes]
                await conn.ws.send(conn.protocol.append(part))
                self.cost.add_audio(len(part), replay=True)
            if conn.ended:
                raise ConnectionError("the connection dropped while it was being installed")
            self._set_live(conn)
        if data:
            log.info("%s: replayed %.0f ms of audio after reconnect", self.name, len(data) / BYTES_PER_MS)

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
        parts = urlsplit(self._url)
        return f"{parts.scheme}://{parts.netloc}{parts.path}"

    async def _connect(self) -> _Connection:
        """Open a socket, wait for `session.created`, configure, wait for the configuration to apply.

        The socket is closed here on every way out but success; on success the caller owns it."""
        headers = {}
        if self.endpoint.api_key is not None:
            headers["Authorization"] = f"Bearer {self.endpoint.api_key.get_secret_value()}"
        timeout = self.settings.session.connect_timeout_s
        if self.endpoint.pool is not None:  # a pool of workers: the least-loaded healthy one, asked each time
            self._url = await self.endpoint.pool.pick()
        try:
            ws = await websockets.connect(  # closes its own socket when cancelled or refused
                _with_query(self._url, self.query),
                additional_headers=headers,
                open_timeout=timeout,
                close_timeout=min(2.0, self.settings.session.close_timeout_s),
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
        self._conns.add(conn)
        self.stats.sockets_opened += 1
        try:
            conn.reader = asyncio.create_task(self._read(conn), name=f"{self.name}-reader")
            if not await conn.wait_for(ConnState.CREATED, timeout=timeout) or conn.ended:
                raise ConnectionError("no session.created from the server")
            err = await self._configure(conn, self.language, timeout)
            if err is not None:
                if conn.rate_limited:
                    raise ConnectionError("rate limited by the server")
                message = f"{self._where()} rejected the session: {err.message} ({err.code})"
                if err.code in _LANGUAGE_CODES:
                    raise LanguageRejected(message, err.code)
                raise SessionFatal(message)
        except BaseException:
            await self._discard(conn)
            raise
        self.stats.connects += 1
        self._schedule_rotation(conn)
        return conn

    async def _configure(self, conn: _Connection, language: str, timeout: float) -> SessionError | None:
        """Send `session.update` for `language` and wait for its answer: None when the server applied it
        (`session.updated`), the error when it refused. ConnectionError when no answer came in time."""
        if conn.update is not None:
            raise RuntimeError("a session.update is already pending on this connection")
        message = conn.protocol.session_update(language)
        event_id = json.loads(message).get("event_id")
        answer: asyncio.Future[SessionError | None] = asyncio.get_running_loop().create_future()
        conn.update = (event_id, answer)
        ended = asyncio.ensure_future(conn.wait_for(ConnState.CLOSED))
        try:
            await conn.ws.send(message)
            await asyncio.wait({answer, ended}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
            if not answer.done():
                why = "the connection dropped" if conn.ended else f"no answer within {timeout:g} s"
                raise ConnectionError(f"the server did not apply the session configuration ({why})")
            err = answer.result()
            if err is None:
                conn.language = language
            return err
        finally:
            conn.update = None
            ended.cancel()
            answer.cancel()

    def _schedule_rotation(self, conn: _Connection) -> None:
        cap = conn.opened_at + self.settings.session.max_duration_s
        conn.expires_at = min(conn.expires_at or cap, cap)

    def _rotation_delay(self, conn: _Connection) -> float:
        assert conn.expires_at is not None
        return max(0.0, conn.expires_at - self.settings.session.rotate_before_s - time.time())

    async def _discard(self, conn: _Connection) -> None:
        """Close a socket and stop its reader; idempotent, and the socket is gone even if this is cancelled."""
        self._mark_down(conn)
        if conn.released:
            return
        conn.released = True
        try:
            await conn.ws.close()
        except asyncio.CancelledError:
            conn.ws.transport.abort()
            raise
        except Exception:
            conn.ws.transport.abort()
        finally:
            self._conns.discard(conn)
            self.stats.sockets_closed += 1
            if conn.reader is not None and conn.reader is not asyncio.current_task():
                conn.reader.cancel()
                await asyncio.wait({conn.reader})

    # --- reading --------------------------------------------------------------------------------

    async def _read(self, conn: _Connection) -> None:
        try:
            async for raw in conn.ws:
                self._handle(conn, raw)
                if conn.fatal is not None:
                    break
        except ConnectionClosed:
            pass
        except Exception:  # a bug or a pathological message: this socket is finished, the supervisor recovers
            self.stats.reader_errors += 1
            log.exception("%s: reading from the server failed; dropping the connection", self.name)
        finally:
            self._mark_down(conn)
            conn.advance(ConnState.DOWN)

    def _handle(self, conn: _Connection, raw: str | bytes) -> None:
        try:
            data = json.loads(raw)
        except (ValueError, RecursionError):  # RecursionError: absurdly nested JSON
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
            conn.advance(ConnState.CREATED)
        if r.ready:
            conn.advance(ConnState.READY)
            if conn.update is not None and not conn.update[1].done():
                conn.update[1].set_result(None)
        if r.closed:
            conn.advance(ConnState.CLOSED)
        if r.ack_ms is not None:
            self._advance_ack(min(conn.base + r.ack_ms * BYTES_PER_MS, self._sent))
            if self._idle():  # every sound answered for: the silence since the turn's end is answered too
                self._advance_ack(self._sent)
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
            if conn.update is not None and not conn.update[1].done():
                about = getattr(r.error, "event_id", None)
                if about is None or about == conn.update[0]:  # an answer to the pending session.update
                    conn.update[1].set_result(err)
            if r.fatal:
                conn.fatal = err
        base_ms = conn.base // BYTES_PER_MS
        for out in r.outputs:
            if isinstance(out, TranslatedAudio):
                elapsed = None if out.elapsed_ms is None else base_ms + out.elapsed_ms
                out = dataclasses.replace(out, elapsed_ms=elapsed, received_at=latency.now())
            elif getattr(out, "elapsed_ms", None) is not None:
                out = dataclasses.replace(out, elapsed_ms=base_ms + out.elapsed_ms)  # type: ignore[arg-type]
            self._queue.put_nowait(out)

    # --- supervising ----------------------------------------------------------------------------

    async def _supervise(self, conn: _Connection) -> None:
        """Owns the live connection: rotates it before expiry, replaces it when it drops, closes it on exit."""
        try:
            while True:
                expired = not await conn.wait_for(ConnState.CLOSED, timeout=self._rotation_delay(conn))
                closing = self._phase is SessionPhase.CLOSING
                if expired and not closing:
                    conn = await self._rotate(conn)
                    continue
                if expired:  # closing: the drain decides when to stop
                    await conn.wait_for(ConnState.CLOSED)
                if conn.fatal is not None:
                    raise SessionFatal(f"{self._where()}: {conn.fatal.message} ({conn.fatal.code})")
                if self._phase is SessionPhase.CLOSING and (
                    conn.state is ConnState.CLOSED or self._ack >= self._sent
                ):
                    return
                conn = await self._reconnect(conn)
        except (SessionFatal, SessionUnavailable) as e:
            self._fail(e)
        finally:
            await self._discard(conn)

    async def _reconnect(self, old: _Connection) -> _Connection:
        dropped_at = time.monotonic()
        self.stats.drops += 1
        log.warning(
            "%s: connection lost (close code %s); reconnecting, %.0f ms to replay",
            self.name, old.close_code, (self._sent - self._ack) / BYTES_PER_MS,
        )
        await self._discard(old)  # whatever stopped its reader, the old socket is closed before the next opens
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
            except SessionFatal:
                raise
            except _RETRYABLE as e:
                log.info("%s: reconnect failed: %s", self.name, _describe(e))
                continue
            try:
                await self._install(conn, replay=True)
            except BaseException as e:
                await self._discard(conn)
                if not isinstance(e, _RETRYABLE):
                    raise
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
        installed = False
        try:
            if self._phase is not SessionPhase.CLOSING:  # else close() began meanwhile: the old one finishes
                await self._install(new, replay=False)  # under the send lock: lands on a chunk boundary
                installed = True
        except _RETRYABLE as e:
            log.warning("%s: the next session dropped while taking over (%s); retrying", self.name, _describe(e))
            old.expires_at = time.time() + self.settings.session.rotate_before_s / 2
        finally:
            if not installed:
                await self._discard(new)
        if not installed:
            return old
        self.stats.rotations += 1
        task = asyncio.create_task(self._retire(old), name=f"{self.name}-retire")
        self._retiring.add(task)
        task.add_done_callback(self._retiring.discard)
        log.info("%s: rotated to a new session at %.0f ms", self.name, new.base / BYTES_PER_MS)
        return new

    async def _retire(self, conn: _Connection) -> None:
        """Let a replaced session translate what it still holds, then close it (also when cancelled)."""
        timeout = self.settings.session.close_timeout_s
        try:
            close = conn.protocol.close()
            if close is not None:
                await conn.ws.send(close)
                await conn.wait_for(ConnState.CLOSED, timeout=timeout)
            else:
                end = self._sent
                deadline = time.monotonic() + timeout
                while self._ack < end and not self._idle() and not conn.ended and time.monotonic() < deadline:
                    await conn.wait_for(ConnState.CLOSED, timeout=0.05)
        except Exception as e:
            log.info("%s: a replaced session could not finish: %s", self.name, _describe(e))
        finally:
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
                await conn.wait_for(ConnState.CLOSED)
                if conn.state is ConnState.CLOSED:
                    return
            else:
                # speech-only acks: done once every sound was answered for (idle silence is acked as sent)
                while self._ack < self._sent and not self._idle() and not conn.ended:
                    await conn.wait_for(ConnState.CLOSED, timeout=0.05)
                if not conn.ended:
                    return
            await conn.wait_for(ConnState.DOWN)

    def _fail(self, e: BaseException) -> None:
        log.error("%s: %s", self.name, e)
        self._failure = e
        self._queue.put_nowait(SessionError(None, str(e), fatal=True))
        self._queue.put_nowait(_END)
        self._phase = SessionPhase.FAILED

    async def _shutdown(self) -> None:
        """The owner's `finally`: stop every task, close every socket, end the outputs — also when cancelled."""
        self._to_closing()
        try:
            tasks = [t for t in (self._supervisor, *self._retiring) if t is not None and not t.done()]
            for t in tasks:
                t.cancel()
            if tasks:
                await asyncio.wait(tasks)
        finally:
            conn = self._live
            if conn is not None:
                await self._discard(conn)
            for leftover in list(self._conns):
                log.error("%s: a socket outlived its owner; closing it", self.name)
                await self._discard(leftover)
            if self._phase is not SessionPhase.FAILED:
                self._phase = SessionPhase.CLOSED
                self._queue.put_nowait(_END)


def _with_query(url: str, extra: dict[str, str]) -> str:
    if not extra:
        return url
    parts = urlsplit(url)
    query = "&".join(q for q in (parts.query, urlencode(extra)) if q)
    return urlunsplit((parts.scheme, parts.netloc, parts.path, query, parts.fragment))


def _describe(e: BaseException) -> str:
    if isinstance(e, InvalidStatus):
        return f"HTTP {e.response.status_code}"
    return str(e) or type(e).__name__
