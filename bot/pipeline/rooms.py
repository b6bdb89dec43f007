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
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any, Protocol
from urllib.parse import urlsplit, urlunsplit

import aiohttp

from bot.audio.mixer import IN_RATE as MIXER_RATE
from bot.audio.mixer import Mixer
from bot.config import Endpoint, Settings
from bot.pipeline.caps import BudgetReached, Caps, Lease, default_owner
from bot.pipeline.room import Room
from bot.pipeline.service import (
    LanguageRefused,
    PipelineError,
    PlaybackError,
    RoomStatus,
    TranscriptFile,
)
from bot.pipeline.transcript import Transcript
from bot.realtime.outputs import SessionOutput, SourceText, TargetText, TranslatedAudio
from bot.realtime.session import SessionFatal, SessionUnavailable, TranslationSession
from bot.store import Store, today

log = logging.getLogger("parley.pipeline")


async def _logged(guild_id: int, what: str, step: Awaitable[None]) -> None:
    """A cleanup step that must not stop the next one, and whose failure is still heard (logged once)."""
    try:
        await step
    except Exception as e:
        log.warning("room %s: %s failed: %r", guild_id, what, e)


_today = today  # the ledger's day (UTC, the Store's); a module name tests can move to tomorrow


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
    members: Callable[[], Iterable[int]] = lambda: ()  # who is in the source channel now
    # Two-way rooms: the same connection plays the other channel's translations here (None: it cannot).
    play: Callable[[Mixer], None] | None = None


class VoiceJoin(Protocol):
    """Joins a voice channel as the listener."""

    async def __call__(self, guild_id: int, channel_id: int, exclude: Callable[[int], bool] | None = None,
                       *, speak: bool = False) -> VoiceLink:
        """`exclude(user_id)`: members never written to a voice capture (opted out); read on the receive
        thread, so it must be a cheap, thread-safe lookup. `speak`: unmuted, to play a two-way room's way back."""
        ...


class Playback(Protocol):
    async def play(self, guild_id: int, channel_id: int, mixer: Mixer, *,
                   receive: Callable[[int], bool] | None = None) -> None:
        """`receive` (two-way rooms): the speaker account also receives there, never capturing those it excludes."""
        ...
    async def stop(self, guild_id: int) -> None: ...
    def problem_in(self, guild_id: int) -> str | None:
        """Why translations are not being played in this guild now (player failing, voice connection lost)."""
        ...


class Captions(Protocol):
    """The caption channel of each room: opened at join, fed text outputs, closed at leave."""

    async def open(self, guild_id: int, channel_id: int) -> None: ...
    def speaker(self, guild_id: int, user_id: int, language: str) -> None:
        """A member's session opened (or changed language): label their captions."""
        ...
    def __call__(self, guild_id: int, user_id: int, output: SessionOutput) -> None: ...
    async def notice(self, guild_id: int, text: str) -> None:
        """One line from Parley itself in the caption channel (e.g. why translation paused)."""
        ...
    async def close(self, guild_id: int) -> None: ...


class Names(Protocol):
    """Display names for transcripts (the listener's cache on Discord)."""

    def member(self, guild_id: int, user_id: int) -> str | None: ...
    def channel(self, guild_id: int, channel_id: int) -> str | None: ...


@dataclass
class _Way:
    """The way back of a two-way room: the output channel's members, heard by the speaker account, interpreted
    and played in the source channel by the listener."""

    room: Room
    mixer: Mixer
    link: VoiceLink
    pump: asyncio.Task[None]


@dataclass
class _Running:
    room: Room
    mixer: Mixer
    pump: asyncio.Task[None]
    link: VoiceLink
    transcript: Transcript
    reverse: _Way | None = None
    watch: asyncio.Task[None] | None = None  # closes the room if the voice connection ends under it
    notices: set[asyncio.Task[None]] = dataclasses.field(default_factory=set)  # caption-channel notices


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
        names: Names | None = None,
        output_link: Callable[[int], VoiceLink | None] | None = None,
    ) -> None:
        self.settings = settings
        self._names = names
        self._output_link = output_link  # what the speaker account receives in a two-way room's output channel
        self._kept: dict[int, tuple[Transcript, asyncio.TimerHandle | None]] = {}  # closed rooms' transcripts
        self.store = store
        self.endpoint = endpoint
        self._join_voice = join_voice
        self._playback = playback
        self._captions = captions
        self._session_factory = session_factory
        self._rooms: dict[int, _Running] = {}
        # caps and the spend ledger, held in the store across processes (bot/pipeline/caps.py)
        self._caps = Caps(settings.caps, store, endpoint.price_per_minute,
                          owner=default_owner(settings.discord.shard_ids, settings.discord.shard_count),
                          today=lambda: _today())
        self._lock = asyncio.Lock()
        self._closing = False  # shutting down: no new rooms
        self._languages: dict[str, bool] = {}  # target language → the backend accepted it
        self._listing: tuple[float, frozenset[str] | None] | None = None  # (when asked, what the backend listed)
        self._heard: frozenset[str] | None = None  # spoken languages a listing backend recognises (last listing)
        self._joining: dict[int, set[int]] = {}  # guild → the opted-out set of the room being joined
        self._budget_noticed: dict[int, dt.date] = {}  # guild → the day its caption channel was told
        self._closed_counters: Counter[str] = Counter()  # rooms that closed: /metrics counts never go back

    # --- RoomService ----------------------------------------------------------------------------

    async def join(
        self, guild_id: int, source_channel_id: int, output_channel_id: int | None, caption_channel_id: int | None,
        two_way: bool = False,
    ) -> RoomStatus:
        if self._closing:
            raise PipelineError("Parley is shutting down; try again in a minute.")
        if two_way and (output_channel_id is None or self._playback is None or self._output_link is None):
            raise PipelineError("A two-way room needs an output channel and the speaker account "
                                "(DISCORD_SPEAKER_TOKEN).")
        async with self._lock:
            running = self._rooms.get(guild_id)
            if running is not None:
                raise PipelineError(
                    f"Parley is already interpreting <#{running.room.source_channel_id}> here; "
                    "use /translate leave first."
                )
            if output_channel_id == source_channel_id:
                raise PipelineError("The output channel must differ from the channel being interpreted.")
            await self._caps.bootstrap(guild_id)  # today's ledger (and, once, what a killed run left open)
            # One set, shared by the room (routing) and the receive thread (captures): opted-out members are
            # never sent upstream nor captured.
            opted_out = set(await self.store.opted_out_members(guild_id))
            self._joining[guild_id] = opted_out  # an opt-out while the listener connects lands here
            try:
                speak = {"speak": True} if two_way else {}
                link = await self._join_voice(guild_id, source_channel_id, exclude=opted_out.__contains__, **speak)
                frames, disconnect = link.frames, link.disconnect
                mixer = self._mixer()
                back: VoiceLink | None = None
                reverse: tuple[Room, Mixer, VoiceLink] | None = None
                try:  # every step that can fail, undone as a whole; the room's tasks start only after them
                    if self._playback is not None and output_channel_id is not None:
                        if two_way:  # the speaker account also receives there, never capturing opted-out members
                            await self._playback.play(guild_id, output_channel_id, mixer,
                                                      receive=opted_out.__contains__)
                            back = self._output_link(guild_id) if self._output_link is not None else None
                            if back is None or link.play is None:
                                raise PlaybackError("I couldn't set up the way back of a two-way room.")
                            # Two-way: the output channel's members are interpreted too, and the listener plays
                            # their translations in the source channel. Same opt-outs, caps, captions, transcript.
                            back_mixer = self._mixer()
                            link.play(back_mixer)
                            reverse = (self._room(guild_id, output_channel_id, source_channel_id,
                                                  caption_channel_id, back_mixer, opted_out, back), back_mixer, back)
                        else:
                            await self._playback.play(guild_id, output_channel_id, mixer)
                    if self._captions is not None and caption_channel_id is not None:
                        await self._captions.open(guild_id, caption_channel_id)
                    played = self._playback is not None and output_channel_id is not None
                    room = self._room(guild_id, source_channel_id, output_channel_id, caption_channel_id,
                                      mixer if played else None, opted_out, link)  # no one plays it: not kept
                    transcript = self._new_transcript(guild_id, source_channel_id)
                except PlaybackError as e:
                    await self._undo_join(guild_id, disconnect, output_channel_id is not None)
                    raise PipelineError(str(e)) from None
                except Exception:
                    await self._undo_join(guild_id, disconnect, output_channel_id is not None)
                    raise
                pump = asyncio.create_task(room.pump(frames), name=f"room-{guild_id}")
                running = _Running(room, mixer, pump, link, transcript)
                if reverse is not None:
                    back_room, back_mixer, back = reverse
                    running.reverse = _Way(back_room, back_mixer, back, asyncio.create_task(
                        back_room.pump(back.frames), name=f"room-{guild_id}-back"))
                running.watch = asyncio.create_task(self._watch_voice(guild_id, running),
                                                    name=f"voice-watch-{guild_id}")
                self._rooms[guild_id] = running
            finally:
                self._joining.pop(guild_id, None)
            log.info("room %s: interpreting channel %s%s via %s", guild_id, source_channel_id,
                     f" and {output_channel_id} (two-way)" if two_way else "", self.settings.backend)
            await self._check_members(room, link)  # the room runs already: a leave cleans up whatever happens
            if running.reverse is not None:
                await self._check_members(running.reverse.room, running.reverse.link)
            status = room.status()
            if running.reverse is not None:
                back = running.reverse.room.status()
                status = dataclasses.replace(status, two_way=True, speakers=status.speakers + back.speakers,
                                             not_translated=status.not_translated + back.not_translated)
            return status

    def _mixer(self) -> Mixer:
        p = self.settings.playback
        return Mixer(max_backlog_s=p.max_backlog_s, prebuffer_ms=p.prebuffer_ms, quality=p.resample_quality,
                     max_tempo=p.max_tempo)

    def _room(self, guild_id: int, source_channel_id: int, output_channel_id: int | None,
              caption_channel_id: int | None, mixer: Mixer | None, opted_out: set[int], link: VoiceLink) -> Room:
        """One direction of a room: `link`'s members interpreted, their translations pushed to `mixer`."""
        return Room(
            guild_id, source_channel_id, output_channel_id, caption_channel_id,
            backend=self.settings.backend,
            idle_timeout_s=self.settings.session.idle_timeout_s,
            lease=lambda uid, lang: self.lease(guild_id, uid, lang),
            language_of=lambda uid: self._language_of(guild_id, uid),
            speaks_of=lambda uid: self._speaks_of(guild_id, uid),
            on_output=lambda uid, out: self._route(guild_id, mixer, uid, out),
            stop_reason=lambda: self._over_budget(guild_id),
            opted_out=opted_out,
            ignore=link.is_bot,  # music bots, and Parley's own accounts (no echo loops), are not interpreted
        )

    async def _undo_join(self, guild_id: int, disconnect: Callable[[], Awaitable[None]], played: bool) -> None:
        """A join that failed half-way leaves nothing behind (both accounts out of voice)."""
        if played and self._playback is not None:
            await _logged(guild_id, "stopping playback", self._playback.stop(guild_id))
        await disconnect()

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
            pumps = [running.pump] + ([running.reverse.pump] if running.reverse is not None else [])
            for pump in pumps:
                pump.cancel()
            for pump in pumps:
                try:
                    await pump
                except asyncio.CancelledError:
                    pass
                except Exception as e:  # it had died before the leave: said once, the cleanup goes on
                    log.error("room %s: its frame pump had failed: %r", guild_id, e)
            rooms = [running.room] + ([running.reverse.room] if running.reverse is not None else [])
            await asyncio.gather(*(room.close() for room in rooms))  # last words are still translated and played
            if running.notices:
                await asyncio.wait(set(running.notices), timeout=5)
        finally:
            for task in running.notices:
                task.cancel()
            if self._playback is not None:
                await _logged(guild_id, "stopping playback", self._playback.stop(guild_id))
            if self._captions is not None:
                await _logged(guild_id, "closing the captions", self._captions.close(guild_id))
            if not running.link.ended.is_set():
                await _logged(guild_id, "leaving voice", running.link.disconnect())
            self._keep_transcript(guild_id, running.transcript)
            for room in self._rooms_of(running):
                self._closed_counters.update(room.counters())

    async def _watch_voice(self, guild_id: int, running: _Running) -> None:
        """The listener's voice connection ended under a running room (kicked, channel deleted): close it.
        In a two-way room, the speaker account's ending there stops the way back: that is shown in the status."""
        if running.reverse is not None:
            back, listener = asyncio.ensure_future(running.reverse.link.ended.wait()), None
            try:
                listener = asyncio.ensure_future(running.link.ended.wait())
                await asyncio.wait({back, listener}, return_when=asyncio.FIRST_COMPLETED)
                if back.done() and not running.link.ended.is_set():
                    running.reverse.room.problem = (f"the speaker account was disconnected from "
                                                    f"<#{running.reverse.room.source_channel_id}>: it is no longer "
                                                    "interpreted")
                    log.warning("room %s: the speaker account left the output channel; the way back stopped",
                                guild_id)
            finally:
                for waiter in (back, listener):
                    if waiter is not None:
                        waiter.cancel()
        await running.link.ended.wait()
        if self._rooms.get(guild_id) is not running:
            return
        log.warning("room %s: the listener was disconnected from voice; the room is closed", guild_id)
        await self._notice(guild_id, f"⏹️ Live translation stopped: I was disconnected from "
                                     f"<#{running.room.source_channel_id}>. Use /translate join to start again.")
        with contextlib.suppress(PipelineError):
            await self.leave(guild_id)

    def status(self, guild_id: int) -> RoomStatus | None:
        running = self._rooms.get(guild_id)
        if running is None:
            return None
        status = running.room.status()
        source = running.link.channel_id() or status.source_channel_id  # moved by a moderator: it follows
        playing = self._playback.problem_in(guild_id) if self._playback is not None else None
        problem = status.problem or (f"translated audio is not being played: {playing}" if playing else None)
        mixes = [running.mixer.stats()]
        speakers, not_translated = list(status.speakers), list(status.not_translated)
        if running.reverse is not None:  # both channels' speakers, one room
            back = running.reverse.room.status()
            speakers += back.speakers
            not_translated += back.not_translated
            problem = problem or back.problem
            mixes.append(running.reverse.mixer.stats())
        return dataclasses.replace(
            status, source_channel_id=source, usd_today=self._spent_today(guild_id), problem=problem,
            speakers=speakers, not_translated=not_translated, two_way=running.reverse is not None,
            fastest_tempo=max(m.max_tempo_used for m in mixes),
            audio_dropped_s=sum(m.samples_dropped for m in mixes) / MIXER_RATE,
            workers=self.workers(),
        )

    def counters(self) -> dict[str, int]:
        """Since start-up, every room's `Room.counters` (closed rooms' included), for /metrics."""
        total = Counter(self._closed_counters)
        for running in list(self._rooms.values()):
            for room in self._rooms_of(running):
                total.update(room.counters())
        return dict(total)

    def workers(self) -> list[tuple[str, bool, int]]:
        """The bot.localrt workers of a pool backend as last seen: (host:port, healthy, open sessions)."""
        pool = self.endpoint.pool
        if pool is None:
            return []
        return [(w.name, w.healthy, w.sessions) for w in pool.workers]

    @staticmethod
    def _rooms_of(running: _Running) -> list[Room]:
        return [running.room] + ([running.reverse.room] if running.reverse is not None else [])

    async def set_language(self, guild_id: int, user_id: int, language: str) -> None:
        await self.check_language(language)  # before anything is saved: a language the backend can't serve
        running = self._rooms.get(guild_id)
        if running is not None:
            for room in self._rooms_of(running):
                await room.set_language(user_id, language)
            if self._captions is not None:
                self._captions.speaker(guild_id, user_id, language)

    async def set_speaks(self, guild_id: int, user_id: int, language: str | None) -> None:
        running = self._rooms.get(guild_id)
        if running is not None:
            for room in self._rooms_of(running):
                room.set_speaks(user_id)

    async def check_language(self, language: str) -> None:
        """Raise PipelineError if the backend cannot translate into `language`.

        `openai-realtime` (an instructed model) takes any language. A backend that lists its languages
        (`GET /v1/languages` next to its websocket: bot.localrt, a ws:// server) is asked for its list. Otherwise
        the backend itself is asked, once per language: a session opened with that target and closed at once (no
        audio is sent, so nothing is billed). Answers are cached; an unreachable backend is not an answer.
        """
        known = self._known_language(language)
        if known is None:
            listed = await self.output_languages()
            if listed is not None:
                known = _listed(language, listed)
            else:
                known = await self._probe_language(language)
            self._languages[language] = known
        if not known:
            raise LanguageRefused(f"The translation backend ({self.settings.backend}) can't translate into "
                                  f"`{language}`; your language is unchanged.")

    def _known_language(self, language: str) -> bool | None:
        """What is already known, with no I/O: True, False, or None (ask the backend)."""
        if self.settings.backend == "openai-realtime":
            return True
        known = self._languages.get(language)
        if known is None and self._listing is not None and self._listing[1] is not None:
            known = _listed(language, self._listing[1])
        return known

    async def _probe_language(self, language: str) -> bool:
        session = self._session_factory(self.endpoint, language, self.settings, name=f"check-{language}")
        try:
            await session.open()
            return True
        except SessionFatal as e:
            if "unsupported_language" not in str(e):
                log.warning("language check for %s failed: %s", language, e)
                raise PipelineError("The translation backend refused the request; an admin should check the "
                                    "bot's log.") from None
            return False
        except SessionUnavailable as e:
            log.warning("language check for %s: %s", language, e)
            raise PipelineError("I can't reach the translation backend right now; please try again.") from None
        finally:
            try:
                await session.abort()  # the answer stands; a socket that would not close is still worth a line
            except Exception as e:
                log.warning("language check for %s: closing the probe session failed: %r", language, e)

    async def output_languages(self) -> frozenset[str] | None:
        """The target languages a listing backend accepts (cached), or None: it can't list them (any may work,
        or each is probed). Asked of `local` and ws:// URL backends at `GET /v1/languages` on their port."""
        if self.settings.backend in ("openai", "openai-realtime"):
            return None
        now = time.monotonic()
        if self._listing is not None:
            asked_at, listed = self._listing
            if now - asked_at < (LISTING_TTL_S if listed is not None else LISTING_RETRY_S):
                return listed
        listed = await self._fetch_listing()
        self._listing = (now, listed)
        return listed

    async def _fetch_listing(self) -> frozenset[str] | None:
        parts = urlsplit(self.endpoint.url)
        scheme = {"ws": "http", "wss": "https"}.get(parts.scheme)
        if scheme is None:
            return None
        url = urlunsplit((scheme, parts.netloc, "/v1/languages", "", ""))
        key = self.endpoint.api_key
        headers = {"Authorization": f"Bearer {key.get_secret_value()}"} if key is not None else {}
        try:
            timeout = aiohttp.ClientTimeout(total=LISTING_TIMEOUT_S)
            async with aiohttp.ClientSession(timeout=timeout) as http, http.get(url, headers=headers) as resp:
                if resp.status != 200:
                    log.info("the backend does not list its languages (HTTP %s); probing instead", resp.status)
                    return None
                body = await resp.json(content_type=None)
            languages = body["output_languages"]
            if not isinstance(languages, list) or not all(isinstance(x, str) for x in languages):
                raise TypeError("output_languages is not a list of strings")
            heard = body.get("input_languages")  # bot.localrt says what it hears too (older servers do not)
            ok = isinstance(heard, list) and all(isinstance(x, str) for x in heard)
            self._heard = frozenset(x.lower() for x in heard) if ok else None
        except (aiohttp.ClientError, TimeoutError, ValueError, KeyError, TypeError) as e:
            log.info("the backend's language list is unavailable (%s); probing instead", type(e).__name__)
            return None
        return frozenset(languages)

    async def spoken_languages(self) -> frozenset[str] | None:
        """The spoken languages the backend can translate from, when it says (bot.localrt's `input_languages`);
        None: it does not say (the OpenAI models hear 70+ languages and identify them themselves)."""
        if await self.output_languages() is None:
            return None
        return self._heard

    async def check_spoken(self, language: str) -> None:
        """Raise LanguageRefused if the backend says it cannot translate from `language` speech."""
        heard = await self.spoken_languages()
        if heard is not None and _base(language) not in heard:
            raise LanguageRefused(f"The translation backend ({self.settings.backend}) can't translate from "
                                  f"`{language}` speech; your languages are unchanged.")

    async def _language_hints(self, guild_id: int, user_id: int) -> dict[str, str]:
        """What a backend that lists what it hears (bot.localrt) is told about the speaker's language, as query
        parameters of the session's URL: `input_language` when the member said which language they speak (no
        identification then), else `languages`, the candidates identification may choose from — the languages
        the guild's members said they speak (the server adds its `local.asr.candidate_languages`). Fewer than two
        is no choice (a member who did not say may speak another): then nothing is sent and the server decides
        among every language it can translate from."""
        try:
            heard = await self.spoken_languages()
            if not heard:
                return {}
            speaks = await self._speaks_of(guild_id, user_id)
            if speaks and _base(speaks) in heard:
                return {"input_language": _base(speaks)}
            candidates = {_base(x) for x in await self.store.spoken_languages(guild_id)} & heard
        except Exception as e:  # hints only save time: the session opens without them
            log.info("room %s: no language hints for speaker %s: %s", guild_id, user_id, str(e) or type(e).__name__)
            return {}
        return {"languages": ",".join(sorted(candidates))} if len(candidates) >= 2 else {}

    async def _check_members(self, room: Room, link: VoiceLink) -> None:
        """At join: a stored language the backend cannot serve is reported now (join reply, status), not retried.
        Bounded in time: a slow or unreachable backend leaves the answer to the members' first words."""
        try:
            async with asyncio.timeout(MEMBER_CHECK_TIMEOUT_S):
                for user_id in link.members():
                    if link.is_bot(user_id) or user_id in room.opted_out:
                        continue
                    language = await self._language_of(room.guild_id, user_id)
                    try:
                        await self.check_language(language)
                    except LanguageRefused:
                        room.block(user_id, _refused_language(language))
        except Exception as e:  # the backend or the store is down, or slow
            log.info("room %s: members' languages not checked at join: %s", room.guild_id, str(e) or type(e).__name__)

    async def set_opt_out(self, guild_id: int, user_id: int, opted_out: bool) -> None:
        running = self._rooms.get(guild_id)
        if opted_out and guild_id in self._kept:
            self._kept[guild_id][0].forget(user_id)
        if running is not None:
            for room in self._rooms_of(running):
                await room.set_opt_out(user_id, opted_out)
            if opted_out:
                running.mixer.remove(user_id)
                if running.reverse is not None:
                    running.reverse.mixer.remove(user_id)
                running.transcript.forget(user_id)  # what they said before is removed too
        elif guild_id in self._joining:  # the room is being joined: its set (read before) must follow
            joining = self._joining[guild_id]
            if opted_out:
                joining.add(user_id)
            else:
                joining.discard(user_id)

    async def close(self) -> None:
        """Shutdown: no new rooms from now on; every room closes with its last words; spend is saved."""
        self._closing = True
        for guild_id in list(self._rooms):
            with contextlib.suppress(Exception):
                await self.leave(guild_id)
        for guild_id in list(self._kept):
            self.delete_transcript(guild_id)
        await self._caps.close()  # every session's spend written (one more try for what failed earlier)

    # --- behind the rooms -----------------------------------------------------------------------

    async def start(self) -> None:
        """At start-up: record the spend of sessions a previous run of this process left open (killed)."""
        await self._caps.start()

    @contextlib.asynccontextmanager
    async def lease(self, guild_id: int, user_id: int, language: str) -> AsyncIterator[TranslationSession]:
        """A session for a speaker: holds a `caps.max_sessions` slot and a lease in the store (the guild's cap
        and budget, across processes) while it lives. Whatever ends it (graceful close, abort, cancel, error),
        its own `finally` closes the socket, returns the slot and records what the session cost, once."""
        if self._known_language(language) is False:
            raise LanguageRefused(_refused_language(language))
        lease = await self._admit(guild_id)
        write: asyncio.Task[None] | None = None
        try:
            hints = await self._language_hints(guild_id, user_id)
            session = self._session_factory(self.endpoint, language, self.settings, name=f"speaker-{user_id}",
                                            **({"query": hints} if hints else {}))
            lease.session = session
            try:
                try:
                    await session.open()
                except SessionFatal as e:
                    if "unsupported_language" in str(e):
                        self._languages[language] = False
                        raise LanguageRefused(_refused_language(language)) from None
                    raise
                if self._captions is not None:
                    self._captions.speaker(guild_id, user_id, language)
                yield session
            finally:
                # first what must not be lost even if this finally is cancelled: the slot and the ledger
                write = self._caps.release(lease)
                try:
                    await session.abort()  # a no-op after a graceful close; closes the socket after anything else
                except Exception as e:  # the slot and ledger are already safe; a socket that would not close is said
                    log.warning("room %s: closing speaker %s's session failed: %r", guild_id, user_id, e)
        finally:
            if write is None:
                write = self._caps.release(lease)  # the session could not even be made
            if write is not None:
                with contextlib.suppress(Exception):
                    await asyncio.shield(write)  # a second cancel leaves it to finish; close() awaits it

    @property
    def open_sessions(self) -> int:
        """Slots in use (`caps.max_sessions`)."""
        return self._caps.open_sessions

    def _spent_today(self, guild_id: int) -> float:
        """Today's spend: closed sessions (the ledger, zero after UTC midnight) plus the sessions still open."""
        return self._caps.spent_today(guild_id)

    async def _admit(self, guild_id: int) -> Lease:
        """Caps: concurrent sessions in this process, and the guild's sessions and today's budget in the store.
        Logged by the speaker, once per member (this runs for every frame of a refused speaker, which is
        answered from memory for a moment after the store said no)."""
        try:
            return await self._caps.admit(guild_id)
        except BudgetReached as e:
            self._over_budget(guild_id, str(e))
            raise

    def _over_budget(self, guild_id: int, reason: str | None = None) -> str | None:
        """Why this guild's sessions must stop now (today's budget is spent, open sessions included), or None.
        The first time each day, the caption channel is told why translation paused."""
        reason = reason or self._caps.over_budget(guild_id)
        if reason is None or reason != self._caps.budget_reason():
            return reason
        budget = self.settings.caps.daily_budget_usd or 0.0
        today = _today()
        if self._budget_noticed.get(guild_id) != today:
            self._budget_noticed[guild_id] = today
            log.warning("room %s: daily budget of $%.2f reached", guild_id, budget)
            running = self._rooms.get(guild_id)
            if running is not None and self._captions is not None and running.room.caption_channel_id is not None:
                task = asyncio.create_task(self._notice(guild_id, f"⏸️ {reason}"), name=f"notice-{guild_id}")
                running.notices.add(task)
                task.add_done_callback(running.notices.discard)
        return reason

    async def _notice(self, guild_id: int, text: str) -> None:
        assert self._captions is not None
        try:
            await self._captions.notice(guild_id, text)
        except Exception as e:
            log.warning("room %s: could not post a notice in the caption channel: %s", guild_id, e)

    async def _language_of(self, guild_id: int, user_id: int) -> str:
        prefs = await self.store.member(guild_id, user_id)
        return prefs.language_or(self.settings.target_language)

    async def _speaks_of(self, guild_id: int, user_id: int) -> str | None:
        return (await self.store.member(guild_id, user_id)).speaks

    def _route(self, guild_id: int, mixer: Mixer | None, user_id: int, out: SessionOutput) -> None:
        if isinstance(out, TranslatedAudio):
            if mixer is not None:  # None: captions only (no output channel), translated audio has no listener
                mixer.push(user_id, out.pcm16, out.received_at)
            return
        running = self._rooms.get(guild_id)
        if running is not None and isinstance(out, SourceText | TargetText):
            speaker = next((r.speakers[user_id] for r in self._rooms_of(running) if user_id in r.speakers), None)
            running.transcript.add(user_id, out, time.time(), speaker.language if speaker is not None else None)
        if self._captions is not None:
            self._captions(guild_id, user_id, out)

    # --- transcripts ----------------------------------------------------------------------------

    def _new_transcript(self, guild_id: int, channel_id: int) -> Transcript:
        names = self._names
        channel = (names.channel(guild_id, channel_id) if names is not None else None) or f"channel {channel_id}"
        self.delete_transcript(guild_id)  # a new room's transcript replaces the last one's
        return Transcript(channel, time.time(), max_lines=self.settings.transcripts.max_lines, channel_id=channel_id,
                          name_of=lambda uid: names.member(guild_id, uid) if names is not None else None)

    def _keep_transcript(self, guild_id: int, transcript: Transcript) -> None:
        """The room closed: its transcript stays `transcripts.retention_s`, then it is deleted."""
        retention = self.settings.transcripts.retention_s
        if retention <= 0 or not len(transcript):
            return
        timer = asyncio.get_running_loop().call_later(retention, self._expire_transcript, guild_id, transcript)
        self._kept[guild_id] = (transcript, timer)

    def _expire_transcript(self, guild_id: int, transcript: Transcript) -> None:
        kept = self._kept.get(guild_id)
        if kept is not None and kept[0] is transcript:
            del self._kept[guild_id]
            log.info("room %s: transcript deleted (retention over)", guild_id)

    def transcript(self, guild_id: int, fmt: str = "markdown") -> TranscriptFile | None:
        """The running room's transcript, else the last room's while it is kept; None when there is none."""
        running = self._rooms.get(guild_id)
        transcript = running.transcript if running is not None else self._kept.get(guild_id, (None, None))[0]
        if transcript is None:
            return None
        return TranscriptFile(transcript.filename(fmt), transcript.render(fmt), len(transcript),
                              transcript.channel_id, running is not None)

    def delete_transcript(self, guild_id: int) -> bool:
        """An admin's request: forget the transcript of this guild's room (live: the lines so far) at once."""
        deleted = False
        transcript, timer = self._kept.pop(guild_id, (None, None))
        if timer is not None:
            timer.cancel()
        deleted = transcript is not None
        running = self._rooms.get(guild_id)
        if running is not None:
            deleted = deleted or bool(len(running.transcript))
            running.transcript.clear()
        return deleted


LISTING_TTL_S = 300.0  # a backend's language list is asked again after this
LISTING_RETRY_S = 30.0  # a backend that did not list its languages is asked again after this
LISTING_TIMEOUT_S = 2.0
MEMBER_CHECK_TIMEOUT_S = 5.0  # all members at join; a slow backend does not hold the join up for long


def _base(language: str) -> str:
    """`pt-BR` → `pt`: recognisers hear languages, not regions."""
    return language.split("-")[0].split("_")[0].lower()


def _listed(language: str, listed: frozenset[str]) -> bool:
    return language.lower() in {x.lower() for x in listed}


def _refused_language(language: str) -> str:
    return f"the backend can't translate into `{language}`; pick another with /translate language"


CAPTION_WEBHOOK = "Parley captions"


class DiscordCaptions:
    """`Captions` on Discord: resolves the caption channel with the listener's cache and names speakers
    by their display name."""

    def __init__(self, client: Any, router: Any) -> None:
        self.client, self.router = client, router
        self.names = DiscordNames(client)

    async def open(self, guild_id: int, channel_id: int) -> None:
        guild = self.client.get_guild(guild_id)
        channel = guild.get_channel(channel_id) if guild else None
        if channel is None:
            raise PipelineError("I can't see the caption channel.")

        webhook = await self._webhook(channel, guild.me)
        await self.router.open(guild_id, channel, name_of=lambda uid: self.names.member(guild_id, uid),
                               webhook=webhook, avatar_of=lambda uid: self.names.avatar(guild_id, uid))

    async def _webhook(self, channel: Any, me: Any) -> Any:
        """Parley's caption webhook in `channel` (reused, or made) when it may manage webhooks there; else None:
        captions are then labelled messages."""
        import discord

        if not channel.permissions_for(me).manage_webhooks:
            return None
        try:
            for hook in await channel.webhooks():
                if hook.name == CAPTION_WEBHOOK and hook.user is not None and hook.user.id == me.id and hook.token:
                    return hook
            return await channel.create_webhook(name=CAPTION_WEBHOOK, reason="Parley: captions under speakers' names")
        except discord.HTTPException as e:
            log.warning("captions: no webhook in channel %s (%s); posting labelled messages", channel.id, e)
            return None

    def speaker(self, guild_id: int, user_id: int, language: str) -> None:
        poster = self.router.get(guild_id)
        if poster is not None:
            poster.board.set_speaker(user_id, self.names.member(guild_id, user_id) or f"Speaker {user_id}", language)

    def __call__(self, guild_id: int, user_id: int, output: SessionOutput) -> None:
        self.router(guild_id, user_id, output)

    async def notice(self, guild_id: int, text: str) -> None:
        poster = self.router.get(guild_id)
        if poster is not None:
            import discord

            await poster.channel.send(text, allowed_mentions=discord.AllowedMentions.none())

    async def close(self, guild_id: int) -> None:
        await self.router.close(guild_id)


class DiscordNames:
    """`Names` from the listener's cache: members' display names and channels' names."""

    def __init__(self, client: Any) -> None:
        self.client = client

    def _member(self, guild_id: int, user_id: int) -> Any:
        guild = self.client.get_guild(guild_id)
        return guild.get_member(user_id) if guild else None

    def member(self, guild_id: int, user_id: int) -> str | None:
        member = self._member(guild_id, user_id)
        return member.display_name if member else None

    def avatar(self, guild_id: int, user_id: int) -> str | None:
        member = self._member(guild_id, user_id)
        return member.display_avatar.url if member else None

    def channel(self, guild_id: int, channel_id: int) -> str | None:
        guild = self.client.get_guild(guild_id)
        channel = guild.get_channel(channel_id) if guild else None
        return f"#{channel.name}" if channel is not None else None


JOIN_TIMEOUT_S = 15.0


def discord_voice_join(client: Any, settings: Settings) -> VoiceJoin:
    """The listener's `VoiceJoin`: connect with Parley's receiving VoiceClient, muted unless it must speak (the
    way back of a two-way room)."""
    import discord

    from bot.voice.client import ListeningVoiceClient

    async def join(guild_id: int, channel_id: int, exclude: Callable[[int], bool] | None = None, *,
                   speak: bool = False) -> VoiceLink:
        guild = client.get_guild(guild_id)
        channel = guild.get_channel(channel_id) if guild else None
        if channel is None or not hasattr(channel, "connect"):
            raise PipelineError("I can't see that voice channel.")
        perms = channel.permissions_for(guild.me)
        if not (perms.view_channel and perms.connect) or (speak and not perms.speak):
            # Discord ignores a join the account may not make: without this, the member would wait for a timeout.
            need = "Connect and Speak" if speak else "Connect"
            raise PipelineError(f"I need the {need} permission in {channel.mention}.")
        try:
            vc = await channel.connect(cls=ListeningVoiceClient.configured(settings.voice, exclude=exclude),
                                       timeout=JOIN_TIMEOUT_S, self_mute=not speak)
        except Exception as e:  # discord.ClientException, timeouts, a closed connection
            stale = guild.voice_client  # a failed connect must leave nothing behind for the next join
            if stale is not None:
                await _logged(guild_id, "dropping a half-made voice connection", stale.disconnect(force=True))
            if isinstance(e, TimeoutError):
                reason = "Discord did not answer in time"
            elif isinstance(e, discord.ClientException) and str(e):  # written for people ("Already connected…")
                reason = str(e)
            else:  # anything else is ours to read, not the member's: logged with its traceback once
                log.exception("guild %s: joining voice channel %s failed", guild_id, channel_id)
                reason = "something went wrong on my side; it has been logged"
            raise PipelineError(f"I couldn't join {channel.mention}: {reason}") from None
        return voice_link(vc, guild, plays=speak)

    return join


def voice_link(vc: Any, guild: Any, *, plays: bool = False) -> VoiceLink:
    """A `VoiceLink` over one of Parley's `ListeningVoiceClient`s (the listener's, or the speaker account's in a
    two-way room). `plays`: it may also play a mix into its channel."""

    async def disconnect() -> None:
        await vc.disconnect(force=True)

    def is_bot(user_id: int) -> bool:
        member = guild.get_member(user_id)
        return bool(member and member.bot)

    def where() -> int | None:
        return vc.channel.id if vc.channel is not None else None

    def members() -> list[int]:
        return [m.id for m in getattr(vc.channel, "members", ())]

    def play(mixer: Mixer) -> None:
        from bot.playback.source import MixerSource

        def after(error: Exception | None) -> None:  # on discord.py's player thread
            if error is not None:
                log.error("guild %s: the listener's playback stopped: %r", guild.id, error)

        if vc.is_playing():
            vc.stop()
        vc.play(MixerSource(mixer), after=after)

    return VoiceLink(vc.frames, disconnect, is_bot, vc.ended, where, members, play if plays else None)


def discord_output_link(speaker: Any) -> Callable[[int], VoiceLink | None]:
    """What the speaker account receives in a two-way room's output channel (after `play(..., receive=…)`)."""

    def link(guild_id: int) -> VoiceLink | None:
        vc = speaker.voice_client(guild_id)
        if vc is None or not hasattr(vc, "frames"):
            return None
        return voice_link(vc, vc.guild)

    return link
