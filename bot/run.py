"""`python -m bot run`: validate the configuration and secrets, then run the two Discord accounts.

The listener (`DISCORD_TOKEN`) carries the `/translate` commands and receives voice; the speaker
account (`DISCORD_SPEAKER_TOKEN`) plays the translations in the output channel. Without a speaker
token Parley still runs, with captions only, and says so.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
from dataclasses import dataclass
from pathlib import Path

import discord
from discord.ext import commands

from bot.config import ConfigError, Settings, load_settings, resolve_endpoint
from bot.pipeline.rooms import DiscordCaptions, RoomManager, discord_voice_join
from bot.playback.captions import CaptionRouter
from bot.playback.speaker_account import PlaybackError, SpeakerAccount
from bot.store import Store, StoreError
from cogs.translate import TranslateCog

log = logging.getLogger("parley")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", type=Path, default=Path("config.yaml"), help="config file (default: config.yaml)")
    p.add_argument("--check", action="store_true", help="validate the configuration and exit")


def listener_intents() -> discord.Intents:
    """Guilds and voice states only: nothing privileged (no message content, no member list)."""
    intents = discord.Intents.none()
    intents.guilds = True
    intents.voice_states = True
    return intents


class _Listener(commands.Bot):
    async def setup_hook(self) -> None:
        synced = await self.tree.sync()  # after login: the application id is known
        log.info("listener: %d application command(s) synced", len(synced))


@dataclass
class App:
    settings: Settings
    store: Store
    listener: commands.Bot
    speaker: SpeakerAccount | None
    rooms: RoomManager

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            await self.rooms.close()  # sessions flush their last words first
        if self.speaker is not None:
            with contextlib.suppress(Exception):
                await self.speaker.close()
        with contextlib.suppress(Exception):
            await self.listener.close()
        await self.store.close()


async def build(settings: Settings) -> App:
    """Everything wired, nothing connected yet (testable offline)."""
    endpoint = resolve_endpoint(settings)
    store = await Store.open(settings.store.path)
    listener = _Listener(command_prefix=commands.when_mentioned, intents=listener_intents(), help_command=None)
    speaker = SpeakerAccount() if settings.secrets.discord_speaker_token is not None else None
    rooms = RoomManager(
        settings, store, endpoint, discord_voice_join(listener, settings), playback=speaker,
        captions=DiscordCaptions(listener, CaptionRouter(settings.playback)),
    )
    await listener.add_cog(TranslateCog(listener, rooms, store, settings))
    return App(settings, store, listener, speaker, rooms)


async def serve(settings: Settings) -> int:
    assert settings.secrets.discord_token is not None
    try:
        app = await build(settings)
    except StoreError as e:
        raise ConfigError(f"store.path: {e}") from None
    try:
        if app.speaker is not None:
            await app.speaker.start(settings.secrets.discord_speaker_token)
        else:
            log.warning("DISCORD_SPEAKER_TOKEN is not set: captions only, no translated audio")
        await app.listener.start(settings.secrets.discord_token.get_secret_value())
    except discord.LoginFailure:
        log.error("Discord refused DISCORD_TOKEN: check the listener's bot token")
        return 1
    except PlaybackError as e:
        log.error("%s", e)
        return 1
    finally:
        await app.close()
    return 0


def main(args: argparse.Namespace) -> int:
    settings = load_settings(args.config)
    logging.basicConfig(level=settings.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    endpoint = resolve_endpoint(settings)  # a missing API key is a ConfigError here, before Discord
    log.info("backend %s → %s (%s protocol)", settings.backend, endpoint.url.split("?")[0], endpoint.protocol)
    if args.check:
        print(f"{args.config}: OK (backend {settings.backend})")
        return 0
    if settings.secrets.discord_token is None:
        raise ConfigError("set DISCORD_TOKEN in the environment (see README: inviting the two accounts)")
    with contextlib.suppress(KeyboardInterrupt):
        return asyncio.run(serve(settings))
    return 0
