"""`RoomManager`: the `RoomService` the cog talks to — one `Room` per guild, with its voice connections.

It owns what crosses rooms: the caps (concurrent sessions, daily budget), the session factory for the
configured backend, and the glue to Discord — the listener's receiving voice connection, the speaker
account's playback of the room's mix, the caption channel. Discord itself is reached only through
small seams (`VoiceJoin`, `Playback`, `Captions`) so the logic is testable offline.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime as dt
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol

from bot.audio.mixer import Mixer
from bot.config import Endpoint, Settings
from bot.pipeline.room import Room
from bot.pipeline.service import CapReached, PipelineError, RoomStatus
from bot.playback.speaker_account import PlaybackError
from bot.realtime.outputs import SessionOutput, TranslatedAudio
from bot.realtime.session import SessionFatal, SessionUnavailable, TranslationSession
from bot.store import Store

log = logging.getLogger("parley.pipeline")


def _today() -> dt.date:
    """The ledger's day, in UTC like the Store's."""
    return dt.datetime.now(dt.UTC).date()


@dataclass
class VoiceLink:
    """The listener in a source channel: its frames, how to leave, and which members are bots.

    `ended` is set when the voice connection ends without us asking (kicked, channel deleted); `channel_id`
    tells where the listener is now (a moderator may move it: it keeps interpreting there)."""

    frames: asyncio.Queue
    disconnect: Callable[[], Awaitable[None]]
    is_bot: Callable[[int], bool] = lambda user_id: False
    ended: asyncio.Event = dataclasses.field(default_factory=asyncio.Event)
    channel_id: Callable[[], int | None] = lambda: None


class VoiceJoin(Protocol):
    """Joins a voice channel as the listener."""

    async def __call__(self, guild_id: int, channel_id: int) -> VoiceLink: ...


class Playback(Protocol):
    async def play(self, guild_id: int, channel_id: int, mixer: Mixer) -> None: ...
    async def stop(self, guild_id: int) -> None: ...


class Captions(Protocol):
    """The caption channel of each room: opened at join, fed text outputs, closed at leave."""

    async def open(self, guild_id: int, channel_id: int) -> None: ...
    def speaker(self, guild_id: int, user_id: int, language: str) -> None:
        """A member's session opened (or changed language): label their captions."""
        ...
    def __call__(self, guild_id: int, user_id: int, output: SessionOutput) -> None: ...
    async def close(self, guild_id: int) -> None: ...


@dataclass
class _Running:
    room: Room
    mixer: Mixer
    pump: asyncio.Task[None]
    link: VoiceLink
    watch: asyncio.Task[None] | None = None  # closes the room if the voice connection ends under it


class RoomManager:
    def __init__(
        self,
        settings: Settings,
        store: Store,
        endpoint: Endpoint,
        join_voice: VoiceJoin,
        playback: Playback | None = None,
        captions: Captions | None = None,
        session_factory: Callable[..., TranslationSession] = TranslationSession,
    ) -> None:
        self.settings = settings
        self.store = store
        self.endpoint = endpoint
        self._join_voice = join_voice
        self._playback = playback
        self._captions = captions
        self._session_factory = session_factory
        self._rooms: dict[int, _Running] = {}
        self._open_sessions = 0
        self._spend_today: dict[int, tuple[dt.date, float]] = {}
        self._lock = asyncio.Lock()
        self._languages: dict[str, bool] = {}  # target language → the backend accepted it

    # --- RoomService ----------------------------------------------------------------------------

    async def join(
        self, guild_id: int, source_channel_id: int, output_channel_id: int | None, caption_channel_id: int | None
    ) -> RoomStatus:
        async with self._lock:
            running = self._rooms.get(guild_id)
            if running is not None:
                raise PipelineError(
                    f"Parley is already interpreting <#{running.room.source_channel_id}> here; "
                    "use /translate leave first."
                )
            if output_channel_id == source_channel_id:
                raise PipelineError("The output channel must differ from the channel being interpreted.")
            self._spend_today[guild_id] = (_today(), await self.store.spend_today(guild_id))
            opted_out = await self.store.opted_out_members(guild_id)
            link = await self._join_voice(guild_id, source_channel_id)
            frames, disconnect = link.frames, link.disconnect
            p = self.settings.playback
            mixer = Mixer(max_backlog_s=p.max_backlog_s, prebuffer_ms=p.prebuffer_ms, quality=p.resample_quality)
            try:
                if self._playback is not None and output_channel_id is not None:
                    await self._playback.play(guild_id, output_channel_id, mixer)
                if self._captions is not None and caption_channel_id is not None:
                    await self._captions.open(guild_id, caption_channel_id)
            except PlaybackError as e:
                await disconnect()
                raise PipelineError(str(e)) from None
            except Exception:
                await disconnect()
                raise
            room = Room(
                guild_id, source_channel_id, output_channel_id, caption_channel_id,
                backend=self.settings.backend,
                idle_timeout_s=self.settings.session.idle_timeout_s,
                open_session=lambda uid, lang: self._open_session(guild_id, uid, lang),
                language_of=lambda uid: self._language_of(guild_id, uid),
                on_output=lambda uid, out: self._route(guild_id, mixer, uid, out),
                on_spend=self._session_closed,
                opted_out=opted_out,
                ignore=link.is_bot,  # music bots and the like are not interpreted
            )
            pump = asyncio.create_task(room.pump(frames), name=f"room-{guild_id}")
            running = _Running(room, mixer, pump, link)
            running.watch = asyncio.create_task(self._watch_voice(guild_id, running), name=f"voice-watch-{guild_id}")
            self._rooms[guild_id] = running
            log.info("room %s: interpreting channel %s via %s", guild_id, source_channel_id, self.settings.backend)
            return room.status()

    async def leave(self, guild_id: int) -> None:
        async with self._lock:
            running = self._rooms.pop(guild_id, None)
        if running is None:
            raise PipelineError("Parley is not interpreting anything in this server.")
        try:
            if running.watch is not None and running.watch is not asyncio.current_task():
                running.watch.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await running.watch
            running.pump.cancel()
            with contextlib.suppress(BaseException):
                await running.pump
            await running.room.close()  # last words are still translated and played
        finally:
            if self._playback is not None:
                with contextlib.suppress(Exception):
                    await self._playback.stop(guild_id)
            if self._captions is not None:
                with contextlib.suppress(Exception):
                    await self._captions.close(guild_id)
            if not running.link.ended.is_set():
                with contextlib.suppress(Exception):
                    await running.link.disconnect()

    async def _watch_voice(self, guild_id: int, running: _Running) -> None:
        """The listener's voice connection ended under a running room (kicked, channel deleted): close it."""
        await running.link.ended.wait()
        if self._rooms.get(guild_id) is not running:
            return
        log.warning("room %s: the listener was disconnected from voice; the room is closed", guild_id)
        with contextlib.suppress(PipelineError):
            await self.leave(guild_id)

    def status(self, guild_id: int) -> RoomStatus | None:
        running = self._rooms.get(guild_id)
        if running is None:
            return None
        _, ledger = self._spend_today.get(guild_id, (_today(), 0.0))  # closed sessions, today
        status = running.room.status()
        source = running.link.channel_id() or status.source_channel_id  # moved by a moderator: it follows
        return dataclasses.replace(status, source_channel_id=source, usd_today=ledger + running.room.live_usd())

    async def set_language(self, guild_id: int, user_id: int, language: str) -> None:
        await self.check_language(language)  # before anything is saved: a language the backend can't serve
        running = self._rooms.get(guild_id)
        if running is not None:
            await running.room.set_language(user_id, language)
            if self._captions is not None:
                self._captions.speaker(guild_id, user_id, language)

    async def check_language(self, language: str) -> None:
        """Raise PipelineError if the backend cannot translate into `language`.

        Asked of the backend itself, once per language: a session opened with that target and closed at once
        (no audio is sent, so nothing is billed). Answers are cached; an unreachable backend is not an answer.
        """
        known = self._languages.get(language)
        if known is None:
            session = self._session_factory(self.endpoint, language, self.settings, name=f"check-{language}")
            try:
                await session.open()
                known = True
            except SessionFatal as e:
                if "unsupported_language" not in str(e):
                    log.warning("language check for %s failed: %s", language, e)
                    raise PipelineError("The translation backend refused the request; an admin should check the "
                                        "bot's log.") from None
                known = False
            except SessionUnavailable as e:
                log.warning("language check for %s: %s", language, e)
                raise PipelineError("I can't reach the translation backend right now; please try again.") from None
            finally:
                with contextlib.suppress(Exception):
                    await session.abort()
            self._languages[language] = known
        if not known:
            raise PipelineError(f"The translation backend ({self.settings.backend}) can't translate into "
                                f"`{language}`; your language is unchanged.")

    async def set_opt_out(self, guild_id: int, user_id: int, opted_out: bool) -> None:
        running = self._rooms.get(guild_id)
        if running is not None:
            await running.room.set_opt_out(user_id, opted_out)
            if opted_out:
                running.mixer.remove(user_id)

    async def close(self) -> None:
        for guild_id in list(self._rooms):
            with contextlib.suppress(Exception):
                await self.leave(guild_id)

    # --- behind the rooms -----------------------------------------------------------------------

    async def _open_session(self, guild_id: int, user_id: int, language: str) -> TranslationSession:
        self._admit(guild_id)  # checked and counted with no await in between: no two speakers race past a cap
        session = self._session_factory(self.endpoint, language, self.settings, name=f"speaker-{user_id}")
        self._open_sessions += 1
        try:
            await session.open()
        except BaseException:
            self._open_sessions -= 1
            raise
        if self._captions is not None:
            self._captions.speaker(guild_id, user_id, language)
        return session

    async def _session_closed(self, guild_id: int, usd: float) -> None:
        """A session ended: it no longer counts against max_sessions; its cost joins the ledger."""
        self._open_sessions -= 1
        day, total = self._spend_today.get(guild_id, (_today(), 0.0))
        today = _today()
        self._spend_today[guild_id] = (today, (total if day == today else 0.0) + usd)
        if usd > 0:
            await self.store.add_spend(guild_id, usd)

    def _admit(self, guild_id: int) -> None:
        """Caps: concurrent sessions in this process, and today's spend in this guild."""
        caps = self.settings.caps
        if self._open_sessions >= caps.max_sessions:
            log.warning("room %s: max_sessions (%d) reached; a speaker waits", guild_id, caps.max_sessions)
            raise CapReached(f"All {caps.max_sessions} translation sessions are in use.")
        if caps.daily_budget_usd is not None:
            day, total = self._spend_today.get(guild_id, (_today(), 0.0))
            if day == _today() and total >= caps.daily_budget_usd:
                log.warning("room %s: daily budget of $%.2f reached", guild_id, caps.daily_budget_usd)
                raise CapReached(f"Today's translation budget (${caps.daily_budget_usd:.2f}) is spent.")

    async def _language_of(self, guild_id: int, user_id: int) -> str:
        prefs = await self.store.member(guild_id, user_id)
        return prefs.language_or(self.settings.target_language)

    def _route(self, guild_id: int, mixer: Mixer, user_id: int, out: SessionOutput) -> None:
        if isinstance(out, TranslatedAudio):
            mixer.push(user_id, out.pcm16)
        elif self._captions is not None:
            self._captions(guild_id, user_id, out)


class DiscordCaptions:
    """`Captions` on Discord: resolves the caption channel with the listener's cache and names speakers
    by their display name."""

    def __init__(self, client: Any, router: Any) -> None:
        self.client, self.router = client, router

    async def open(self, guild_id: int, channel_id: int) -> None:
        guild = self.client.get_guild(guild_id)
        channel = guild.get_channel(channel_id) if guild else None
        if channel is None:
            raise PipelineError("I can't see the caption channel.")

        await self.router.open(guild_id, channel, name_of=lambda uid: self._name_of(guild_id, uid))

    def _name_of(self, guild_id: int, user_id: int) -> str | None:
        guild = self.client.get_guild(guild_id)
        member = guild.get_member(user_id) if guild else None
        return member.display_name if member else None

    def speaker(self, guild_id: int, user_id: int, language: str) -> None:
        poster = self.router.get(guild_id)
        if poster is not None:
            poster.board.set_speaker(user_id, self._name_of(guild_id, user_id) or f"Speaker {user_id}", language)

    def __call__(self, guild_id: int, user_id: int, output: SessionOutput) -> None:
        self.router(guild_id, user_id, output)

    async def close(self, guild_id: int) -> None:
        await self.router.close(guild_id)


def discord_voice_join(client: Any, settings: Settings) -> VoiceJoin:
    """The listener's `VoiceJoin`: connect with Parley's receiving VoiceClient, muted (it only listens)."""
    from bot.voice.client import ListeningVoiceClient

    async def join(guild_id: int, channel_id: int) -> VoiceLink:
        guild = client.get_guild(guild_id)
        channel = guild.get_channel(channel_id) if guild else None
        if channel is None or not hasattr(channel, "connect"):
            raise PipelineError("I can't see that voice channel.")
        try:
            vc = await channel.connect(cls=ListeningVoiceClient.configured(settings.voice), self_mute=True)
        except Exception as e:  # discord.ClientException, timeouts, missing permission
            raise PipelineError(f"I couldn't join {channel.mention}: {e}") from None

        async def disconnect() -> None:
            await vc.disconnect(force=True)

        def is_bot(user_id: int) -> bool:
            member = guild.get_member(user_id)
            return bool(member and member.bot)

        def where() -> int | None:
            return vc.channel.id if vc.channel is not None else None

        return VoiceLink(vc.frames, disconnect, is_bot, vc.ended, where)

    return join
