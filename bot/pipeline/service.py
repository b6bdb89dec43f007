"""What the `/translate` commands may ask of the pipeline: the whole surface a cog sees.

Cogs stay thin: they parse, check permissions and call a `RoomService`; everything stateful lives
behind it. Errors a member can fix are `PipelineError`s whose message is fit for an ephemeral reply.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol


class PipelineError(Exception):
    """A short, friendly reason an action cannot be done (shown to the member as-is)."""


class PlaybackError(PipelineError):
    """The `Playback` seam cannot play (not invited, no permission, wrong channel): a short reason for the member."""


class CapReached(PipelineError):
    """No new session now: `caps.max_sessions` or today's budget is reached (the speaker waits)."""


class LanguageRefused(PipelineError):
    """The backend cannot translate into this target language (a member must pick another)."""


@dataclass(frozen=True)
class SpeakerStatus:
    user_id: int
    target_language: str
    connected: bool  # its session is open upstream
    seconds_sent: float
    usd: float
    problem: str | None = None  # why this member is not translated right now ("not translated: …")
    same_language: str | None = None  # not translated because their speech is already in their target language


@dataclass(frozen=True)
class RoomStatus:
    guild_id: int
    source_channel_id: int
    output_channel_id: int | None
    caption_channel_id: int | None
    backend: str
    speakers: list[SpeakerStatus] = field(default_factory=list)
    opted_out: int = 0  # members in the source channel who are never sent upstream
    usd_today: float = 0.0  # this server's spend today, the running sessions included
    problem: str | None = None  # the latest reason a member could not be translated (bad key, backend down)
    not_translated: list[tuple[int, str]] = field(default_factory=list)  # (member, reason), e.g. a refused language
    two_way: bool = False  # the output channel is interpreted too, into the source channel
    fastest_tempo: float = 1.0  # translated audio was played up to this much faster to catch up (same pitch)
    audio_dropped_s: float = 0.0  # translated audio dropped because a speaker fell behind even at max_tempo
    workers: list[tuple[str, bool, int]] = field(default_factory=list)  # bot.localrt pool: (host:port, up, sessions)


@dataclass(frozen=True)
class TranscriptFile:
    filename: str
    text: str
    lines: int
    channel_id: int  # the source channel it was said in (who may read it: who can see that channel)
    live: bool  # the room still runs


class RoomService(Protocol):
    async def join(
        self, guild_id: int, source_channel_id: int, output_channel_id: int | None, caption_channel_id: int | None,
        two_way: bool = False,
    ) -> RoomStatus:
        """Start interpreting `source_channel_id` (and, `two_way`, the output channel into it); raises
        PipelineError (e.g. already running elsewhere)."""
        ...

    async def leave(self, guild_id: int) -> None:
        """Stop: close every session gracefully, leave both voice channels."""
        ...

    def status(self, guild_id: int) -> RoomStatus | None: ...

    async def set_language(self, guild_id: int, user_id: int, language: str) -> None:
        """The member's speech is translated into `language` from now on (live, if they are talking)."""
        ...

    async def set_speaks(self, guild_id: int, user_id: int, language: str | None) -> None:
        """The member said which language they speak: speech already in their target language is not translated."""
        ...

    async def check_spoken(self, language: str) -> None:
        """Raise LanguageRefused if the backend says it cannot translate from speech in `language`."""
        ...

    async def set_opt_out(self, guild_id: int, user_id: int, opted_out: bool) -> None:
        """An opted-out member is never sent upstream; an open session of theirs is closed at once."""
        ...

    def transcript(self, guild_id: int, fmt: str = "markdown") -> TranscriptFile | None:
        """The room's transcript (running, or closed and still kept) as `fmt`: markdown, srt or vtt."""
        ...

    def delete_transcript(self, guild_id: int) -> bool:
        """Delete it now (an admin asked); False when there was none."""
        ...

    async def output_languages(self) -> frozenset[str] | None:
        """The target languages the backend says it accepts, or None when it cannot list them (any may work)."""
        ...
