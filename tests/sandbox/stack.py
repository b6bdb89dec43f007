"""The whole bot as users meet it: `python -m bot run` as a process, the sandbox Discord, bot.localrt, and
people driven by disnake + Discord's libdave (a client stack that shares no code with Parley).

bot.localrt runs in the test process so a test can count the audio bytes that reach the backend (the
privacy tests); the bot reaches it over a real websocket like any backend.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from bot.localrt.config import LocalRTConfig
from bot.localrt.engines.bundle import Engines
from bot.localrt.server import LocalRTServer
from bot.sandbox.interactions import Interaction
from bot.sandbox.server import Sandbox
from bot.sandbox.state import Channel, Guild, Message, User
from tests.sandbox.disnake_member import RATE as HEARD_RATE
from tests.sandbox.disnake_member import DisnakeMember

ROOT = Path(__file__).resolve().parents[2]


def synthesize(text: str, path: Path, voice: str = "en-us") -> Path:
    subprocess.run(["espeak-ng", "-v", voice, "-s", "160", "-w", str(path), text], check=True, capture_output=True)
    return path


async def until(predicate: Callable[[], Any], timeout: float, what: str, step: float = 0.1) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        await asyncio.sleep(step)


def loud_seconds(x: np.ndarray, rate: int = HEARD_RATE, threshold: float = 0.02) -> float:
    """Seconds of 10 ms windows whose RMS is above `threshold` (speech, not silence frames)."""
    win = rate // 100
    n = len(x) // win
    if n == 0:
        return 0.0
    rms = np.sqrt((x[: n * win].reshape(n, win) ** 2).mean(axis=1))
    return float((rms > threshold).sum()) / 100


@dataclass
class Room:
    """A guild made for one test: source and output voice channels, a caption channel, the two bots in it."""

    guild: Guild
    source: Channel
    output: Channel
    captions: Channel


@dataclass
class BotProcess:
    proc: subprocess.Popen[bytes]
    log: Path

    def text(self) -> str:
        return self.log.read_text(encoding="utf-8", errors="replace")

    def stop(self, sig: int = signal.SIGINT, timeout: float = 30.0) -> tuple[int, float]:
        t = time.monotonic()
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode, time.monotonic() - t


@dataclass
class Stack:
    sb: Sandbox
    localrt: LocalRTServer
    tmp: Path
    listener: User
    voice: User
    bots: list[BotProcess] = field(default_factory=list)
    people: list[DisnakeMember] = field(default_factory=list)

    def config(self, **extra: Any) -> Path:
        data: dict[str, Any] = {
            "backend": f"ws://127.0.0.1:{self.localrt.port}",
            "discord": {"api_base": self.sb.api_base, "gateway_url": self.sb.gateway_url,
                        "ca_file": str(self.sb.tls.ca_file)},
            "store": {"path": str(self.tmp / f"parley-{len(self.bots)}.sqlite3")},
            "session": {"idle_timeout_s": 5, "close_timeout_s": 5},
            "log_level": "INFO",
        }
        data.update(extra)
        path = self.tmp / f"config-{len(self.bots)}.yaml"
        path.write_text(yaml.safe_dump(data), encoding="utf-8")
        return path

    async def start_bot(self, *, same_accounts: bool = False, **config: Any) -> BotProcess:
        """`python -m bot run` with the listener and speaker tokens; returns once both accounts are online.

        A second process gets accounts of its own (`self.listener`/`self.voice` then name the new pair), as two
        processes sharing a token would both receive every interaction — unless `same_accounts` (shards: each
        process identifies with its own `discord.shard_ids` and gets only its shards' guilds)."""
        if self.bots and not same_accounts:
            self.listener, self.voice = self.sb.add_bot(f"Parley {len(self.bots)}"), self.sb.add_bot("Parley Voice")
        online = (len(self.sb.gateway.sessions_of(self.listener.id)), len(self.sb.gateway.sessions_of(self.voice.id)))
        log = self.tmp / f"bot-{len(self.bots)}.log"
        env = {**os.environ, "DISCORD_TOKEN": self.listener.token, "DISCORD_SPEAKER_TOKEN": self.voice.token}
        for key in ("OPENAI_API_KEY", "PARLEY_BACKEND", "LOCALRT_API_KEY"):
            env.pop(key, None)
        with log.open("wb") as out:
            proc = subprocess.Popen([sys.executable, "-m", "bot", "run", "--config", str(self.config(**config))],
                                    stdout=out, stderr=subprocess.STDOUT, env=env, cwd=ROOT)
        bot = BotProcess(proc, log)
        self.bots.append(bot)
        await until(lambda: proc.poll() is not None or (
            len(self.sb.gateway.sessions_of(self.listener.id)) > online[0]
            and len(self.sb.gateway.sessions_of(self.voice.id)) > online[1]
            and (self.listener.id, None) in self.sb.world.commands), 60,
            "the bot to log in")
        assert proc.poll() is None, bot.text()
        return bot

    async def room(self, name: str) -> Room:
        owner = self.sb.add_person(f"{name} admin")
        guild = self.sb.add_guild(name, owner)
        room = Room(guild, self.sb.add_channel(guild, "Lobby"), self.sb.add_channel(guild, "Interpretation"),
                    self.sb.add_channel(guild, "captions", "text"))
        await self.sb.invite(guild, self.listener, self.voice)
        return room

    async def person(self, room: Room, name: str, channel: Channel | None = None) -> DisnakeMember:
        user = self.sb.add_person(name)
        await self.sb.invite(room.guild, user)
        member = DisnakeMember(self.sb, user, tmpdir=self.tmp / name)
        self.people.append(member)
        await member.start()
        if channel is not None:
            await member.join(channel)
        return member

    async def command(self, room: Room, who: User, sub: str, options: dict[str, Any] | None = None,
                      timeout: float = 45.0) -> Message:
        it: Interaction = await self.sb.command(room.guild, who, self.listener, sub, options or {})
        return await self.sb.reply(it, timeout)

    @contextlib.contextmanager
    def rate_limited(self, limit: int, per_s: float) -> Iterator[Any]:
        """The local Discord's REST limits tightened for a while, shared (429s with no headers to warn of them),
        then restored; yields the limits (their `limited` counts the 429s sent)."""
        limits = self.sb.rest.rate_limits
        old = (limits.limit, limits.per_s, limits.shared)
        limits.limit, limits.per_s, limits.shared = limit, per_s, True
        limits.buckets.clear()
        try:
            yield limits
        finally:
            limits.limit, limits.per_s, limits.shared = old

    def captions(self, room: Room) -> list[str]:
        return [m.content for m in self.sb.messages(room.captions)]


@contextlib.asynccontextmanager
async def stack(tmp: Path, **sandbox_options: Any):
    if shutil.which("espeak-ng") is None:
        raise RuntimeError("espeak-ng is needed (make test installs it)")
    config = LocalRTConfig(port=0)
    engines = await asyncio.to_thread(Engines.load, config)
    async with Sandbox(tmp / "sandbox", **sandbox_options) as sb, LocalRTServer(config, engines) as localrt:
        s = Stack(sb, localrt, tmp, sb.add_bot("Parley"), sb.add_bot("Parley Voice"))
        try:
            yield s
        finally:
            for m in s.people:
                with contextlib.suppress(Exception):
                    await m.close()
            for bot in s.bots:
                bot.stop(signal.SIGKILL if bot.proc.poll() is None else signal.SIGINT, 5)
