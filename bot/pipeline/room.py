"""`Room`: one source channel's speakers, routed from the listener's frames to their sessions.

Privacy is enforced here, at the first point a member's audio is attributable to them: frames of a
member who opted out are counted and dropped before any session exists, and opting out mid-sentence
aborts their session without sending another byte.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from bot.pipeline.service import RoomStatus, SpeakerStatus
from bot.pipeline.speaker import OnOutput, OpenSession, Speaker
from bot.realtime.outputs import SessionError, SessionOutput
from bot.realtime.session import TranslationSession

log = logging.getLogger("parley.pipeline")


@dataclass
class _Totals:
    seconds: float = 0.0
    usd: float = 0.0


class Room:
    def __init__(
        self,
        guild_id: int,
        source_channel_id: int,
        output_channel_id: int | None,
        caption_channel_id: int | None,
        *,
        backend: str,
        idle_timeout_s: float,
        open_session: OpenSession,
        language_of: Callable[[int], Awaitable[str]],
        on_output: OnOutput,
        on_spend: Callable[[int, float], Awaitable[None]] | None = None,
        opted_out: set[int] | None = None,
        ignore: Callable[[int], bool] = lambda user_id: False,
    ) -> None:
        self.guild_id = guild_id
        self.source_channel_id = source_channel_id
        self.output_channel_id = output_channel_id
        self.caption_channel_id = caption_channel_id
        self.backend = backend
        self.opted_out = set(opted_out or ())
        self.speakers: dict[int, Speaker] = {}
        self.frames_withheld = 0  # frames of opted-out members, never sent anywhere
        self.frames_ignored = 0  # frames of members that are not interpreted (bots)
        self._ignore = ignore
        self._idle_timeout_s = idle_timeout_s
        self._open_session = open_session
        self._language_of = language_of
        self._on_output = on_output
        self.problem: str | None = None
        self._on_spend = on_spend
        self._totals: dict[int, _Totals] = {}

    def feed(self, user_id: int, pcm: bytes, end: bool = False) -> None:
        """Route one frame from the listener. Synchronous and cheap: it only enqueues."""
        if user_id in self.opted_out:
            self.frames_withheld += not end
            return
        speaker = self.speakers.get(user_id)
        if speaker is None:
            if end:
                return
            if self._ignore(user_id):
                self.frames_ignored += 1
                return
            speaker = Speaker(
                user_id, self._language_of, self._open_session, self._output, self._session_closed,
                self._idle_timeout_s,
            )
            self.speakers[user_id] = speaker
            speaker.start()
        speaker.feed(pcm, end)

    async def pump(self, frames: asyncio.Queue) -> None:
        """Consume the listener's queue of `VoiceFrame`s until cancelled."""
        while True:
            frame = await frames.get()
            self.feed(frame.user_id, frame.pcm, frame.end)

    async def set_language(self, user_id: int, language: str) -> None:
        speaker = self.speakers.get(user_id)
        if speaker is not None:
            await speaker.set_language(language)

    async def set_opt_out(self, user_id: int, opted_out: bool) -> None:
        if not opted_out:
            self.opted_out.discard(user_id)
            return
        self.opted_out.add(user_id)
        speaker = self.speakers.pop(user_id, None)
        if speaker is not None:
            await speaker.close(flush=False)
            log.info("room %s: member %s opted out; their session was aborted", self.guild_id, user_id)

    def live_usd(self) -> float:
        """What the sessions still open have cost so far (not yet in the ledger)."""
        return sum(sp.session.cost.dollars for sp in self.speakers.values() if sp.session is not None)

    def status(self) -> RoomStatus:
        speakers = []
        for uid, sp in self.speakers.items():
            t = self._totals.get(uid, _Totals())
            live = sp.session
            speakers.append(SpeakerStatus(
                uid, sp.language or "?", live is not None and live.connected,
                t.seconds + (live.cost.audio_ms / 1000 if live else 0.0),
                t.usd + (live.cost.dollars if live else 0.0),
            ))
        return RoomStatus(
            self.guild_id, self.source_channel_id, self.output_channel_id, self.caption_channel_id, self.backend,
            speakers, len(self.opted_out), sum(t.usd for t in self._totals.values()) + self.live_usd(), self.problem,
        )

    async def close(self) -> None:
        """Close every session gracefully (their last words are translated)."""
        speakers, self.speakers = list(self.speakers.values()), {}
        await asyncio.gather(*(sp.close() for sp in speakers), return_exceptions=True)

    def _output(self, user_id: int, out: SessionOutput) -> None:
        if isinstance(out, SessionError) and out.fatal:
            self.problem = out.message  # shown by /translate status
        self._on_output(user_id, out)

    async def _session_closed(self, user_id: int, session: TranslationSession) -> None:
        t = self._totals.setdefault(user_id, _Totals())
        t.seconds += session.cost.audio_ms / 1000
        t.usd += session.cost.dollars
        if self._on_spend is not None:
            await self._on_spend(self.guild_id, session.cost.dollars)
