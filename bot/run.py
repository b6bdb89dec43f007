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
import signal
import ssl
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import discord
import yarl
from discord.ext import commands

from bot.config import ConfigError, DiscordConfig, Settings, load_settings, resolve_endpoint
from bot.metrics import MetricsServer
from bot.pipeline.rooms import DiscordCaptions, RoomManager, discord_voice_join
from bot.playback.captions import CaptionRouter
from bot.playback.speaker_account import PlaybackError, SpeakerAccount, speaker_intents
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


def discord_client_options(config: DiscordConfig) -> dict[str, object]:
    """Point discord.py at the configured Discord; the options every `discord.Client` here is built with.

    discord.py keeps the REST base and the gateway URL as class attributes, so they are set for the whole
    process (both accounts talk to the same Discord). Voice websockets go through the client's HTTP session,
    so the connector's TLS context also covers them.
    """
    discord.http.Route.BASE = config.api_base
    discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY = yarl.URL(config.gateway_url)
    if config.ca_file is None:
        return {}
    context = ssl.create_default_context()
    context.load_verify_locations(cafile=str(config.ca_file))
    return {"connector": aiohttp.TCPConnector(ssl=context)}


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
    listener = _Listener(command_prefix=commands.when_mentioned, intents=listener_intents(), help_command=None,
                         **discord_client_options(settings.discord))
    speaker = None
    if settings.secrets.discord_speaker_token is not None:
        speaker = SpeakerAccount(discord.Client(intents=speaker_intents(), **discord_client_options(settings.discord)))
    rooms = RoomManager(
        settings, store, endpoint, discord_voice_join(listener, settings), playback=speaker,
        captions=DiscordCaptions(listener, CaptionRouter(settings.playback)),
    )
    await listener.add_cog(TranslateCog(listener, rooms, store, settings))
    return App(settings, store, listener, speaker, rooms)


async def serve(settings: Settings) -> int:
    """Run both accounts until SIGINT/SIGTERM, then shut down gracefully.

    The signal only sets an event: rooms close (last words flushed, voice left) while both gateways still
    run, so discord.py sees its voice-state answers and nothing waits for a timeout. A second signal stops
    at once.
    """
    assert settings.secrets.discord_token is not None
    try:
        app = await build(settings)
    except StoreError as e:
        raise ConfigError(f"store.path: {e}") from None
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    main_task = asyncio.current_task()

    def on_signal(signame: str) -> None:
        if stop.is_set() and main_task is not None:
            log.warning("%s again: stopping now", signame)
            main_task.cancel()
        else:
            log.info("%s: shutting down (send it again to stop at once)", signame)
            stop.set()

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, on_signal, sig.name)
    metrics = None
    if settings.metrics.port is not None:
        metrics = MetricsServer(app, settings.metrics.host, settings.metrics.port)
        try:
            metrics.start()
        except OSError as e:
            await app.close()
            raise ConfigError(f"metrics.port: cannot listen on {settings.metrics.host}:{settings.metrics.port} "
                              f"({e.strerror})") from None
    gateway: asyncio.Task[None] | None = None
    stopped = asyncio.create_task(stop.wait(), name="shutdown-signal")
    try:
        if app.speaker is not None:
            await app.speaker.start(settings.secrets.discord_speaker_token)
        else:
            log.warning("DISCORD_SPEAKER_TOKEN is not set: captions only, no translated audio")
        await app.listener.login(settings.secrets.discord_token.get_secret_value())
        gateway = asyncio.create_task(app.listener.connect(), name="listener-gateway")
        await asyncio.wait({gateway, stopped}, return_when=asyncio.FIRST_COMPLETED)
        if gateway.done():
            gateway.result()  # the gateway ended by itself: its error is the process's error
    except discord.LoginFailure:
        log.error("Discord refused DISCORD_TOKEN: check the listener's bot token")
        return 1
    except PlaybackError as e:
        log.error("%s", e)
        return 1
    finally:
        try:
            await app.close()  # rooms first, while the gateways still answer
        finally:
            stopped.cancel()
            if gateway is not None:
                gateway.cancel()
                with contextlib.suppress(asyncio.CancelledError, discord.DiscordException, OSError):
                    await gateway
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(sig)
            if metrics is not None:
                metrics.close()
    log.info("stopped")
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
