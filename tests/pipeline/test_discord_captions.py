"""DiscordCaptions: the glue between a room and the real CaptionRouter — channel lookup, member names,
language labels."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

import discord
import pytest

from bot.pipeline.rooms import DiscordCaptions
from bot.pipeline.service import PipelineError
from bot.playback.captions import CaptionRouter
from bot.playback.config import PlaybackConfig
from bot.realtime.outputs import SourceText, TargetText


class Channel:
    def __init__(self) -> None:
        self.messages: list[SimpleNamespace] = []

    def permissions_for(self, who) -> discord.Permissions:
        return discord.Permissions(view_channel=True, send_messages=True)  # no Manage Webhooks: labelled messages

    async def send(self, content: str, **kwargs) -> SimpleNamespace:
        async def edit(content: str, **kw) -> None:
            message.content = content

        message = SimpleNamespace(content=content, edit=edit)
        self.messages.append(message)
        return message


def client_with(channel: Channel) -> SimpleNamespace:
    members = {42: SimpleNamespace(display_name="Alice", bot=False)}
    guild = SimpleNamespace(get_channel=lambda cid: channel if cid == 300 else None, get_member=members.get,
                            me=SimpleNamespace(id=7))
    return SimpleNamespace(get_guild=lambda gid: guild if gid == 1 else None)


async def test_captions_name_the_member_and_their_language() -> None:
    channel = Channel()
    captions = DiscordCaptions(client_with(channel), CaptionRouter(PlaybackConfig(caption_edit_interval_s=0.2)))
    await captions.open(1, 300)
    captions.speaker(1, 42, "es")
    captions(1, 42, SourceText("Good morning", 200))
    captions(1, 42, TargetText("Buenos días", 200))
    await asyncio.sleep(0.6)
    await captions.close(1)
    assert channel.messages, "nothing was posted"
    text = channel.messages[-1].content
    assert "**Alice** (→ es)" in text and "Good morning" in text and "Buenos días" in text


async def test_an_unknown_caption_channel_is_a_friendly_error() -> None:
    captions = DiscordCaptions(client_with(Channel()), CaptionRouter())
    with pytest.raises(PipelineError, match="caption channel"):
        await captions.open(1, 999)
