"""SpeakerAccount offline: its intents, clear errors before touching the network, and how it drives discord.py."""

from __future__ import annotations

from unittest.mock import AsyncMock, MagicMock

import discord
import pytest
from pydantic import SecretStr

from bot.audio.mixer import SILENT_OUT_FRAME, Mixer
from bot.playback.source import MixerSource
from bot.playback.speaker_account import PlaybackError, SpeakerAccount, speaker_intents


def test_intents_are_guilds_and_voice_states_only() -> None:
    intents = speaker_intents()
    assert intents.guilds and intents.voice_states
    assert intents.value == discord.Intents(guilds=True, voice_states=True).value
    assert not (intents.members or intents.presences or intents.message_content)  # nothing privileged


async def test_a_new_account_builds_its_own_client_with_those_intents() -> None:
    account = SpeakerAccount()
    assert isinstance(account.client, discord.Client)
    assert account.client.intents.value == speaker_intents().value
    await account.close()  # never started: closing is harmless


@pytest.mark.parametrize("token", [None, "", SecretStr("")])
async def test_start_without_a_token_is_a_clear_error(token) -> None:
    account = SpeakerAccount()
    with pytest.raises(PlaybackError, match="DISCORD_SPEAKER_TOKEN"):
        await account.start(token)
    await account.close()


async def test_play_in_a_guild_the_account_is_not_in() -> None:
    account = SpeakerAccount()  # empty cache: no guilds
    with pytest.raises(PlaybackError, match="not in this server"):
        await account.play(1234, 5678, Mixer())
    await account.stop(1234)  # nothing to stop: no error
    await account.close()


def fake_guild(channel: object | None, *, connect: bool = True, speak: bool = True) -> MagicMock:
    guild = MagicMock()
    guild.get_channel.return_value = channel
    guild.voice_client = None
    if channel is not None:
        channel.permissions_for.return_value = discord.Permissions(connect=connect, speak=speak)
        channel.mention = "<#5678>"
    return guild


def voice_channel() -> MagicMock:
    return MagicMock(spec=discord.VoiceChannel)


@pytest.mark.parametrize(
    ("channel", "match"),
    [
        (None, "must be a voice channel"),
        (MagicMock(spec=discord.TextChannel), "must be a voice channel"),
    ],
)
async def test_play_in_an_unknown_or_text_channel(channel, match) -> None:
    account = SpeakerAccount()
    account.client.get_guild = lambda _id: fake_guild(channel)
    with pytest.raises(PlaybackError, match=match):
        await account.play(1234, 5678, Mixer())


@pytest.mark.parametrize("perms", [{"connect": False}, {"speak": False}])
async def test_play_without_connect_or_speak(perms) -> None:
    account = SpeakerAccount()
    channel = voice_channel()
    account.client.get_guild = lambda _id: fake_guild(channel, **perms)
    with pytest.raises(PlaybackError, match="Connect and Speak"):
        await account.play(1234, 5678, Mixer())
    channel.connect.assert_not_called()


async def test_play_connects_deafened_and_plays_the_mix_then_stop_leaves() -> None:
    account = SpeakerAccount()
    channel = voice_channel()
    guild = fake_guild(channel)
    voice = MagicMock(spec=discord.VoiceClient)
    voice.is_playing.return_value = False
    voice.is_paused.return_value = False
    channel.connect = AsyncMock(return_value=voice)
    account.client.get_guild = lambda _id: guild
    mixer = Mixer()
    await account.play(1234, 5678, mixer)
    assert channel.connect.await_args.kwargs["self_deaf"] is True
    source = voice.play.call_args.args[0]
    assert isinstance(source, MixerSource) and source.mixer is mixer
    assert not source.is_opus()
    assert source.read() == SILENT_OUT_FRAME  # a quiet room plays silence, never b"" (which would end the player)

    guild.voice_client = voice
    voice.disconnect = AsyncMock()
    await account.stop(1234)
    voice.stop.assert_called()
    voice.disconnect.assert_awaited_once()
    assert source.read() == b""  # the old player ends at its next read


async def test_play_again_replaces_the_source_and_moves_channels() -> None:
    account = SpeakerAccount()
    channel = voice_channel()
    guild = fake_guild(channel)
    voice = MagicMock(spec=discord.VoiceClient)
    voice.channel = MagicMock(id=9999)  # connected elsewhere
    voice.is_playing.return_value = True
    voice.move_to = AsyncMock()
    guild.voice_client = voice
    account.client.get_guild = lambda _id: guild
    await account.play(1234, 5678, Mixer())
    first = voice.play.call_args.args[0]
    voice.move_to.assert_awaited_once()
    voice.channel = MagicMock(id=5678)
    await account.play(1234, 5678, Mixer())
    second = voice.play.call_args.args[0]
    assert voice.move_to.await_count == 1
    assert voice.stop.call_count == 2  # a playing player is stopped before play() (discord.py refuses otherwise)
    assert first.read() == b"" and second is not first


async def test_a_failed_voice_connection_is_a_playback_error() -> None:
    account = SpeakerAccount()
    channel = voice_channel()
    channel.connect = AsyncMock(side_effect=TimeoutError())
    account.client.get_guild = lambda _id: fake_guild(channel)
    with pytest.raises(PlaybackError, match="could not join"):
        await account.play(1234, 5678, Mixer())


def test_mixer_source_reads_whole_frames_from_the_mixer() -> None:
    mixer = Mixer()
    source = MixerSource(mixer)
    assert len(source.read()) == 3840
    assert mixer.stats().frames == 1
    source.cleanup()
    assert source.read() == b""
