"""`Speaker`: one talking member, fed on a clock into their own translation session.

Discord sends a member's audio only while they talk; the translation model's clock is the audio it
receives, so a gap in sending is not a pause to it. The speaker therefore forwards speech frames as
they arrive and, whenever the member is silent, pads with silence so that audio time sent keeps up
with wall time. The session is opened lazily on the first frame (frames are held meanwhile) and
closed gracefully after `session.idle_timeout_s` of silence; the next word opens a new one.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

from bot.pipeline.service import CapReached
from bot.realtime.outputs import SessionError, SessionOutput
from bot.realtime.session import SessionFatal, SessionUnavailable, TranslationSession

log = logging.getLogger("parley.pipeline")

FRAME_MS = 20
SILENCE = bytes(960)  # 20 ms of 24 kHz pcm16
SPEECH_GAP_S = 0.2  # no frame for this long while "speaking" = the member stopped
RETRY_AFTER_FAILURE_S = 30.0
_CLOSE = object()

OpenSession = Callable[[int, str], Awaitable[TranslationSession]]
OnOutput = Callable[[int, SessionOutput], None]
OnClosed = Callable[[int, TranslationSession], Awaitable[None]]


class Speaker:
    def __init__(
        self,
        user_id: int,
        language_of: Callable[[int], Awaitable[str]],
        open_session: OpenSession,
        on_output: OnOutput,
        on_closed: OnClosed,
        idle_timeout_s: float,
    ) -> None:
        self.user_id = user_id
        self.language: str | None = None
        self._language_of = language_of
        self._open_session = open_session
        self._on_output = on_output
        self._on_closed = on_closed
        self._idle_timeout_s = idle_timeout_s
        self._queue: asyncio.Queue[object] = asyncio.Queue()
        self.session: TranslationSession | None = None
        self.speaking = False
        self.frames_in = 0
        self.frames_refused = 0  # speech that arrived while no session could be opened
        self.silence_ms_sent = 0
        self._retry_at = 0.0
        self._aborting = False
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=f"speaker-{self.user_id}")

    def feed(self, pcm: bytes, end: bool = False) -> None:
        """A 20 ms frame from the receiver (or the end of the member's talk spurt). Never blocks."""
        self._queue.put_nowait((pcm, end))

    async def set_language(self, language: str) -> None:
        self.language = language
        if self.session is not None:
            await self.session.set_language(language)

    async def close(self, flush: bool = True) -> None:
        """Stop; with flush=False nothing more is sent upstream (opt-out)."""
        if self._task is None:
            return
        if flush:
            self._queue.put_nowait(_CLOSE)
            with contextlib.suppress(Exception):
                await asyncio.wait_for(asyncio.shield(self._task), timeout=30)
        self._aborting = not flush or not self._task.done()
        self._task.cancel()
        with contextlib.suppress(BaseException):
            await self._task

    # --- the clocked loop -----------------------------------------------------------------------

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            item = await self._queue.get()  # idle: wait for the member to speak
            if item is _CLOSE:
                return
            pcm, end = item  # type: ignore[misc]
            if end:
                continue
            self.frames_in += 1
            if loop.time() < self._retry_at:
                self.frames_refused += 1
                continue
            session = await self._open()
            if session is None:
                self.frames_refused += 1
                continue
            self.session = session
            outputs = asyncio.create_task(self._forward(session))
            try:
                stop = await self._stream(session, first=pcm)
            finally:
                self.session = None
                await self._finish(session, outputs)
            if stop:
                return

    async def _open(self) -> TranslationSession | None:
        if self.language is None:
            self.language = await self._language_of(self.user_id)
        try:
            return await self._open_session(self.user_id, self.language)
        except CapReached:
            return None  # not an error: the member is translated once a session frees up
        except (SessionFatal, SessionUnavailable) as e:
            log.error("speaker %s: cannot open a session: %s", self.user_id, e)
            self._on_output(self.user_id, SessionError(None, str(e), fatal=True))
            self._retry_at = asyncio.get_running_loop().time() + RETRY_AFTER_FAILURE_S
            return None

    async def _stream(self, session: TranslationSession, first: bytes) -> bool:
        """Feed one session until the member has been silent for the idle timeout. True = stop."""
        loop = asyncio.get_running_loop()
        try:
            t0 = loop.time()
            sent_ms = 0
            await session.send_audio(first)
            sent_ms += FRAME_MS
            last_speech = loop.time()
            self.speaking = True
            while True:
                # the next 20 ms boundary of the session's clock (early frames never push it ahead)
                tick = t0 + (int((loop.time() - t0) * 1000) // FRAME_MS + 1) * FRAME_MS / 1000
                try:
                    item = await asyncio.wait_for(self._queue.get(), timeout=max(0.0, tick - loop.time()))
                except TimeoutError:
                    item = None
                while item is not None:
                    if item is _CLOSE:
                        return True
                    pcm, end = item  # type: ignore[misc]
                    if end:
                        self.speaking = False
                    else:
                        self.frames_in += 1
                        await session.send_audio(pcm)
                        sent_ms += FRAME_MS
                        last_speech = loop.time()
                        self.speaking = True
                    item = self._queue.get_nowait() if not self._queue.empty() else None
                now = loop.time()
                if self.speaking and now - last_speech > SPEECH_GAP_S:
                    self.speaking = False
                if not self.speaking:
                    behind = int((now - t0) * 1000) - sent_ms
                    if behind >= FRAME_MS:
                        n = behind // FRAME_MS
                        await session.send_audio(SILENCE * n)
                        sent_ms += n * FRAME_MS
                        self.silence_ms_sent += n * FRAME_MS
                    if now - last_speech >= self._idle_timeout_s:
                        return False
        except (SessionFatal, SessionUnavailable) as e:
            log.error("speaker %s: session failed: %s", self.user_id, e)
            self._retry_at = loop.time() + RETRY_AFTER_FAILURE_S
            return False
        finally:
            self.speaking = False

    async def _forward(self, session: TranslationSession) -> None:
        async for out in session.outputs():
            self._on_output(self.user_id, out)

    async def _finish(self, session: TranslationSession, outputs: asyncio.Task[None]) -> None:
        """Close gracefully (the last words get translated) unless aborting (an opt-out: nothing more
        may go upstream), deliver what remains, account the cost."""
        with contextlib.suppress(Exception):
            if self._aborting:
                await session.abort()
            else:
                await session.close()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(outputs, timeout=5)
        await self._on_closed(self.user_id, session)
