"""The /translate cog on discord.py's own command tree, a real SQLite Store and a recording RoomService.

No Discord connection exists here: the payloads are what discord.py would sync, and the callbacks are the
ones registered on the tree, invoked with a small Interaction stand-in that records every reply.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import discord
import pytest
from discord import app_commands
from discord.ext import commands

from bot.config import Settings
from bot.pipeline.service import LanguageRefused, PipelineError, RoomStatus, SpeakerStatus
from bot.store import Store
from cogs import messages as say
from cogs.translate import TranslateCog, language_choices, parse_language

GUILD, ME, BOT_ID = 900, 42, 7


# -- stand-ins --------------------------------------------------------------------------------------


@dataclass(eq=False)
class FakeChannel:
    id: int
    hidden_from: set[int] = field(default_factory=set)  # user ids that can't see it
    mute_for_bot: bool = False  # Parley lacks Send Messages
    refuse_posts: bool = False  # send() raises Forbidden
    posted: list[str] = field(default_factory=list)  # what is still up (a deleted message leaves)

    @property
    def mention(self) -> str:
        return f"<#{self.id}>"

    def permissions_for(self, who: Any) -> discord.Permissions:
        return discord.Permissions(
            view_channel=who.id not in self.hidden_from, send_messages=not (who.id == BOT_ID and self.mute_for_bot)
        )

    async def send(self, content: str, **_: Any) -> SimpleNamespace:
        if self.refuse_posts:
            raise discord.Forbidden(SimpleNamespace(status=403, reason="Forbidden"), "Missing Permissions")
        self.posted.append(content)

        async def delete() -> None:
            self.posted.remove(content)

        return SimpleNamespace(content=content, delete=delete)


class FakeGuild:
    def __init__(self, *channels: FakeChannel) -> None:
        self.id = GUILD
        self.me = SimpleNamespace(id=BOT_ID)
        self.channels = {c.id: c for c in channels}

    def get_channel(self, channel_id: int) -> FakeChannel | None:
        return self.channels.get(channel_id)


class FakeResponse:
    def __init__(self, replies: list[tuple[str, bool]], files: list[discord.File] | None = None) -> None:
        self.replies = replies
        self.files = files if files is not None else []
        self.deferred: bool | None = None
        self._done = False

    def is_done(self) -> bool:
        return self._done

    async def send_message(self, content: str, *, ephemeral: bool = False, file: discord.File | None = None,
                           **_: Any) -> None:
        assert not self._done, "an interaction is answered once"
        self._done = True
        self.replies.append((content, ephemeral))
        if file is not None:
            self.files.append(file)

    async def defer(self, *, ephemeral: bool = False, thinking: bool = False) -> None:
        assert not self._done
        self._done, self.deferred = True, ephemeral


class FakeFollowup:
    def __init__(self, replies: list[tuple[str, bool]]) -> None:
        self.replies = replies

    async def send(self, content: str, *, ephemeral: bool = False, **_: Any) -> None:
        self.replies.append((content, ephemeral))


class FakeInteraction:
    def __init__(self, guild: FakeGuild | None, voice: FakeChannel | None = None, *, manage_channels: bool = False,
                 channel: FakeChannel | None = None, manage_guild: bool = False) -> None:
        self.replies: list[tuple[str, bool]] = []
        self.guild = guild
        self.user = SimpleNamespace(id=ME, mention=f"<@{ME}>",
                                    voice=SimpleNamespace(channel=voice) if voice is not None else None)
        self.permissions = discord.Permissions(manage_channels=manage_channels, manage_guild=manage_guild)
        self.channel = channel
        self.response = FakeResponse(self.replies)
        self.followup = FakeFollowup(self.replies)

    @property
    def reply(self) -> str:
        """The one reply this interaction got; every reply must be ephemeral."""
        assert len(self.replies) == 1, self.replies
        text, ephemeral = self.replies[0]
        assert ephemeral and self.response.deferred in (None, True), text
        return text


class FakeRooms:
    """A RoomService that records what the cog asked of it."""

    def __init__(self, backend: str = "openai") -> None:
        self.backend = backend
        self.calls: list[tuple[Any, ...]] = []
        self.rooms: dict[int, RoomStatus] = {}
        self.fail: Exception | None = None
        self.languages: frozenset[str] | None = None  # what the backend lists (None: it can't)
        self.transcripts: dict[int, Any] = {}
        self.heard: frozenset[str] | None = None  # spoken languages the backend recognises (None: it doesn't say)

    async def join(self, guild_id: int, source: int, output: int | None, captions: int | None,
                   two_way: bool = False) -> RoomStatus:
        self.calls.append(("join", guild_id, source, output, captions, *(("two_way",) if two_way else ())))
        if self.fail:
            raise self.fail
        self.rooms[guild_id] = RoomStatus(guild_id, source, output, captions, self.backend, two_way=two_way)
        return self.rooms[guild_id]

    async def leave(self, guild_id: int) -> None:
        self.calls.append(("leave", guild_id))
        self.rooms.pop(guild_id, None)

    def status(self, guild_id: int) -> RoomStatus | None:
        return self.rooms.get(guild_id)

    async def set_language(self, guild_id: int, user_id: int, language: str) -> None:
        self.calls.append(("set_language", guild_id, user_id, language))
        if self.fail:
            raise self.fail

    async def set_speaks(self, guild_id: int, user_id: int, language: str | None) -> None:
        self.calls.append(("set_speaks", guild_id, user_id, language))

    async def check_spoken(self, language: str) -> None:
        if self.heard is not None and language not in self.heard:
            raise LanguageRefused(f"The translation backend can't translate from `{language}` speech.")

    async def set_opt_out(self, guild_id: int, user_id: int, opted_out: bool) -> None:
        self.calls.append(("set_opt_out", guild_id, user_id, opted_out))
        if self.fail:
            raise self.fail

    async def output_languages(self) -> frozenset[str] | None:
        return self.languages

    def transcript(self, guild_id: int, fmt: str = "markdown") -> Any:
        self.calls.append(("transcript", guild_id, fmt))
        return self.transcripts.get(guild_id)

    def delete_transcript(self, guild_id: int) -> bool:
        self.calls.append(("delete_transcript", guild_id))
        return self.transcripts.pop(guild_id, None) is not None


# -- fixtures ---------------------------------------------------------------------------------------


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    s = await Store.open(tmp_path / "parley.sqlite3")
    yield s
    await s.close()


@pytest.fixture
def rooms() -> FakeRooms:
    return FakeRooms()


async def make_bot(rooms: FakeRooms, store: Store, **settings: Any) -> commands.Bot:
    b = commands.Bot(command_prefix="!", intents=discord.Intents.none())  # never logs in
    await b.add_cog(TranslateCog(b, rooms, store, Settings(**settings)))
    return b


@pytest.fixture
async def bot(rooms: FakeRooms, store: Store) -> commands.Bot:
    return await make_bot(rooms, store, caps={"daily_budget_usd": 5.0})


async def run(bot: commands.Bot, name: str, interaction: FakeInteraction, **options: Any) -> None:
    """Invoke the callback registered on the tree, bound to the cog as discord.py would."""
    group = bot.tree.get_command("translate")
    assert isinstance(group, app_commands.Group)
    command = group.get_command(name)
    assert isinstance(command, app_commands.Command)
    await command.callback(command.binding, interaction, **options)  # type: ignore[arg-type]


# -- the payload discord.py would sync --------------------------------------------------------------


async def test_registered_command_payloads(bot: commands.Bot) -> None:
    (group,) = bot.tree.get_commands()
    payload = group.to_dict(bot.tree)
    assert payload["name"] == "translate" and payload["dm_permission"] is False
    subs = {o["name"]: o for o in payload["options"]}
    assert set(subs) == {"join", "leave", "language", "status", "optout", "transcript"}
    fmt, delete = subs["transcript"]["options"]
    assert (fmt["name"], fmt["required"], [c["value"] for c in fmt["choices"]]) == (
        "format", False, ["markdown", "srt", "vtt"])
    assert (delete["name"], delete["type"]) == ("delete", discord.AppCommandOptionType.boolean.value)
    assert all(o["type"] == discord.AppCommandOptionType.subcommand.value for o in subs.values())

    join = {o["name"]: o for o in subs["join"]["options"]}
    assert join["output_channel"]["type"] == discord.AppCommandOptionType.channel.value
    assert join["output_channel"]["channel_types"] == [discord.ChannelType.voice.value]
    assert discord.ChannelType.text.value in join["caption_channel"]["channel_types"]
    assert not join["output_channel"]["required"] and not join["caption_channel"]["required"]

    code, speaks = subs["language"]["options"]
    assert [(o["name"], o["type"], o["required"], o["autocomplete"]) for o in (code, speaks)] == [
        ("code", discord.AppCommandOptionType.string.value, False, True),
        ("speaks", discord.AppCommandOptionType.string.value, False, True)]
    (enabled,) = subs["optout"]["options"]
    assert (enabled["name"], enabled["type"], enabled["required"]) == (
        "enabled", discord.AppCommandOptionType.boolean.value, False)
    assert subs["leave"]["options"] == [] and subs["status"]["options"] == []
    assert all(0 < len(o["description"]) <= 100 for o in [*subs.values(), *join.values(), code, speaks, enabled])


def test_language_parsing_and_autocomplete() -> None:
    assert [parse_language(x) for x in ("es", "pt_br", " PT-br ", "zh-Hant")] == ["es", "pt-BR", "pt-BR", "zh-Hant"]
    assert [parse_language(x) for x in ("Spanish", "español", "Brazilian Portuguese")] == ["es", "es", "pt-BR"]
    bad = ("xx", "zxx", "", "e", "es-ZZZZZZZZZ", "Englsh", "not a language", "`rm -rf`")
    assert [parse_language(x) for x in bad] == [None] * len(bad)
    assert [c.value for c in language_choices("span")] == ["es"]
    assert {"pt", "pt-BR"} <= {c.value for c in language_choices("portu")}
    assert language_choices("xh")[0].value == "xh"  # a valid code outside the common list is offered
    assert language_choices("español")[0].value == "es"  # a name in the language itself
    assert len(language_choices("")) == 25
    assert all(len(c.name) <= 100 for c in language_choices(""))


# -- language ----------------------------------------------------------------------------------------


async def test_bad_language_is_an_ephemeral_error_and_nothing_is_persisted(
    bot: commands.Bot, rooms: FakeRooms, store: Store
) -> None:
    ia = FakeInteraction(FakeGuild())
    await run(bot, "language", ia, code="Englsh")
    assert "isn't a language I know" in ia.reply and "Englsh" in ia.reply
    assert rooms.calls == []
    assert (await store.member(GUILD, ME)).target_language is None


async def test_language_persists_and_calls_the_service(bot: commands.Bot, rooms: FakeRooms, store: Store) -> None:
    ia = FakeInteraction(FakeGuild())
    await run(bot, "language", ia, code="pt_br")
    assert "Portuguese (Brazil)" in ia.reply and "pt-BR" in ia.reply
    assert rooms.calls == [("set_language", GUILD, ME, "pt-BR")]
    assert (await store.member(GUILD, ME)).target_language == "pt-BR"


async def test_language_refused_by_the_pipeline_is_relayed_and_not_persisted(
    bot: commands.Bot, rooms: FakeRooms, store: Store
) -> None:
    rooms.fail = PipelineError("The local backend can't translate into Xhosa yet.")
    ia = FakeInteraction(FakeGuild())
    await run(bot, "language", ia, code="xh")
    assert ia.reply == "The local backend can't translate into Xhosa yet."
    assert (await store.member(GUILD, ME)).target_language is None


async def test_speaks_alone_is_stored_and_keeps_the_target_language(
    bot: commands.Bot, rooms: FakeRooms, store: Store
) -> None:
    await store.set_language(GUILD, ME, "de")
    ia = FakeInteraction(FakeGuild())
    await run(bot, "language", ia, speaks="Spanish")
    assert "You speak Spanish — es" in ia.reply and "translated into" not in ia.reply
    assert rooms.calls == [("set_speaks", GUILD, ME, "es")]  # the target language did not change
    me = await store.member(GUILD, ME)
    assert (me.target_language, me.speaks) == ("de", "es")
    status = FakeInteraction(FakeGuild())
    await run(bot, "status", status)
    assert "you speak es" in status.reply


async def test_language_needs_code_or_speaks_and_checks_both(
    bot: commands.Bot, rooms: FakeRooms, store: Store
) -> None:
    ia = FakeInteraction(FakeGuild())
    await run(bot, "language", ia)
    assert ia.reply == say.LANGUAGE_NOTHING
    ia = FakeInteraction(FakeGuild())
    await run(bot, "language", ia, code="fr", speaks="Zorbish")
    assert "Zorbish" in ia.reply and "isn't a language I know" in ia.reply
    assert rooms.calls == []  # nothing half-applied
    me = await store.member(GUILD, ME)
    assert (me.target_language, me.speaks) == (None, None)


async def test_a_spoken_language_the_backend_cannot_hear_is_refused_and_nothing_changes(
    bot: commands.Bot, rooms: FakeRooms, store: Store
) -> None:
    rooms.heard = frozenset({"en", "es"})
    ia = FakeInteraction(FakeGuild())
    await run(bot, "language", ia, code="es", speaks="Xhosa")
    assert ia.reply == "The translation backend can't translate from `xh` speech."
    assert rooms.calls == []  # not even the target language: one command, one outcome
    me = await store.member(GUILD, ME)
    assert (me.target_language, me.speaks) == (None, None)


# -- optout ------------------------------------------------------------------------------------------


async def test_optout_persists_and_calls_the_service(bot: commands.Bot, rooms: FakeRooms, store: Store) -> None:
    ia = FakeInteraction(FakeGuild())
    await run(bot, "optout", ia)  # enabled defaults to True
    assert ia.reply == say.OPTED_OUT
    assert await store.opted_out_members(GUILD) == {ME}
    assert rooms.calls == [("set_opt_out", GUILD, ME, True)]

    ia = FakeInteraction(FakeGuild())
    await run(bot, "optout", ia, enabled=False)
    assert ia.reply == say.OPTED_IN
    assert await store.opted_out_members(GUILD) == set()
    assert rooms.calls[-1] == ("set_opt_out", GUILD, ME, False)


async def test_optout_sticks_even_when_the_pipeline_fails(bot: commands.Bot, rooms: FakeRooms, store: Store) -> None:
    rooms.fail = PipelineError("The voice connection is restarting; try again in a few seconds.")
    ia = FakeInteraction(FakeGuild())
    await run(bot, "optout", ia)
    assert ia.reply == "The voice connection is restarting; try again in a few seconds."
    assert await store.opted_out_members(GUILD) == {ME}


async def test_a_broken_store_still_opts_out_live_and_says_it_was_not_saved(
    bot: commands.Bot, rooms: FakeRooms, store: Store
) -> None:
    await store.close()
    ia = FakeInteraction(FakeGuild())
    await run(bot, "optout", ia)
    assert ia.reply == say.NOT_SAVED
    assert rooms.calls == [("set_opt_out", GUILD, ME, True)]
    for command, options in (("status", {}), ("language", {"code": "es"})):
        ia = FakeInteraction(FakeGuild())
        await run(bot, command, ia, **options)
        assert ia.reply == say.STORE_DOWN
    source = FakeChannel(1)
    ia = FakeInteraction(FakeGuild(source), voice=source)
    await run(bot, "join", ia)  # the meeting goes on without remembered channels
    assert rooms.calls[-1] == ("join", GUILD, 1, None, None) and len(source.posted) == 1
    assert ia.reply == say.joined("<#1>", None, None)


# -- join --------------------------------------------------------------------------------------------


async def test_join_outside_a_voice_channel_is_an_ephemeral_error(bot: commands.Bot, rooms: FakeRooms) -> None:
    text = FakeChannel(3)
    ia = FakeInteraction(FakeGuild(text), voice=None, channel=text, manage_channels=True)
    await run(bot, "join", ia)
    assert ia.reply == say.NOT_IN_VOICE
    assert rooms.calls == [] and text.posted == []


async def test_join_posts_the_consent_notice_and_remembers_channels(
    bot: commands.Bot, rooms: FakeRooms, store: Store
) -> None:
    source, output, captions, here = FakeChannel(1), FakeChannel(2), FakeChannel(3), FakeChannel(4)
    guild = FakeGuild(source, output, captions, here)
    ia = FakeInteraction(guild, voice=source, channel=here)
    await run(bot, "join", ia, output_channel=output, caption_channel=captions)

    assert ia.response.deferred is True  # ephemeral "thinking…" while voice connects
    assert rooms.calls == [("join", GUILD, 1, 2, 3)]
    (notice,) = source.posted  # public, in the voice channel's chat, where the people being heard are
    assert "Live translation is on" in notice and "OpenAI" in notice and "/translate optout" in notice
    assert "<#2>" in notice and "captioned (original and translation) in <#3>" in notice
    assert "transcript" in notice and "10 minutes after" in notice and "opted-out members are never in it" in notice
    assert here.posted == []
    assert ia.reply == say.joined("<#1>", "<#2>", "<#3>")
    remembered = await store.guild(GUILD)
    assert (remembered.output_channel_id, remembered.caption_channel_id) == (2, 3)

    # next time, no options: the remembered channels are used
    await rooms.leave(GUILD)
    ia = FakeInteraction(guild, voice=source, channel=here)
    await run(bot, "join", ia)
    assert rooms.calls[-1] == ("join", GUILD, 1, 2, 3)


async def test_join_with_the_local_backend_says_no_audio_leaves(rooms: FakeRooms, store: Store) -> None:
    bot = await make_bot(rooms, store, backend="local", models={"transcription": None})
    source, captions = FakeChannel(1), FakeChannel(3)
    ia = FakeInteraction(FakeGuild(source, captions), voice=source)
    await run(bot, "join", ia, caption_channel=captions)
    (notice,) = source.posted
    assert "no audio leaves" in notice and "OpenAI" not in notice
    assert "captioned (translation) in <#3>" in notice  # no source-language captions configured
    assert rooms.calls == [("join", GUILD, 1, None, 3)]


async def test_join_pipeline_error_is_relayed_ephemerally(
    bot: commands.Bot, rooms: FakeRooms, store: Store
) -> None:
    rooms.fail = PipelineError("Parley is already interpreting #general in this server.")
    source, output = FakeChannel(1), FakeChannel(2)
    ia = FakeInteraction(FakeGuild(source, output), voice=source)
    await run(bot, "join", ia, output_channel=output)
    assert ia.reply == "Parley is already interpreting #general in this server."
    assert rooms.calls == [("join", GUILD, 1, 2, None)]
    assert source.posted == []  # the notice went out first, and was taken back when the room did not start
    assert (await store.guild(GUILD)).output_channel_id is None


async def test_join_failing_unexpectedly_takes_the_notice_back(bot: commands.Bot, rooms: FakeRooms) -> None:
    rooms.fail = RuntimeError("voice handshake timed out")
    source = FakeChannel(1)
    ia = FakeInteraction(FakeGuild(source), voice=source)
    with pytest.raises(RuntimeError):  # discord.py hands it to cog_app_command_error (tested below)
        await run(bot, "join", ia)
    assert source.posted == []


async def test_join_without_a_public_notice_does_not_start(bot: commands.Bot, rooms: FakeRooms) -> None:
    source, here = FakeChannel(1, refuse_posts=True), FakeChannel(4, refuse_posts=True)
    ia = FakeInteraction(FakeGuild(source, here), voice=source, channel=here)
    await run(bot, "join", ia)
    assert ia.reply == say.NOTICE_FAILED.format(channel="<#1>")
    assert rooms.calls == []  # no audio is sent before members are told

    # the voice chat refuses but the channel the command came from accepts: the notice goes there
    here.refuse_posts = False
    ia = FakeInteraction(FakeGuild(source, here), voice=source, channel=here)
    await run(bot, "join", ia)
    assert len(here.posted) == 1 and "Live translation is on" in here.posted[0]
    assert [c[0] for c in rooms.calls] == ["join"]


async def test_join_checks_the_channels_before_starting(bot: commands.Bot, rooms: FakeRooms) -> None:
    source = FakeChannel(1)
    hidden, mute = FakeChannel(2, hidden_from={ME}), FakeChannel(3, mute_for_bot=True)
    guild = FakeGuild(source, hidden, mute)
    for options, expected in (
        ({"output_channel": source}, say.SAME_CHANNEL),
        ({"output_channel": hidden}, say.CANNOT_SEE.format(channel="<#2>")),
        ({"caption_channel": mute}, say.CANNOT_POST.format(channel="<#3>")),
    ):
        ia = FakeInteraction(guild, voice=source)
        await run(bot, "join", ia, **options)
        assert ia.reply == expected
    assert rooms.calls == []


# -- leave / status ----------------------------------------------------------------------------------


async def test_leave_needs_the_source_channel_or_manage_channels(bot: commands.Bot, rooms: FakeRooms) -> None:
    source, elsewhere = FakeChannel(1), FakeChannel(5)
    guild = FakeGuild(source, elsewhere)
    ia = FakeInteraction(guild, voice=source)
    await run(bot, "leave", ia)
    assert ia.reply == say.NOT_RUNNING

    await rooms.join(GUILD, 1, None, None)
    ia = FakeInteraction(guild, voice=elsewhere)
    await run(bot, "leave", ia)
    assert ia.reply == say.LEAVE_DENIED.format(channel="<#1>")
    assert rooms.status(GUILD) is not None

    ia = FakeInteraction(guild, voice=None, manage_channels=True)
    await run(bot, "leave", ia)
    assert ia.reply == say.LEFT and rooms.status(GUILD) is None
    assert source.posted == [say.NOTICE_OFF.format(source="<#1>")]

    await rooms.join(GUILD, 1, None, None)
    ia = FakeInteraction(guild, voice=source)  # a member of the source channel may stop it
    await run(bot, "leave", ia)
    assert ia.reply == say.LEFT and rooms.calls[-1] == ("leave", GUILD)


async def test_status_without_and_with_a_room(bot: commands.Bot, rooms: FakeRooms, store: Store) -> None:
    await store.add_spend(GUILD, 1.25)
    ia = FakeInteraction(FakeGuild())
    await run(bot, "status", ia)
    assert say.NOT_RUNNING in ia.reply and "$1.25 of $5.00" in ia.reply and "es (server default)" in ia.reply

    await store.set_opt_out(GUILD, ME, True)
    rooms.rooms[GUILD] = RoomStatus(
        GUILD, 1, 2, None, "ws://10.0.0.5:9000/v1?token=secret",
        speakers=[SpeakerStatus(11, "es", True, 30.0, 0.02), SpeakerStatus(12, "fr", False, 5.0, 0.0)],
        opted_out=3, usd_today=0.5, problem="the API key was refused",
    )
    ia = FakeInteraction(FakeGuild())
    await run(bot, "status", ia)
    text = ia.reply
    assert "Last problem: the API key was refused" in text
    assert "via 10.0.0.5" in text and "secret" not in text
    assert "<@11> → es" in text and "<@12> → fr (idle)" in text
    assert "Opted out here: 3" in text and "$0.50 of $5.00" in text and "You: opted out" in text


async def test_unexpected_errors_become_a_short_ephemeral_reply(bot: commands.Bot) -> None:
    cog = bot.get_cog("TranslateCog")
    assert isinstance(cog, TranslateCog)
    ia = FakeInteraction(FakeGuild())
    await cog.cog_app_command_error(ia, app_commands.AppCommandError("boom"))  # type: ignore[arg-type]
    assert ia.reply == say.UNEXPECTED and "boom" not in ia.reply


# -- issue 9: languages the backend lists; members not translated, at join and in status ------------------


async def test_autocomplete_offers_only_what_the_backend_lists(bot: commands.Bot, rooms: FakeRooms) -> None:
    cog = bot.get_cog("TranslateCog")
    assert isinstance(cog, TranslateCog)
    ia = FakeInteraction(FakeGuild())
    assert len(await cog.language_autocomplete(ia, "")) == 25  # nothing listed: the common languages
    rooms.languages = frozenset({"es", "de", "xh"})
    assert [c.value for c in await cog.language_autocomplete(ia, "")] == ["es", "de", "xh"]
    assert [c.value for c in await cog.language_autocomplete(ia, "fr")] == []  # typed, but not offered
    assert [c.value for c in await cog.language_autocomplete(ia, "xho")] == ["xh"]


async def test_join_reply_and_status_name_members_who_are_not_translated(
    bot: commands.Bot, rooms: FakeRooms
) -> None:
    reason = "the backend can't translate into `fr`; pick another with /translate language"

    async def join(guild_id: int, source: int, output: int | None, captions: int | None,
                   two_way: bool = False) -> RoomStatus:
        rooms.rooms[guild_id] = RoomStatus(guild_id, source, output, captions, "local", not_translated=[(11, reason)])
        return rooms.rooms[guild_id]

    rooms.join = join  # type: ignore[method-assign]
    source = FakeChannel(1)
    ia = FakeInteraction(FakeGuild(source), voice=source)
    await run(bot, "join", ia)
    assert ia.reply == say.joined("<#1>", None, None) + f"\n⚠️ <@11> not translated: {reason}"

    rooms.rooms[GUILD] = RoomStatus(
        GUILD, 1, None, None, "local",
        speakers=[SpeakerStatus(12, "es", False, 1.0, 0.0, "an internal error (StoreError: locked)")],
        not_translated=[(12, "an internal error (StoreError: locked)"), (11, reason)],
    )
    ia = FakeInteraction(FakeGuild())
    await run(bot, "status", ia)
    assert "⚠️ <@12> not translated: an internal error (StoreError: locked)" in ia.reply
    assert f"⚠️ <@11> not translated: {reason}" in ia.reply


async def test_status_says_when_translations_were_sped_up_or_dropped(bot: commands.Bot, rooms: FakeRooms) -> None:
    rooms.rooms[GUILD] = RoomStatus(GUILD, 1, 2, None, "local")
    ia = FakeInteraction(FakeGuild())
    await run(bot, "status", ia)
    assert "Catching up" not in ia.reply  # nothing to say while playback keeps pace
    rooms.rooms[GUILD] = RoomStatus(GUILD, 1, 2, None, "local", fastest_tempo=1.3)
    ia = FakeInteraction(FakeGuild())
    await run(bot, "status", ia)
    assert "up to 1.30× faster (same pitch)" in ia.reply and "dropped" not in ia.reply
    rooms.rooms[GUILD] = RoomStatus(GUILD, 1, 2, None, "local", fastest_tempo=1.35, audio_dropped_s=2.25)
    ia = FakeInteraction(FakeGuild())
    await run(bot, "status", ia)
    assert "2.2 s of translated audio dropped" in ia.reply


async def test_status_shows_the_localrt_workers_of_a_pool(bot: commands.Bot, rooms: FakeRooms) -> None:
    rooms.rooms[GUILD] = RoomStatus(GUILD, 1, 2, None, "local", workers=[("10.0.0.7:8765", True, 2)])
    ia = FakeInteraction(FakeGuild())
    await run(bot, "status", ia)
    assert "Workers" not in ia.reply  # one worker is no pool: nothing to say
    rooms.rooms[GUILD] = RoomStatus(GUILD, 1, 2, None, "local",
                                    workers=[("10.0.0.7:8765", True, 2), ("10.0.0.8:8765", False, 0)])
    ia = FakeInteraction(FakeGuild())
    await run(bot, "status", ia)
    assert "Workers: 10.0.0.7:8765 up, 2 sessions · 10.0.0.8:8765 down" in ia.reply


async def test_status_names_members_not_translated_because_they_speak_the_language(
    bot: commands.Bot, rooms: FakeRooms
) -> None:
    rooms.rooms[GUILD] = RoomStatus(GUILD, 1, 2, None, "openai", speakers=[
        SpeakerStatus(11, "es", True, 3.0, 0.01),
        SpeakerStatus(12, "es", False, 0.0, 0.0, same_language="speaks es, hears es"),
    ])
    ia = FakeInteraction(FakeGuild())
    await run(bot, "status", ia)
    assert "<@11> → es" in ia.reply and "<@12> →" not in ia.reply
    assert "<@12> is not translated: speaks es, hears es, the same language (no session, no cost)" in ia.reply


async def test_transcript_is_an_ephemeral_file_for_members_who_can_see_the_channel(
    bot: commands.Bot, rooms: FakeRooms
) -> None:
    from bot.pipeline.service import TranscriptFile

    ia = FakeInteraction(FakeGuild(FakeChannel(1)))
    await run(bot, "transcript", ia)
    assert ia.reply == say.NO_TRANSCRIPT
    rooms.transcripts = {GUILD: TranscriptFile("transcript-2026.srt", "1\n00:00:01,000 --> …", 3, 1, True)}
    ia = FakeInteraction(FakeGuild(FakeChannel(1)))
    await run(bot, "transcript", ia, fmt=app_commands.Choice(name="srt", value="srt"))
    assert rooms.calls[-1] == ("transcript", GUILD, "srt")
    assert ia.reply == "Here is the transcript so far (3 lines)."
    (file,) = ia.response.files
    assert file.filename == "transcript-2026.srt" and file.fp.read().startswith(b"1\n00:00:01,000")
    hidden = FakeInteraction(FakeGuild(FakeChannel(1, hidden_from={ME})))
    await run(bot, "transcript", hidden)
    assert "can't see <#1>" in hidden.reply and not hidden.response.files
    gone = FakeInteraction(FakeGuild(FakeChannel(9)))  # the channel was deleted: not handed to anyone
    await run(bot, "transcript", gone)
    assert gone.reply == say.TRANSCRIPT_CHANNEL_GONE and not gone.response.files
    admin = FakeInteraction(FakeGuild(FakeChannel(9)), manage_guild=True)
    await run(bot, "transcript", admin)
    assert admin.response.files


async def test_only_admins_delete_the_transcript(bot: commands.Bot, rooms: FakeRooms) -> None:
    from bot.pipeline.service import TranscriptFile

    rooms.transcripts = {GUILD: TranscriptFile("t.md", "# Transcript", 1, 1, False)}
    ia = FakeInteraction(FakeGuild(FakeChannel(1)), manage_channels=True)
    await run(bot, "transcript", ia, delete=True)
    assert ia.reply == say.TRANSCRIPT_DELETE_DENIED and GUILD in rooms.transcripts
    ia = FakeInteraction(FakeGuild(FakeChannel(1)), manage_guild=True)
    await run(bot, "transcript", ia, delete=True)
    assert ia.reply == say.TRANSCRIPT_DELETED and GUILD not in rooms.transcripts
    ia = FakeInteraction(FakeGuild(FakeChannel(1)), manage_guild=True)
    await run(bot, "transcript", ia, delete=True)
    assert ia.reply == say.NO_TRANSCRIPT


async def test_two_way_join_needs_an_output_channel_and_tells_both_channels(
    bot: commands.Bot, rooms: FakeRooms
) -> None:
    source, output, here = FakeChannel(1), FakeChannel(2), FakeChannel(4)
    ia = FakeInteraction(FakeGuild(source, output, here), voice=source, channel=here)
    await run(bot, "join", ia, two_way=True)
    assert ia.reply == say.TWO_WAY_NEEDS_OUTPUT and rooms.calls == []
    ia = FakeInteraction(FakeGuild(source, output, here), voice=source, channel=here)
    await run(bot, "join", ia, output_channel=output, two_way=True)
    assert rooms.calls == [("join", GUILD, 1, 2, None, "two_way")]
    for channel in (source, output):  # members of both channels are heard: both are told
        (notice,) = channel.posted
        assert "<#1> and <#2> (two-way)" in notice and "spoken in the other channel" in notice
    assert "into each other" in ia.reply
    status = FakeInteraction(FakeGuild(source, output, here))
    await run(bot, "status", status)
    assert "<#1> ⇄ <#2>" in status.reply


async def test_two_way_join_without_the_notice_in_the_output_channel_does_not_start(
    bot: commands.Bot, rooms: FakeRooms
) -> None:
    source, output = FakeChannel(1), FakeChannel(2, refuse_posts=True)
    ia = FakeInteraction(FakeGuild(source, output), voice=source)
    await run(bot, "join", ia, output_channel=output, two_way=True)
    assert rooms.calls == [] and source.posted == []  # the first notice was taken back
    assert "<#2>" in ia.reply
