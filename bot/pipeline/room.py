"""`Room`: one source channel's speakers, routed from the listener's frames to their sessions.

Privacy is enforced here, at the first point a member's audio is attributable to them: frames of a
member who opted out are counted and dropped before any session exists, and opting out mid-sentence
aborts their session without sending another byte.

The room owns its speakers' tasks: it starts each one, awaits it, and supervises it. A speaker that dies
of an unexpected error is logged once with the reason, shown as "not translated: …" in the status, and
replaced by a fresh speaker on the member's next words once a backoff has passed (not on every frame).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from bot.pipeline.same_language import SameLanguageWatch
from bot.pipeline.service import RoomStatus, SpeakerStatus
from bot.pipeline.speaker import MAX_QUEUED_FRAMES, Lease, OnOutput, Speaker, StopReason
from bot.realtime.outputs import SessionError, SessionOutput, SourceText, TargetText

log = logging.getLogger("parley.pipeline")

RESTART_BACKOFF_S = (1.0, 60.0)  # first and longest wait before a failed speaker is replaced
CLOSE_TIMEOUT_S = 30.0  # a graceful close of every speaker; then they are cancelled


@dataclass
class _Totals:
    seconds: float = 0.0
    usd: float = 0.0


@dataclass
class _Failure:
    reason: str
    count: int  # consecutive failures (reset once a replacement opened a session)
    retry_at: float


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
        lease: Lease,
        language_of: Callable[[int], Awaitable[str]],
        on_output: OnOutput,
        stop_reason: StopReason = lambda: None,
        opted_out: set[int] | None = None,
        ignore: Callable[[int], bool] = lambda user_id: False,
        restart_backoff_s: tuple[float, float] = RESTART_BACKOFF_S,
        max_queued_frames: int = MAX_QUEUED_FRAMES,
        speaks_of: Callable[[int], Awaitable[str | None]] | None = None,
    ) -> None:
        self.guild_id = guild_id
        self.source_channel_id = source_channel_id
        self.output_channel_id = output_channel_id
        self.caption_channel_id = caption_channel_id
        self.backend = backend
        self.opted_out = opted_out if opted_out is not None else set()  # the caller's set: captures read it too
        self.speakers: dict[int, Speaker] = {}
        self.frames_withheld = 0  # frames of opted-out members, never sent anywhere
        self.frames_ignored = 0  # frames of members that are not interpreted (bots)
        self.frames_refused = 0  # frames of members whose speaker failed, while it waits to be replaced
        self.frames_failed = 0  # frames lost to an error while routing them (logged once)
        self.speaker_failures = 0
        self.blocked: dict[int, str] = {}  # member → why they are not translated (a refused stored language)
        self.problem: str | None = None
        self._ignore = ignore
        self._idle_timeout_s = idle_timeout_s
        self._lease = lease
        self._language_of = language_of
        self._on_output = on_output
        self._stop_reason = stop_reason
        self._restart_backoff_s = restart_backoff_s
        self._max_queued_frames = max_queued_frames
        self._speaks_of = speaks_of
        self._same_language_watch: dict[int, SameLanguageWatch] = {}
        self._tasks: dict[Speaker, asyncio.Task[None]] = {}
        self._failures: dict[int, _Failure] = {}
        self._totals: dict[int, _Totals] = {}  # sessions of speakers that were replaced or removed
        self._closing = False
        self._frames_dropped = 0  # of speakers no longer in the room
        self._retired: Counter[str] = Counter()  # other frame counts of speakers no longer in the room

    # --- frames in ------------------------------------------------------------------------------

    def feed(self, user_id: int, pcm: bytes, end: bool = False, at: float = 0.0) -> None:
        """Route one frame from the listener. Synchronous and cheap: it only enqueues."""
        if user_id in self.opted_out:
            self.frames_withheld += not end
            return
        speaker = self.speakers.get(user_id)
        if speaker is not None and self._tasks.get(speaker) is None:  # it ended (failed): replace it when due
            failure = self._failures.get(user_id)
            if failure is not None and asyncio.get_running_loop().time() < failure.retry_at:
                self.frames_refused += not end
                return
            self._retire(user_id)
            speaker = None
        if speaker is None:
            if end or self._closing:
                return
            if self._ignore(user_id):
                self.frames_ignored += 1
                return
            if user_id in self.blocked:
                self.frames_refused += 1
                return
            speaker = Speaker(
                user_id, self._language_of, self._lease, self._output, self._idle_timeout_s,
                stop_reason=self._stop_reason, max_queued_frames=self._max_queued_frames,
                speaks_of=self._speaks_of,
            )
            self.speakers[user_id] = speaker
            self._tasks[speaker] = asyncio.create_task(self._supervise(speaker), name=f"speaker-{user_id}")
        speaker.feed(pcm, end, at)

    async def pump(self, frames: asyncio.Queue) -> None:
        """Consume the listener's queue of `VoiceFrame`s until cancelled. A frame that cannot be routed (a bug)
        is lost, counted and logged once: the room goes on interpreting everyone else, never stops silently."""
        while True:
            frame = await frames.get()
            try:
                self.feed(frame.user_id, frame.pcm, frame.end, frame.at)
            except Exception:
                self.frames_failed += 1
                if self.frames_failed == 1:
                    log.exception("room %s: a frame of member %s could not be routed (more are only counted)",
                                  self.guild_id, frame.user_id)

    async def _supervise(self, speaker: Speaker) -> None:
        """The speaker's task: run it; an unexpected failure is logged once and shown, never silent."""
        try:
            await speaker.run()
        except Exception as e:
            uid = speaker.user_id
            previous = self._failures.get(uid)
            count = 1 if previous is None or speaker.sessions_opened else previous.count + 1
            first, longest = self._restart_backoff_s
            delay = min(longest, first * 2 ** (count - 1))
            reason = f"{type(e).__name__}: {e}" if str(e) else type(e).__name__
            self._failures[uid] = _Failure(reason, count, asyncio.get_running_loop().time() + delay)
            self.speaker_failures += 1
            speaker.problem = f"an internal error ({reason}); retrying when they speak again"
            log.error("room %s: speaker %s failed (%s); a fresh one starts on their next words after %.0f s",
                      self.guild_id, uid, reason, delay, exc_info=e)
        finally:
            self._tasks.pop(speaker, None)

    def _retire(self, user_id: int) -> Speaker | None:
        """Take a speaker out of the room, keeping what its sessions cost for the status."""
        speaker = self.speakers.pop(user_id, None)
        if speaker is not None:
            t = self._totals.setdefault(user_id, _Totals())
            t.seconds += speaker.seconds_closed
            t.usd += speaker.usd_closed
            self._frames_dropped += speaker.frames_dropped
            self._retired.update(refused=speaker.frames_refused, same_language=speaker.frames_same_language)
        return speaker

    # --- what the room manager calls ------------------------------------------------------------

    async def set_language(self, user_id: int, language: str) -> None:
        self.blocked.pop(user_id, None)
        self._same_language_watch.pop(user_id, None)
        speaker = self.speakers.get(user_id)
        if speaker is not None:
            await speaker.set_language(language)

    def set_speaks(self, user_id: int) -> None:
        """The member said which language they speak: whether they need translating is decided again."""
        self._same_language_watch.pop(user_id, None)
        speaker = self.speakers.get(user_id)
        if speaker is not None:
            speaker.recheck_language()

    def block(self, user_id: int, reason: str) -> None:
        """This member is not translated until they change language (e.g. the backend refuses theirs)."""
        self.blocked[user_id] = reason

    async def set_opt_out(self, user_id: int, opted_out: bool) -> None:
        if not opted_out:
            self.opted_out.discard(user_id)
            return
        self.opted_out.add(user_id)
        speaker = self.speakers.get(user_id)
        if speaker is not None:
            await self._end(speaker, flush=False)
            self._retire(user_id)
            log.info("room %s: member %s opted out; their session was aborted", self.guild_id, user_id)

    async def _end(self, speaker: Speaker, flush: bool) -> None:
        """Stop one speaker: gracefully (last words) or at once (nothing more goes upstream); wait for it."""
        task = self._tasks.get(speaker)
        if task is None:
            return
        if flush:
            speaker.stop()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(task), timeout=CLOSE_TIMEOUT_S)
        if not task.done():
            speaker.aborting = True
            task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    async def close(self) -> None:
        """Close every session gracefully (their last words are translated), then every task has ended."""
        self._closing = True
        speakers = list(self.speakers.values())
        try:
            await asyncio.gather(*(self._end(sp, flush=True) for sp in speakers))
        finally:
            for task in list(self._tasks.values()):  # cancelled from above: stop now, still release
                task.cancel()
            for task in list(self._tasks.values()):
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            for uid in list(self.speakers):
                self._retire(uid)

    # --- status ---------------------------------------------------------------------------------

    def live_usd(self) -> float:
        """What the sessions still open have cost so far (not yet in the ledger)."""
        return sum(sp.session.cost.dollars for sp in self.speakers.values() if sp.session is not None)

    def counters(self) -> dict[str, int]:
        """What happened to frames that were not translated, and speakers that failed (for /metrics)."""
        speakers = list(self.speakers.values())
        return {
            "withheld": self.frames_withheld, "ignored": self.frames_ignored, "failed": self.frames_failed,
            "refused": self.frames_refused + self._retired["refused"] + sum(sp.frames_refused for sp in speakers),
            "same_language": self._retired["same_language"] + sum(sp.frames_same_language for sp in speakers),
            "dropped": self.frames_dropped, "speaker_failures": self.speaker_failures,
        }

    @property
    def frames_dropped(self) -> int:
        """Frames dropped (oldest first) because a speaker's bounded queue was full."""
        return self._frames_dropped + sum(sp.frames_dropped for sp in self.speakers.values())

    @property
    def running_speakers(self) -> int:
        return len(self._tasks)

    def status(self) -> RoomStatus:
        speakers = []
        for uid, sp in self.speakers.items():
            t = self._totals.get(uid, _Totals())
            live = sp.session
            speakers.append(SpeakerStatus(
                uid, sp.language or "?", live is not None and live.connected,
                t.seconds + sp.seconds_closed + (live.cost.audio_ms / 1000 if live else 0.0),
                t.usd + sp.usd_closed + (live.cost.dollars if live else 0.0),
                sp.problem, sp.same_language,
            ))
        not_translated = [(s.user_id, s.problem) for s in speakers if s.problem]
        not_translated += [(uid, why) for uid, why in self.blocked.items() if uid not in self.speakers]
        closed_usd = sum(t.usd for t in self._totals.values()) + sum(sp.usd_closed for sp in self.speakers.values())
        return RoomStatus(
            self.guild_id, self.source_channel_id, self.output_channel_id, self.caption_channel_id, self.backend,
            speakers, len(self.opted_out), closed_usd + self.live_usd(), self.problem, not_translated,
        )

    def _output(self, user_id: int, out: SessionOutput) -> None:
        if isinstance(out, SessionError) and out.fatal:
            self.problem = out.message  # shown by /translate status
        elif isinstance(out, SourceText | TargetText):
            self._watch_language(user_id, out)
        self._on_output(user_id, out)

    def _watch_language(self, user_id: int, out: SourceText | TargetText) -> None:
        """Utterances that come back untranslated mean the member already speaks their target language."""
        speaker = self.speakers.get(user_id)
        if speaker is None or speaker.same_language is not None:
            return
        watch = self._same_language_watch.setdefault(user_id, SameLanguageWatch())
        if watch.see(out, asyncio.get_running_loop().time()):
            speaker.same_language = f"already speaks {speaker.language} (heard in their speech)"
            log.info("room %s: member %s already speaks %s; their session is closed and not reopened",
                     self.guild_id, user_id, speaker.language)
