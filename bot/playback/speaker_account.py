"""`SpeakerAccount`: the second bot account, which plays a room's mix in the output voice channel.

Discord allows one voice connection per account per guild, and the listener's is taken by the source
channel, so playback needs its own `discord.Client` logged in with `DISCORD_SPEAKER_TOKEN`. It asks for
no privileged intents (guilds + voice states) and joins self-deafened: it speaks, it never listens.
Failures a member can act on (not invited, no permission, wrong channel) are `PlaybackError`s.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

import discord
from pydantic import SecretStr

from bot.audio.mixer import Mixer
from bot.pipeline.service import PlaybackError  # the Playback seam's error: raised here, answered there
from bot.playback.source import MixerSource
from bot.voice.client import ListeningVoiceClient
from bot.voice.config import VoiceConfig
from bot.voice.connection import VoiceClient
from bot.voice.worker import ExcludePredicate

log = logging.getLogger("parley.playback")


def speaker_intents() -> discord.Intents:
    """Guilds (the channel cache) and voice states (voice connections need them); nothing privileged."""
    intents = discord.Intents.none()
    intents.guilds = True
    intents.voice_states = True
    return intents


class SpeakerAccount:
    def __init__(self, client: discord.Client | None = None, *, connect_timeout: float = 10.0,
                 max_restarts: int = 5, voice_config: VoiceConfig | None = None) -> None:
        self.client = client if client is not None else discord.Client(intents=speaker_intents())
        self.voice_config = voice_config if voice_config is not None else VoiceConfig()  # receiving (two-way)
        self.connect_timeout = connect_timeout
        self.max_restarts = max_restarts  # in a row, per guild; a player that plays for a minute resets it
        self.restarts = 0  # players restarted after dying (all guilds, since start)
        self._runner: asyncio.Task[None] | None = None
        self._sources: dict[int, MixerSource] = {}
        self._failures: dict[int, tuple[int, float]] = {}  # guild → (deaths in a row, time of the last)
        self._restarting: set[asyncio.Task[None]] = set()
        self.problem: dict[int, str] = {}  # guild → why its translations are no longer played
    async def start(self, token: SecretStr | str | None) -> None:
        """Log in and wait until the guild cache is ready; raises PlaybackError if that fails."""
        if isinstance(token, SecretStr):
            token = token.get_secret_value()
        if not token:
            raise PlaybackError("DISCORD_SPEAKER_TOKEN is not set: the speaker account cannot play translations.")
        try:
            await self.client.login(token)
        except discord.LoginFailure as exc:
            raise PlaybackError("the speaker account's token was refused (DISCORD_SPEAKER_TOKEN).") from exc
        self._runner = asyncio.create_task(self.client.connect(), name="speaker-account")
        self._runner.add_done_callback(self._gateway_ended)
        ready = asyncio.create_task(self.client.wait_until_ready())
        await asyncio.wait({self._runner, ready}, return_when=asyncio.FIRST_COMPLETED)
        if not ready.done():  # the gateway connection ended before READY
            ready.cancel()
            exc = self._runner.exception()
            raise PlaybackError(f"the speaker account could not connect to Discord: {exc}") from exc

    async def close(self) -> None:
        """Stop every player, leave every voice channel, log out."""
        for task in list(self._restarting):
            task.cancel()
        for task in list(self._restarting):
            with contextlib.suppress(asyncio.CancelledError):
                await task
        for guild_id in list(self._sources):
            with contextlib.suppress(Exception):
                await self.stop(guild_id)
        await self.client.close()
        if self._runner is not None:
            with contextlib.suppress(Exception, asyncio.CancelledError):
                await self._runner
            self._runner = None

    async def play(self, guild_id: int, channel_id: int, mixer: Mixer, *,
                   receive: ExcludePredicate | None = None) -> None:
        """Join (or move to) `channel_id` and play `mixer` there, replacing whatever was playing.

        `receive` (a two-way room): also receive the members there through Parley's receive path
        (`ListeningVoiceClient`, not deafened), never capturing those it excludes; see `voice_client`."""
        guild = self.client.get_guild(guild_id)
        if guild is None:
            raise PlaybackError("The speaker account is not in this server: invite it (see the README).")
        channel = guild.get_channel(channel_id)
        if not isinstance(channel, discord.VoiceChannel | discord.StageChannel):
            raise PlaybackError("The output channel must be a voice channel the speaker account can see.")
        perms = channel.permissions_for(guild.me)
        if not (perms.connect and perms.speak):
            raise PlaybackError(f"The speaker account needs Connect and Speak in {channel.mention}.")
        voice = guild.voice_client
        listening = receive is not None
        if isinstance(voice, discord.VoiceClient) and isinstance(voice, ListeningVoiceClient) != listening:
            await voice.disconnect(force=True)  # receiving or not is chosen at connect time
            voice = None
        cls: type[VoiceClient] = (ListeningVoiceClient.configured(self.voice_config, exclude=receive) if listening
                                  else VoiceClient)
        for attempt in (1, 2):  # a first voice join after start-up was seen to get no answer: one more try
            try:
                if not isinstance(voice, discord.VoiceClient):
                    voice = await channel.connect(cls=cls, timeout=self.connect_timeout, self_deaf=not listening)
                elif voice.channel.id != channel_id:
                    await voice.move_to(channel, timeout=self.connect_timeout)
                break
            except TimeoutError as exc:
                stale = guild.voice_client
                if stale is not None:
                    try:
                        await stale.disconnect(force=True)
                    except Exception as e:  # the retry goes on; the failure is still heard
                        log.warning("guild %s: dropping a half-made voice connection failed: %r", guild_id, e)
                voice = None
                if attempt == 2:
                    raise PlaybackError(f"The speaker account could not join {channel.mention}: Discord did not "
                                        "answer in time") from exc
                log.warning("guild %s: the speaker account's voice join timed out; trying once more", guild_id)
            except (discord.ClientException, discord.ConnectionClosed) as exc:
                raise PlaybackError(f"The speaker account could not join {channel.mention}: {exc}") from exc
        assert isinstance(voice, discord.VoiceClient)
        old = self._sources.pop(guild_id, None)
        if old is not None:
            old.close()
        if voice.is_playing() or voice.is_paused():
            voice.stop()
        self._start_player(guild_id, voice, mixer)

    def _start_player(self, guild_id: int, voice: discord.VoiceClient, mixer: Mixer) -> None:
        source = MixerSource(mixer)
        self._sources[guild_id] = source
        self.problem.pop(guild_id, None)
        voice.play(source, after=lambda error: self._ended(guild_id, source, error))

    def problem_in(self, guild_id: int) -> str | None:
        return self.problem.get(guild_id)

    def voice_client(self, guild_id: int) -> discord.VoiceClient | None:
        """The speaker account's voice connection in a guild (a `ListeningVoiceClient` in a two-way room)."""
        guild = self.client.get_guild(guild_id)
        voice = guild.voice_client if guild is not None else None
        return voice if isinstance(voice, discord.VoiceClient) else None

    async def stop(self, guild_id: int) -> None:
        """Stop playing in `guild_id` and leave its voice channel (nothing to do if not there)."""
        source = self._sources.pop(guild_id, None)
        if source is not None:
            source.close()
        guild = self.client.get_guild(guild_id)
        voice = guild.voice_client if guild is not None else None
        if isinstance(voice, discord.VoiceClient):
            voice.stop()
            await voice.disconnect()

    @staticmethod
    def _gateway_ended(task: asyncio.Task[None]) -> None:
        if not task.cancelled() and task.exception() is not None:
            log.error("speaker account: gateway connection ended: %r", task.exception())

    def _ended(self, guild_id: int, source: MixerSource, error: Exception | None) -> None:
        """discord.py's player thread ended (called on that thread). A player we did not stop is restarted."""
        if self._sources.get(guild_id) is not source:
            return  # stopped or replaced on purpose
        log.error("guild %s: playback stopped: %r; restarting the player", guild_id, error)
        self.client.loop.call_soon_threadsafe(self._schedule_restart, guild_id, source)

    def _schedule_restart(self, guild_id: int, source: MixerSource) -> None:
        task = asyncio.create_task(self._restart(guild_id, source), name=f"restart-player-{guild_id}")
        self._restarting.add(task)
        task.add_done_callback(self._restarting.discard)

    async def _restart(self, guild_id: int, source: MixerSource) -> None:
        """Play the same mix again after a backoff; give up (and say why) after `max_restarts` in a row."""
        loop = asyncio.get_running_loop()
        deaths, last = self._failures.get(guild_id, (0, 0.0))
        deaths = 1 if loop.time() - last > 60 else deaths + 1
        self._failures[guild_id] = (deaths, loop.time())
        if deaths > self.max_restarts:
            self.problem[guild_id] = "the player keeps failing; translations are not being played"
            log.error("guild %s: playback failed %d times in a row; giving up", guild_id, deaths - 1)
            return
        await asyncio.sleep(min(0.25 * 2 ** (deaths - 1), 5.0))
        guild = self.client.get_guild(guild_id)
        voice = guild.voice_client if guild is not None else None
        if self._sources.get(guild_id) is not source:
            return  # stopped or replaced on purpose meanwhile
        if not isinstance(voice, discord.VoiceClient) or not voice.is_connected():
            self.problem[guild_id] = "the speaker account was disconnected from the output channel"
            log.warning("guild %s: the speaker account was disconnected from voice; translations are not played",
                        guild_id)
            return
        self.restarts += 1
        self._start_player(guild_id, voice, source.mixer)
