"""The speaker account on the sandbox: a player that dies mid-room is restarted and the mix is heard again.

discord.py's player thread ends when a source raises; before, that was only logged (translations paid for,
never heard). A disnake + libdave member in the output channel is the witness.
"""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from bot.audio.mixer import Mixer
from bot.config import DiscordConfig
from bot.playback.speaker_account import SpeakerAccount, speaker_intents
from bot.run import discord_client_options
from bot.sandbox.server import Sandbox
from tests.sandbox.disnake_member import DisnakeMember
from tests.sandbox.stack import loud_seconds, until

pytestmark = pytest.mark.timeout(60)


def tone(seconds: float, hz: float = 440.0) -> bytes:
    t = np.arange(int(seconds * 24000)) / 24000
    return (0.4 * np.sin(2 * np.pi * hz * t) * 32767).astype("<i2").tobytes()


@contextlib.asynccontextmanager
async def output_channel(tmp_path: Path, **account_options: Any):
    """A local Discord with the speaker account online and Carol (disnake + libdave) in the output channel."""
    import discord

    async with Sandbox(tmp_path / "sb") as sb:
        bot, carol_user = sb.add_bot("Parley Voice"), sb.add_person("Carol")
        guild = sb.add_guild("G", carol_user)
        out = sb.add_channel(guild, "Interpretation")
        await sb.invite(guild, bot)
        where = DiscordConfig(api_base=sb.api_base, gateway_url=sb.gateway_url, ca_file=sb.tls.ca_file)
        account = SpeakerAccount(discord.Client(intents=speaker_intents(), **discord_client_options(where)),
                                 **account_options)
        carol = DisnakeMember(sb, carol_user, tmpdir=tmp_path / "carol")
        try:
            await account.start(bot.token)
            await carol.start()
            await carol.join(out)
            yield sb, bot, guild, out, account, carol
        finally:
            await carol.close()
            await account.close()


async def test_a_dead_player_is_restarted_and_the_mix_is_heard_again(tmp_path: Path) -> None:
    async with output_channel(tmp_path) as (sb, bot, guild, out, account, carol):
        mixer = Mixer()
        await account.play(guild.id, out.id, mixer)
        mixer.push(1, tone(1.0))
        await until(lambda: loud_seconds(carol.heard(bot.id)) > 0.8, 10, "the first tone")

        real_read, failed = mixer.read_frame, []

        def broken_once() -> bytes:
            if not failed:
                failed.append(True)
                raise RuntimeError("injected: the mixer failed once")
            return real_read()

        mixer.read_frame = broken_once  # type: ignore[method-assign]
        await until(lambda: failed, 5, "the player to hit the fault")
        heard_before = loud_seconds(carol.heard(bot.id))
        mixer.push(1, tone(1.0, 660.0))
        await until(lambda: loud_seconds(carol.heard(bot.id)) > heard_before + 0.8, 10,
                    "the second tone after the restart")
        assert account.restarts == 1
        assert account.problem_in(guild.id) is None
        # A moderator disconnects the speaker account: that is said (status shows it), not retried forever.
        await sb.move(guild, bot, None)
        await until(lambda: account.problem_in(guild.id), 10, "the lost connection to be reported")
        assert "disconnected" in account.problem_in(guild.id)
        await asyncio.sleep(0)


@pytest.mark.parametrize("lost", [1, 2])
async def test_a_voice_join_left_unanswered_is_tried_once_more(tmp_path: Path, lost: int) -> None:
    """Discord's answer to the speaker account's join is lost: one more try (logged), then a clear refusal."""
    from bot.pipeline.service import PlaybackError

    async with output_channel(tmp_path, connect_timeout=2.0) as (sb, bot, guild, out, account, carol):
        sb.leave_voice_joins_unanswered(bot, lost)
        mixer = Mixer()
        if lost == 2:
            with pytest.raises(PlaybackError, match="did not answer in time"):
                await account.play(guild.id, out.id, mixer)
            assert bot.id not in {u.id for u in sb.in_voice(guild, out)}
        else:
            await account.play(guild.id, out.id, mixer)
            mixer.push(1, tone(1.0))
            await until(lambda: loud_seconds(carol.heard(bot.id)) > 0.8, 10, "the tone after the second try")
        assert len([e for e in sb.events if e.name == "voice_join_unanswered"]) == lost
