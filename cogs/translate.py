"""`/translate join | leave | language | status | optout`: parse, check, call the RoomService and the Store.

Thin on purpose: rooms, sessions and costs live behind `RoomService`; preferences live in `Store`. Every
reply is short and ephemeral; only the consent notice on join (and the "off" notice on leave) is public.

Permissions:
- join: the invoker must be in a voice channel (it becomes the source); anyone there may start it, since
  the public notice tells everyone and each member can opt out. An output/caption channel must be one the
  invoker can see, and Parley must be able to post in the caption channel.
- leave: members in the source channel, or anyone with Manage Channels.
- language, optout, status: any member, about themselves. All commands are server-only.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import logging
from functools import cache
from typing import Any

import discord
import langcodes
from discord import app_commands
from discord.ext import commands

from bot.config import Settings, check_language
from bot.pipeline.service import PipelineError, RoomService, RoomStatus
from bot.store import GuildSettings, Store, StoreError
from cogs import messages as say

log = logging.getLogger(__name__)

# Offered by autocomplete; any other valid code is accepted too.
COMMON_LANGUAGES = (
    "en", "es", "fr", "de", "it", "pt", "pt-BR", "nl", "pl", "ru", "uk", "tr", "ar", "he", "hi", "bn",
    "ja", "ko", "zh", "zh-Hant", "vi", "th", "id", "sv", "ca", "eo", "el", "cs", "ro", "hu", "fi", "da",
)
_NOT_LANGUAGES = {"und", "zxx", "mul", "mis"}
_NO_MENTIONS = discord.AllowedMentions.none()


@cache
def language_name(code: str) -> str:
    return langcodes.Language.get(code).display_name()


def parse_language(raw: str) -> str | None:
    """A registered language tag in standard form (`pt-br` → `pt-BR`, `Spanish` → `es`), or None."""
    text = raw.strip().replace("_", "-")
    try:
        tag = langcodes.standardize_tag(text)
        lang = langcodes.Language.get(tag)
        check_language(tag)
    except (ValueError, langcodes.LanguageTagError):
        try:  # a language name, in English or in the language itself ("Spanish", "español")
            lang = langcodes.find(text) if len(text) > 3 else None
        except LookupError:
            lang = None
        if lang is None:
            return None
        tag = lang.to_tag()
        try:
            check_language(tag)
        except ValueError:
            return None
    if not lang.is_valid() or lang.language in _NOT_LANGUAGES:
        return None
    return tag


class TranslateCog(commands.Cog):
    """The `/translate` group. Add with `await bot.add_cog(TranslateCog(bot, rooms, store, settings))`."""

    translate = app_commands.Group(name="translate", description=say.GROUP, guild_only=True)

    def __init__(self, bot: commands.Bot, rooms: RoomService, store: Store, settings: Settings) -> None:
        self.bot = bot
        self.rooms = rooms
        self.store = store
        self.settings = settings

    async def cog_load(self) -> None:
        await asyncio.to_thread(language_choices, "")  # langcodes loads its name data once, off the loop

    # -- join / leave ---------------------------------------------------------------------------

    @translate.command(name="join", description=say.JOIN)
    @app_commands.describe(output_channel=say.JOIN_OUTPUT, caption_channel=say.JOIN_CAPTIONS, two_way=say.JOIN_TWO_WAY)
    async def join(
        self,
        interaction: discord.Interaction,
        output_channel: discord.VoiceChannel | None = None,
        caption_channel: discord.TextChannel | None = None,
        two_way: bool = False,
    ) -> None:
        guild, member = interaction.guild, interaction.user
        if guild is None:
            return await self._reply(interaction, say.GUILD_ONLY)
        voice = getattr(member, "voice", None)
        source = voice.channel if voice is not None else None
        if source is None:
            return await self._reply(interaction, say.NOT_IN_VOICE)
        try:
            remembered = await self.store.guild(guild.id)
        except StoreError:  # joining matters more than remembered defaults
            log.exception("store unavailable on join")
            remembered = GuildSettings(guild.id)
        output: Any = output_channel or _channel(guild, remembered.output_channel_id)
        captions: Any = caption_channel or _channel(guild, remembered.caption_channel_id)
        if output is not None and output.id == source.id:
            return await self._reply(interaction, say.SAME_CHANNEL)
        if two_way and output is None:
            return await self._reply(interaction, say.TWO_WAY_NEEDS_OUTPUT)
        for channel in (output, captions):
            if channel is not None and not channel.permissions_for(member).view_channel:
                return await self._reply(interaction, say.CANNOT_SEE.format(channel=channel.mention))
        if captions is not None and not captions.permissions_for(guild.me).send_messages:
            return await self._reply(interaction, say.CANNOT_POST.format(channel=captions.mention))

        await interaction.response.defer(ephemeral=True, thinking=True)  # joining voice can take seconds
        # The notice goes out before any audio can: no notice, no translation.
        out, cap = (c.mention if c is not None else None for c in (output, captions))
        originals = self.settings.models.transcription is not None  # source-language captions are on
        text = say.consent_notice(source.mention, self.settings.backend, out, cap, originals=originals,
                                  retention_s=self.settings.transcripts.retention_s, two_way=two_way)
        notices = [await self._announce(text, source, interaction.channel)]
        if two_way and notices[0] is not None:  # the output channel's members are heard too: they are told too
            notices.append(await self._announce(text, output))
        if None in notices:
            await _take_back(notices)
            where = output if notices[0] is not None else source
            return await self._reply(interaction, say.NOTICE_FAILED.format(channel=where.mention))
        try:
            room = await self.rooms.join(
                guild.id, source.id, output.id if output else None, captions.id if captions else None, two_way=two_way
            )
        except Exception as e:
            await _take_back(notices)  # they would announce a translation that is not happening
            if isinstance(e, PipelineError):
                return await self._reply(interaction, str(e))
            raise  # cog_app_command_error answers and logs it
        try:
            await self.store.set_guild_channels(guild.id, room.output_channel_id, room.caption_channel_id)
        except StoreError:  # the room runs; only next time's defaults are lost
            log.exception("could not remember the channels of guild %s", guild.id)
        await self._reply(
            interaction,
            say.joined(source.mention, _mention(room.output_channel_id), _mention(room.caption_channel_id),
                       two_way=room.two_way)
            + say.not_translated([(f"<@{uid}>", why) for uid, why in room.not_translated]),
        )

    @translate.command(name="leave", description=say.LEAVE)
    async def leave(self, interaction: discord.Interaction) -> None:
        guild = interaction.guild
        if guild is None:
            return await self._reply(interaction, say.GUILD_ONLY)
        room = self.rooms.status(guild.id)
        if room is None:
            return await self._reply(interaction, say.NOT_RUNNING)
        voice = getattr(interaction.user, "voice", None)
        in_source = voice is not None and voice.channel is not None and voice.channel.id == room.source_channel_id
        if not (in_source or interaction.permissions.manage_channels):
            return await self._reply(interaction, say.LEAVE_DENIED.format(channel=_mention(room.source_channel_id)))
        await interaction.response.defer(ephemeral=True, thinking=True)  # sessions flush their last words
        try:
            await self.rooms.leave(guild.id)
        except PipelineError as e:
            return await self._reply(interaction, str(e))
        source = guild.get_channel(room.source_channel_id)
        if source is not None:
            await self._announce(say.NOTICE_OFF.format(source=source.mention), source, None)
        await self._reply(interaction, say.LEFT)

    # -- member preferences ---------------------------------------------------------------------

    @translate.command(name="language", description=say.LANGUAGE)
    @app_commands.describe(code=say.LANGUAGE_CODE, speaks=say.LANGUAGE_SPEAKS)
    async def language(
        self, interaction: discord.Interaction, code: str | None = None, speaks: str | None = None
    ) -> None:
        if interaction.guild is None:
            return await self._reply(interaction, say.GUILD_ONLY)
        if code is None and speaks is None:
            return await self._reply(interaction, say.LANGUAGE_NOTHING)
        tag = parse_language(code) if code is not None else None
        spoken = parse_language(speaks) if speaks is not None else None
        for raw, parsed in ((code, tag), (speaks, spoken)):
            if raw is not None and parsed is None:
                return await self._reply(interaction, say.BAD_LANGUAGE.format(code=raw.strip().replace("`", "")[:20]))
        gid, uid = interaction.guild.id, interaction.user.id
        await interaction.response.defer(ephemeral=True, thinking=True)  # a live session may restart
        try:
            if spoken is not None:
                await self.rooms.check_spoken(spoken)  # before anything changes: nothing is half-applied
            if tag is not None:
                await self.rooms.set_language(gid, uid, tag)  # first: the backend may not speak it
                await self.store.set_language(gid, uid, tag)
            if spoken is not None:
                await self.store.set_speaks(gid, uid, spoken)
                await self.rooms.set_speaks(gid, uid, spoken)
        except PipelineError as e:
            return await self._reply(interaction, str(e))
        except StoreError:
            log.exception("store unavailable on language")
            return await self._reply(interaction, say.STORE_DOWN)
        lines = []
        if tag is not None:
            lines.append(say.LANGUAGE_SET.format(language=say.language_label(tag, language_name(tag))))
        if spoken is not None:
            lines.append(say.SPEAKS_SET.format(language=say.language_label(spoken, language_name(spoken))))
        await self._reply(interaction, " ".join(lines))

    @language.autocomplete("code")
    async def language_autocomplete(
        self, interaction: discord.Interaction, current: str
    ) -> list[app_commands.Choice[str]]:
        try:
            offered = await self.rooms.output_languages()
        except Exception:  # autocomplete must answer fast and never fail: offer the usual list
            log.exception("could not ask the backend for its languages")
            offered = None
        return language_choices(current, offered)

    @language.autocomplete("speaks")
    async def speaks_autocomplete(
        self, interaction: discord.Interaction, current: str
    ) -> list[app_commands.Choice[str]]:
        return language_choices(current)

    @translate.command(name="optout", description=say.OPTOUT)
    @app_commands.describe(enabled=say.OPTOUT_ENABLED)
    async def optout(self, interaction: discord.Interaction, enabled: bool = True) -> None:
        if interaction.guild is None:
            return await self._reply(interaction, say.GUILD_ONLY)
        gid, uid = interaction.guild.id, interaction.user.id
        await interaction.response.defer(ephemeral=True, thinking=True)  # closing a live session takes a moment
        saved = True
        try:
            await self.store.set_opt_out(gid, uid, enabled)  # first: the choice sticks even if the room is down
        except StoreError:  # still honoured live below: privacy does not wait for the disk
            log.exception("store unavailable on optout")
            saved = False
        try:
            await self.rooms.set_opt_out(gid, uid, enabled)
        except PipelineError as e:
            return await self._reply(interaction, str(e))
        if not saved:
            return await self._reply(interaction, say.NOT_SAVED)
        await self._reply(interaction, say.OPTED_OUT if enabled else say.OPTED_IN)

    @translate.command(name="status", description=say.STATUS)
    async def status(self, interaction: discord.Interaction) -> None:
        if interaction.guild is None:
            return await self._reply(interaction, say.GUILD_ONLY)
        gid = interaction.guild.id
        try:
            me = await self.store.member(gid, interaction.user.id)
            room: RoomStatus | None = self.rooms.status(gid)
            spent = room.usd_today if room is not None else await self.store.spend_today(gid)
        except StoreError:
            log.exception("store unavailable on status")
            return await self._reply(interaction, say.STORE_DOWN)
        you = say.you(
            me.language_or(self.settings.target_language), me.opted_out, me.target_language is None, me.speaks
        )
        if room is None:
            budget = self.settings.caps.daily_budget_usd
            text = f"{say.NOT_RUNNING}\nCost today: {say.cost(spent, budget)}\n{you}"
            return await self._reply(interaction, text)
        await self._reply(
            interaction,
            say.status(
                backend=room.backend,
                source=_mention(room.source_channel_id) or "?",
                output=_mention(room.output_channel_id),
                captions=_mention(room.caption_channel_id),
                speakers=[(f"<@{s.user_id}>", s.target_language, s.connected) for s in room.speakers
                          if s.same_language is None],
                same_language=[(f"<@{s.user_id}>", s.same_language) for s in room.speakers if s.same_language],
                two_way=room.two_way,
                workers=room.workers,
                opted_out=room.opted_out,
                usd_today=spent,
                budget_usd=self.settings.caps.daily_budget_usd,
                you=you,
                problem=room.problem,
                not_translated=[(f"<@{uid}>", why) for uid, why in room.not_translated],
                fastest_tempo=room.fastest_tempo,
                audio_dropped_s=room.audio_dropped_s,
            ),
        )

    @translate.command(name="transcript", description=say.TRANSCRIPT)
    @app_commands.rename(fmt="format")
    @app_commands.describe(fmt=say.TRANSCRIPT_FORMAT, delete=say.TRANSCRIPT_DELETE)
    @app_commands.choices(fmt=[
        app_commands.Choice(name="Markdown (.md)", value="markdown"),
        app_commands.Choice(name="SubRip subtitles (.srt)", value="srt"),
        app_commands.Choice(name="WebVTT subtitles (.vtt)", value="vtt"),
    ])
    async def transcript(
        self, interaction: discord.Interaction, fmt: app_commands.Choice[str] | None = None, delete: bool = False
    ) -> None:
        guild = interaction.guild
        if guild is None:
            return await self._reply(interaction, say.GUILD_ONLY)
        if delete:
            if not interaction.permissions.manage_guild:
                return await self._reply(interaction, say.TRANSCRIPT_DELETE_DENIED)
            deleted = self.rooms.delete_transcript(guild.id)
            return await self._reply(interaction, say.TRANSCRIPT_DELETED if deleted else say.NO_TRANSCRIPT)
        found = self.rooms.transcript(guild.id, fmt.value if fmt is not None else "markdown")
        if found is None:
            return await self._reply(interaction, say.NO_TRANSCRIPT)
        channel = guild.get_channel(found.channel_id)
        if channel is None and not interaction.permissions.manage_guild:  # gone: who could see it is unknown
            return await self._reply(interaction, say.TRANSCRIPT_CHANNEL_GONE)
        if channel is not None and not channel.permissions_for(interaction.user).view_channel:
            return await self._reply(interaction, say.TRANSCRIPT_DENIED.format(channel=channel.mention))
        attachment = discord.File(io.BytesIO(found.text.encode("utf-8")), filename=found.filename)
        await self._reply(interaction, say.transcript_ready(found.lines, found.live), file=attachment)

    # -- plumbing -------------------------------------------------------------------------------

    async def cog_app_command_error(
        self, interaction: discord.Interaction, error: app_commands.AppCommandError
    ) -> None:
        """Anything not handled above: a short ephemeral line for the member, the traceback for the log."""
        if isinstance(error, app_commands.NoPrivateMessage):
            text = say.GUILD_ONLY
        else:
            log.error("/translate failed", exc_info=error)
            text = say.UNEXPECTED
        with contextlib.suppress(discord.HTTPException):
            await self._reply(interaction, text)

    async def _reply(self, interaction: discord.Interaction, text: str, file: discord.File | None = None) -> None:
        extra: dict[str, Any] = {"file": file} if file is not None else {}
        if interaction.response.is_done():
            await interaction.followup.send(text, ephemeral=True, allowed_mentions=_NO_MENTIONS, **extra)
        else:
            await interaction.response.send_message(text, ephemeral=True, allowed_mentions=_NO_MENTIONS, **extra)

    async def _announce(self, text: str, *channels: Any) -> discord.Message | None:
        """Post publicly in the first channel that accepts it (the voice channel's chat, else where asked)."""
        for channel in channels:
            if channel is None:
                continue
            try:
                return await channel.send(text, allowed_mentions=_NO_MENTIONS)
            except discord.HTTPException as e:
                log.warning("could not post in channel %s: %s", getattr(channel, "id", "?"), e)
        return None


def language_choices(current: str, offered: frozenset[str] | None = None) -> list[app_commands.Choice[str]]:
    """Up to 25 languages matching what was typed (code prefix or name), led by any language it names.

    `offered`: the languages the backend says it accepts (only those are offered), or None: common languages."""
    needle = current.strip().lower()
    if offered is None:
        codes: list[str] = list(COMMON_LANGUAGES)
    else:
        usable = sorted(c for c in offered if parse_language(c) is not None)
        codes = [c for c in COMMON_LANGUAGES if c in offered] + [c for c in usable if c not in COMMON_LANGUAGES]
    found = [
        app_commands.Choice(name=say.language_label(code, language_name(code)), value=code)
        for code in codes
        if code.lower().startswith(needle) or needle in language_name(code).lower()
    ]
    typed = parse_language(current) if needle else None
    if offered is not None and typed is not None and typed.lower() not in {c.lower() for c in offered}:
        typed = None
    if typed is not None and typed not in {c.value for c in found}:
        found.insert(0, app_commands.Choice(name=say.language_label(typed, language_name(typed)), value=typed))
    return found[:25]


async def _take_back(notices: list[discord.Message | None]) -> None:
    """Delete the consent notices already posted (best effort: one that cannot be deleted stays)."""
    for posted in notices:
        if posted is not None:
            with contextlib.suppress(discord.HTTPException):
                await posted.delete()


def _channel(guild: discord.Guild, channel_id: int | None) -> Any:
    return guild.get_channel(channel_id) if channel_id is not None else None


def _mention(channel_id: int | None) -> str | None:
    return f"<#{channel_id}>" if channel_id is not None else None
