"""`python -m bot run`: validate the configuration and secrets, then run the two Discord accounts.

The listener (`DISCORD_TOKEN`) carries the `/translate` commands and receives voice; the speaker
account (`DISCORD_SPEAKER_TOKEN`) plays the translations in the output channel. Without a speaker
token Parley still runs, with captions only, and says so.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import re
import shutil
import signal
import ssl
import subprocess
import sys
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import aiohttp
import discord
import yarl
from discord.ext import commands

from bot.config import ConfigError, DiscordConfig, Settings, config_path, load_settings, resolve_endpoint
from bot.localrt.config import LocalRTConfig
from bot.metrics import MetricsServer
from bot.pipeline.rooms import (
    DiscordCaptions,
    DiscordNames,
    RoomManager,
    discord_output_link,
    discord_voice_join,
)
from bot.playback.captions import CaptionRouter
from bot.playback.speaker_account import PlaybackError, SpeakerAccount, speaker_intents
from bot.store import Store, StoreError, redact, sqlite_path
from cogs.translate import TranslateCog

log = logging.getLogger("parley")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", type=Path,
                   help="config file (default: ./config.yaml when it exists, else built-in defaults)")
    p.add_argument("--check", action="store_true",
                   help="check the configuration, the local engines and the tokens, then exit (0: it can run)")


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


def shard_options(config: DiscordConfig) -> dict[str, object]:
    """discord.py's sharding, the same for both accounts: this process runs `shard_ids` of `shard_count`. A guild's
    events (and its members' commands) reach only the process holding its shard, so its room lives there."""
    if config.shard_count is None:
        return {}
    options: dict[str, object] = {"shard_count": config.shard_count}
    if config.shard_ids is not None:
        options["shard_ids"] = list(config.shard_ids)
    return options


class _SyncsCommands:
    async def setup_hook(self) -> None:
        shard_ids = getattr(self, "shard_ids", None)
        if shard_ids is not None and 0 not in shard_ids:
            return  # commands are global: the process holding shard 0 syncs them, once
        synced = await self.tree.sync()  # type: ignore[attr-defined]  # after login: the application id is known
        log.info("listener: %d application command(s) synced", len(synced))


class _Listener(_SyncsCommands, commands.Bot):
    pass


class _ShardedListener(_SyncsCommands, commands.AutoShardedBot):
    pass


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
    store = await Store.open(settings.store.target)
    shards = shard_options(settings.discord)
    listener = (_ShardedListener if shards else _Listener)(
        command_prefix=commands.when_mentioned, intents=listener_intents(), help_command=None,
        **discord_client_options(settings.discord), **shards)
    speaker = None
    if settings.secrets.discord_speaker_token is not None:
        client_class = discord.AutoShardedClient if shards else discord.Client
        speaker = SpeakerAccount(client_class(intents=speaker_intents(), **discord_client_options(settings.discord),
                                              **shards),
                                 voice_config=settings.voice)  # it receives too, in two-way rooms
    rooms = RoomManager(
        settings, store, endpoint, discord_voice_join(listener, settings), playback=speaker,
        captions=DiscordCaptions(listener, CaptionRouter(settings.playback)), names=DiscordNames(listener),
        output_link=discord_output_link(speaker) if speaker is not None else None,
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
        raise ConfigError(f"{settings.store.field}: {e}") from None
    await app.rooms.start()  # the spend of sessions a killed previous run left open is recorded now
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
    beat: asyncio.Task[None] | None = None
    stopped = asyncio.create_task(stop.wait(), name="shutdown-signal")
    try:
        if app.speaker is not None:
            await app.speaker.start(settings.secrets.discord_speaker_token)
        else:
            log.warning("DISCORD_SPEAKER_TOKEN is not set: captions only, no translated audio")
        await app.listener.login(settings.secrets.discord_token.get_secret_value())
        gateway = asyncio.create_task(app.listener.connect(), name="listener-gateway")
        health_file = os.environ.get("PARLEY_HEALTH_FILE")
        if health_file:
            beat = asyncio.create_task(heartbeat(app.listener, Path(health_file)), name="health-heartbeat")
        await asyncio.wait({gateway, stopped}, return_when=asyncio.FIRST_COMPLETED)
        if gateway.done():
            gateway.result()  # the gateway ended by itself: its error is the process's error
    except discord.LoginFailure:
        log.error("Discord refused DISCORD_TOKEN: check the listener's bot token")
        return 1
    except (aiohttp.ClientConnectionError, OSError, TimeoutError) as e:
        if gateway is not None:
            raise  # login worked: a gateway failure is not this message
        log.error("cannot reach Discord at %s: %s", settings.discord.api_base, unreachable_reason(e))
        return 1
    except PlaybackError as e:
        log.error("%s", e)
        return 1
    finally:
        try:
            await app.close()  # rooms first, while the gateways still answer
        finally:
            stopped.cancel()
            if beat is not None:
                beat.cancel()
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


# -- run --check ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Finding:
    """One line of `run --check`: `ok`, a `note` (works, but read this) or an `error` (cannot work)."""

    level: str  # "ok" | "note" | "error"
    field: str  # the config field path or environment variable it is about
    text: str

    def __str__(self) -> str:
        return f"  {self.level:<5}  {self.field}: {self.text}"


def check_local(config: LocalRTConfig, target_language: str) -> list[Finding]:
    """Load bot.localrt's engines as `python -m bot localrt` would (seconds: whisper is loaded) and ask them
    whether `target_language` can be produced; each failure names the field that chose the engine."""
    from bot.localrt import languages
    from bot.localrt.engines.asr import EngineError, make_recognizer
    from bot.localrt.engines.bundle import Engines
    from bot.localrt.engines.mt import make_translator
    from bot.localrt.engines.tts import make_synthesizer

    def first_line(e: BaseException) -> str:
        return (str(e).strip().splitlines() or [type(e).__name__])[0]

    found: list[Finding] = []
    asr = mt = tts = None
    asr_field = "local.asr.model" if config.asr.model else "local.asr.engine"
    try:
        asr = make_recognizer(config.asr)
        model = getattr(asr, "label", None) or config.asr.model or config.asr.engine
        heard = sorted(asr.languages)
        hears = ", ".join(heard) if len(heard) <= 12 else f"{len(heard)} languages"
        found.append(Finding("ok", "local.asr", f"{config.asr.engine} ({model}) hears {hears}"))
    except (EngineError, OSError, ValueError) as e:
        found.append(Finding("error", asr_field, first_line(e)))
    if config.mt.engine == "ctranslate2" and not config.mt.model_path:
        found.append(Finding("error", "local.mt.model_path",
                             "mt.engine ctranslate2 needs model_path, a CTranslate2 model directory "
                             "(or mt.engine: apertium)"))
    else:
        try:
            mt = make_translator(config.mt)
            found.append(Finding("ok", "local.mt", f"{config.mt.engine}, {len(mt.pairs())} direct pair(s)"))
        except (EngineError, OSError, ValueError) as e:
            field = "local.mt.model_path" if config.mt.engine == "ctranslate2" else "local.mt.engine"
            found.append(Finding("error", field, first_line(e)))
    try:
        tts = make_synthesizer(config.tts)
        found.append(Finding("ok", "local.tts", f"{config.tts.engine}, {len(tts.voices())} language(s)"))
    except (EngineError, OSError, ValueError) as e:
        found.append(Finding("error", "local.tts.engine", first_line(e)))
    known = espeak_voice_names()
    for lang, voice in config.tts.voices.items():
        if known is None:
            break  # already reported: espeak-ng is not installed
        name, _, variant = voice.partition("+")
        if name.lower() not in known[0] or (variant and variant.lower() not in known[1]):
            found.append(Finding("error", f"local.tts.voices.{lang}",
                                 f"espeak-ng has no voice {voice!r} (`espeak-ng --voices` lists them)"))
    if asr is not None and mt is not None and tts is not None:
        engines = Engines(config=config, asr=asr, mt=mt, tts=tts)
        outputs = engines.output_languages()
        code = languages.normalize(target_language) or target_language
        into = [r for r in engines.routes() if r.target == code and r.source != code]
        route = next((r for r in into if r.source == "en"), into[0] if into else None)  # English first, if it can
        if route is None:
            can = ", ".join(sorted(outputs)) or "nothing"
            found.append(Finding("error", "target_language",
                                 f"bot.localrt cannot produce {target_language!r} with what is installed here (it can: "
                                 f"{can}; `python -m bot localrt --languages` shows how)"))
        else:
            sources = sorted({r.source for r in into})
            found.append(Finding("ok", "target_language",
                                 f"{target_language} from {len(sources)} language(s) ({', '.join(sources)}); e.g. "
                                 f"from {route.source}: translation {route.mt}, voice {route.tts}"))
    return found


def espeak_voice_names() -> tuple[set[str], set[str]] | None:
    """What `espeak-ng -v NAME[+VARIANT]` accepts as NAME (language codes, voice names, files) and VARIANT, in
    lower case; None without espeak-ng. (espeak-ng itself falls back to a language prefix: `-v no-such-voice`
    speaks Norwegian, so its exit status is no test.)"""
    exe = shutil.which("espeak-ng")
    if exe is None:
        return None
    names: set[str] = set()
    variants: set[str] = set()
    for arg, into in (("--voices", names), ("--voices=variant", variants)):
        try:
            listing = subprocess.run([exe, arg], capture_output=True, text=True, timeout=10, check=False).stdout
        except (OSError, subprocess.TimeoutExpired):
            return None
        for line in listing.splitlines()[1:]:
            parts = line.split()
            if len(parts) < 5:
                continue
            file = parts[4]
            into.update({parts[1].lower(), parts[3].lower(), file.lower(), file.rsplit("/", 1)[-1].lower()})
            into.update(code.lower() for code in re.findall(r"\(([^ )]+) \d+\)", " ".join(parts[5:])))
    variants.discard("variant")
    return names, variants


def _remote_languages(url: str, api_key: str | None, timeout: float = 3.0) -> frozenset[str] | None:
    """`GET /v1/languages` next to a ws:// backend (bot.localrt answers it); None when it does not answer."""
    parts = urlsplit(url)
    scheme = {"ws": "http", "wss": "https"}.get(parts.scheme)
    if scheme is None:
        return None
    req = urllib.request.Request(urlunsplit((scheme, parts.netloc, "/v1/languages", "", "")))
    if api_key:
        req.add_header("Authorization", f"Bearer {api_key}")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            listed = json.loads(resp.read())["output_languages"]
        return frozenset(str(x) for x in listed)
    except (OSError, ValueError, KeyError, TypeError):
        return None


def check_store(path: Path) -> Finding:
    """Can this user create (or open for writing) the SQLite file and its WAL files, without creating them?"""
    where = path if path.is_absolute() else Path.cwd() / path
    if where.exists():
        if where.is_dir():
            return Finding("error", "store.path", f"{where} is a directory; give a file name")
        if not os.access(where, os.R_OK | os.W_OK) or not os.access(where.parent, os.W_OK | os.X_OK):
            return Finding("error", "store.path", f"{where}: not writable by this user (uid {os.getuid()})")
        return Finding("ok", "store.path", f"{where} (exists, writable)")
    parent = where.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK):
        return Finding("error", "store.path",
                       f"cannot create {where}: {parent} is not writable by this user (uid {os.getuid()})")
    return Finding("ok", "store.path", f"{where} (will be created)")


def check(settings: Settings, source: str) -> int:
    """`run --check`: could `make run` run the bot with this file, this machine and this environment?

    Prints one line per finding. Exit 0 when it can (notes included), 2 when something cannot work, each
    named by its field or environment variable.
    """
    secrets = settings.secrets
    found: list[Finding] = []
    backend = settings.backend
    print(f"{source}: backend {backend}")
    if backend in ("openai", "openai-realtime"):
        if secrets.openai_api_key is not None:
            found.append(Finding("ok", "backend", f"{backend} with OPENAI_API_KEY"))
        else:
            found.append(Finding("note", "backend",
                                 f"{backend} needs OPENAI_API_KEY, which is not set: without it `make run` uses "
                                 "backend local, checked below (`python -m bot run` alone needs the key, or "
                                 "PARLEY_BACKEND=local and `python -m bot localrt` running)"))
            backend = "local"
    if backend == "local":
        found += check_local(settings.local, settings.target_language)
    elif backend not in ("openai", "openai-realtime"):
        endpoint = resolve_endpoint(settings)
        key = endpoint.api_key.get_secret_value() if endpoint.api_key is not None else None
        listed = _remote_languages(endpoint.url, key)
        if listed is None:
            found.append(Finding("note", "backend", f"{backend} does not list its languages now (not running yet, "
                                 "or not bot.localrt): target_language is checked when a member joins"))
        elif (languages_code := settings.target_language) in listed or languages_code.split("-")[0] in listed:
            found.append(Finding("ok", "target_language", f"{languages_code}, listed by {backend}"))
        else:
            found.append(Finding("error", "target_language", f"{backend} cannot produce {languages_code!r} "
                                 f"(it lists: {', '.join(sorted(listed)) or 'nothing'})"))
    if settings.store.url is None or settings.store.url.startswith("sqlite:"):
        found.append(check_store(Path(sqlite_path(settings.store.target))))
    else:
        found.append(Finding("ok", "store.url", f"{redact(settings.store.url)} (PostgreSQL: reached at start-up)"))
    if secrets.discord_token is None:
        found.append(Finding("error", "DISCORD_TOKEN",
                             "not set: the listener account's bot token (README: Inviting the two bot accounts); "
                             "without it `make run` runs the demo instead of the bot"))
    else:
        found.append(Finding("ok", "DISCORD_TOKEN", "set"))
    if secrets.discord_speaker_token is None:
        found.append(Finding("note", "DISCORD_SPEAKER_TOKEN",
                             "not set: the bot runs with captions only, no translated audio"))
    else:
        found.append(Finding("ok", "DISCORD_SPEAKER_TOKEN", "set"))
    for f in found:
        print(f)
    errors = [f.field for f in found if f.level == "error"]
    if errors:
        print(f"parley: {source} cannot work as it is: {', '.join(errors)}", file=sys.stderr)
        return 2
    print(f"{source}: OK")
    return 0


# -- health ------------------------------------------------------------------------------------------------


def listener_healthy(client: discord.Client) -> bool:
    """Logged in, READY, and the gateway socket open (false while it reconnects)."""
    ws = getattr(client, "ws", None)
    return bool(client.is_ready() and not client.is_closed() and ws is not None and ws.open)


async def heartbeat(client: discord.Client, path: Path, every_s: float = 10.0) -> None:
    """Touch `path` every `every_s` while the listener is healthy (PARLEY_HEALTH_FILE; the image's HEALTHCHECK
    requires it to be recent). The event loop itself must be running for it to be touched."""
    while True:
        if listener_healthy(client):
            try:
                path.touch()
                os.utime(path)
            except OSError as e:
                log.warning("PARLEY_HEALTH_FILE %s: %s", path, e.strerror)
                return
        await asyncio.sleep(every_s)


def unreachable_reason(e: BaseException) -> str:
    """`Connection refused`, `Name or service not known`, `timed out`, … rather than aiohttp's repr."""
    if isinstance(e, TimeoutError):
        return "timed out"
    if isinstance(e, aiohttp.ClientConnectorCertificateError):
        return f"TLS certificate not trusted ({e.certificate_error})"
    os_error = getattr(e, "os_error", None) or (e if isinstance(e, OSError) else None)
    if os_error is not None:
        if os_error.errno is not None and os_error.strerror and not os_error.strerror.startswith("Connect call"):
            return os_error.strerror
        if os_error.errno is not None:
            return os.strerror(os_error.errno)
    return str(e) or type(e).__name__


def main(args: argparse.Namespace) -> int:
    settings = load_settings(config_path(args.config))
    logging.basicConfig(level=settings.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.check:
        return check(settings, str(config_path(args.config) or "(defaults)"))
    endpoint = resolve_endpoint(settings)  # a missing API key is a ConfigError here, before Discord
    log.info("backend %s → %s (%s protocol)", settings.backend, endpoint.url.split("?")[0], endpoint.protocol)
    if settings.secrets.discord_token is None:
        raise ConfigError("set DISCORD_TOKEN in the environment (see README: inviting the two accounts)")
    with contextlib.suppress(KeyboardInterrupt):
        return asyncio.run(serve(settings))
    return 0
