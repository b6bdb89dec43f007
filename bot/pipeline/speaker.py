"""`Speaker`: one talking member, fed on a clock into their own translation session.

Discord sends a member's audio only while they talk; the translation model's clock is the audio it
receives, so a gap in sending is not a pause to it. The speaker therefore forwards speech frames as
they arrive and, whenever the member is silent, pads with silence so that audio time sent keeps up
with wall time. The session is opened lazily on the first frame (frames are held meanwhile, in a
bounded queue that drops the oldest) and closed gracefully after `session.idle_timeout_s` of silence;
the next word opens a new one.

Ownership: the `Room` owns the speaker's task (`run`) and awaits it; the speaker owns its session
*lease* (`async with lease(user_id, language) as session`), which holds the `caps.max_sessions` slot
and records the session's cost in its own `finally`, whatever ends it (idle close, opt-out, cancel,
error). The speaker's own `finally` only tallies what the member's sessions cost, for the status.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager

from bot import latency
from bot.pipeline.same_language import same_language
from bot.pipeline.service import CapReached, LanguageRefused, PipelineError
from bot.realtime.outputs import SessionError, SessionOutput, TranslatedAudio
from bot.realtime.session import SessionFatal, SessionUnavailable, TranslationSession

log = logging.getLogger("parley.pipeline")

DISCORD_FRAME_MS = 20
SILENT_FRAME = bytes(960)  # one Discord frame (20 ms) of 24 kHz pcm16 silence
SPEECH_GAP_S = 0.2  # no frame for this long while "speaking" = the member stopped
RETRY_AFTER_FAILURE_S = 30.0
MAX_QUEUED_FRAMES = 250  # 5 s of audio held while a session opens; beyond that the oldest frames go
_CLOSE = object()

Lease = Callable[[int, str], AbstractAsyncContextManager[TranslationSession]]
OnOutput = Callable[[int, SessionOutput], None]
StopReason = Callable[[], str | None]


class Speaker:
    def __init__(
        self,
        user_id: int,
        language_of: Callable[[int], Awaitable[str]],
        lease: Lease,
        on_output: OnOutput,
        idle_timeout_s: float,
        *,
        stop_reason: StopReason = lambda: None,
        max_queued_frames: int = MAX_QUEUED_FRAMES,
        speaks_of: Callable[[int], Awaitable[str | None]] | None = None,
    ) -> None:
        self.user_id = user_id
        self.language: str | None = None
        self._language_of = language_of
        self._speaks_of = speaks_of
        self._speaks_known = speaks_of is None
        self.speaks: str | None = None  # the language the member says they speak
        # Why their speech is not translated: it is already in their target language (no session, no cost).
        self.same_language: str | None = None
        self.frames_same_language = 0
        self._lease = lease
        self._on_output = on_output
        self._stop_reason = stop_reason  # checked on every tick while streaming (e.g. the daily budget)
        self._idle_timeout_s = idle_timeout_s
        self._queue: asyncio.Queue[object] = asyncio.Queue(maxsize=max_queued_frames)
        self.session: TranslationSession | None = None
        self.speaking = False
        self._speech_ended_at: float | None = None  # the member stopped talking; no translated audio yet
        self.frames_in = 0
        self.frames_refused = 0  # speech that arrived while no session could be opened
        self.frames_dropped = 0  # the queue was full: the oldest frames were dropped
        self.silence_ms_sent = 0
        self.sessions_opened = 0
        self.seconds_closed = 0.0  # audio time of this member's closed sessions
        self.usd_closed = 0.0
        self.problem: str | None = None  # why this member is not translated right now (shown in status)
        self.language_refused = False  # the backend cannot serve self.language: no retry until it changes
        self.aborting = False  # opt-out: nothing more may go upstream, no graceful close
        self._retry_at = 0.0

    # --- what the room calls --------------------------------------------------------------------

    def feed(self, pcm: bytes, end: bool = False, at: float = 0.0) -> None:
        """A 20 ms frame from the receiver (or the end of the member's talk spurt). Never blocks."""
        self._put((pcm, end, at))

    def stop(self) -> None:
        """Finish gracefully: the current session is closed with its last words, then `run` returns."""
        self._put(_CLOSE)

    async def set_language(self, language: str) -> None:
        """Switch the live session too; if the backend does not take it, nothing changes (PipelineError)."""
        previous, refused, problem = self.language, self.language_refused, self.problem
        self.language = language
        self.recheck_language()
        if self.language_refused:
            self.language_refused, self.problem = False, None
        if self.session is not None:
            try:
                await self.session.set_language(language)
            except (SessionFatal, SessionUnavailable) as e:  # LanguageRejected is a SessionFatal
                self.language, self.language_refused, self.problem = previous, refused, problem
                raise PipelineError(f"The translation backend did not take `{language}`: {e}") from None

    def recheck_language(self) -> None:
        """Their target or spoken language changed: whether their speech needs translating is asked again."""
        self.same_language = None
        self._speaks_known = self._speaks_of is None

    def _put(self, item: object) -> None:
        while True:
            try:
                self._queue.put_nowait(item)
                return
            except asyncio.QueueFull:
                old = self._queue.get_nowait()
                if old is _CLOSE:  # a stop is pending: it is never lost, and nothing after it matters
                    self._queue.put_nowait(_CLOSE)
                    if item is not _CLOSE:
                        self.frames_dropped += 1
                    return
                self.frames_dropped += 1

    @property
    def queued(self) -> int:
        return self._queue.qsize()

    # --- the clocked loop (the room's supervisor awaits this) -----------------------------------

    async def run(self) -> None:
        """Serve the member until stopped. Exceptions other than session failures propagate to the room."""
        loop = asyncio.get_running_loop()
        while True:
            item = await self._queue.get()  # idle: wait for the member to speak
            if item is _CLOSE:
                return
            pcm, end, at = item  # type: ignore[misc]
            if end:
                continue
            self.frames_in += 1
            if self.language_refused or loop.time() < self._retry_at:
                self.frames_refused += 1
                continue
            if self.language is None:
                self.language = await self._language_of(self.user_id)
            if not self._speaks_known and self._speaks_of is not None:
                self.speaks = await self._speaks_of(self.user_id)
                self._speaks_known = True
                if same_language(self.speaks, self.language):
                    self.same_language = f"speaks {self.speaks}, hears {self.language}"
            if self.same_language is not None:  # already in their language: nothing to pay for
                self.frames_same_language += 1
                continue
            try:
                async with self._lease(self.user_id, self.language) as session:
                    self.sessions_opened += 1
                    self.problem = None
                    if await self._serve(session, pcm, at):
                        return
            except CapReached as e:  # not an error: translated again once a slot or the budget frees up
                self.frames_refused += 1
                self._refused(str(e), logging.WARNING)
            except LanguageRefused as e:
                self.frames_refused += 1
                self.language_refused = True
                self._refused(str(e), logging.WARNING)
            except (SessionFatal, SessionUnavailable) as e:
                self.frames_refused += 1
                self._refused(str(e), logging.ERROR)
                self._on_output(self.user_id, SessionError(None, str(e), fatal=True))
                self._retry_at = loop.time() + RETRY_AFTER_FAILURE_S

    def _refused(self, reason: str, level: int) -> None:
        """Logged once per member and reason, not once per frame."""
        if reason != self.problem:
            log.log(level, "speaker %s: not translated: %s", self.user_id, reason)
        self.problem = reason

    async def _serve(self, session: TranslationSession, first: bytes, first_at: float = 0.0) -> bool:
        """Stream one session, then close it (gracefully unless aborting). True = stop the speaker."""
        self.session = session
        forward = asyncio.create_task(self._forward(session), name=f"speaker-{self.user_id}-outputs")
        try:
            stop = await self._stream(session, first, first_at)
            if self.aborting:
                await session.abort()
            else:
                await session.close()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(forward), timeout=5)
            return stop
        finally:
            self.session = None
            self.speaking = False
            self._speech_ended_at = None  # no audio came for it in this session: the next one measures afresh
            self.seconds_closed += session.cost.audio_ms / 1000
            self.usd_closed += session.cost.dollars
            forward.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await forward

    async def _stream(self, session: TranslationSession, first: bytes, first_at: float = 0.0) -> bool:
        """Feed one session until the member has been silent for the idle timeout. True = stop."""
        loop = asyncio.get_running_loop()
        try:
            t0 = loop.time()
            sent_ms = 0
            await session.send_audio(first, first_at)
            sent_ms += DISCORD_FRAME_MS
            last_speech = loop.time()
            self.speaking = True
            while True:
                reason = self._stop_reason()
                if reason is not None:  # e.g. today's budget is spent: close now, with the last words
                    self._refused(reason, logging.WARNING)
                    return False
                if self.same_language is not None:  # seen in their transcript: stop paying for it
                    return False
                # the next 20 ms boundary of the session's clock (early frames never push it ahead)
                tick = t0 + (int((loop.time() - t0) * 1000) // DISCORD_FRAME_MS + 1) * DISCORD_FRAME_MS / 1000
                try:
                    item = await asyncio.wait_for(self._queue.get(), timeout=max(0.0, tick - loop.time()))
                except TimeoutError:
                    item = None
                while item is not None:
                    if item is _CLOSE:
                        return True
                    pcm, end, at = item  # type: ignore[misc]
                    if end:
                        self.speaking = False
                        self._speech_ended_at = latency.now()
                    else:
                        self.frames_in += 1
                        await session.send_audio(pcm, at)
                        sent_ms += DISCORD_FRAME_MS
                        last_speech = loop.time()
                        self.speaking = True
                    item = self._queue.get_nowait() if not self._queue.empty() else None
                now = loop.time()
                if self.speaking and now - last_speech > SPEECH_GAP_S:
                    self.speaking = False
                if not self.speaking:
                    behind = int((now - t0) * 1000) - sent_ms
                    if behind >= DISCORD_FRAME_MS:
                        n = behind // DISCORD_FRAME_MS
                        await session.send_audio(SILENT_FRAME * n)
                        sent_ms += n * DISCORD_FRAME_MS
                        self.silence_ms_sent += n * DISCORD_FRAME_MS
                    if now - last_speech >= self._idle_timeout_s:
                        return False
        except (SessionFatal, SessionUnavailable) as e:
            self._refused(f"the session failed: {e}", logging.ERROR)
            self._retry_at = loop.time() + RETRY_AFTER_FAILURE_S
            return False
        finally:
            self.speaking = False

    async def _forward(self, session: TranslationSession) -> None:
        async for out in session.outputs():
            if self._speech_ended_at is not None and isinstance(out, TranslatedAudio):
                latency.SPEECH_END_TO_AUDIO.observe(latency.now() - self._speech_ended_at)
                self._speech_ended_at = None
            self._on_output(self.user_id, out)
