"""Simulated people for the demo: they join a voice channel, speak WAV files and record what they hear.

A `Member` is a real client of the sandbox — a discord.py `Client` with its own gateway session and voice
connection (DAVE included) — so its speech travels the same way a person's does: Opus-encoded, DAVE- and
transport-encrypted, through the SFU. What it hears is received with Parley's voice receive path and
laid out on the wall clock, gaps included, so `heard()` is what a person in the channel would have heard.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import discord
import numpy as np
import soxr

from bot.audio.pcm import to_float, to_pcm16
from bot.audiofile import read_wav_24k_mono
from bot.sandbox.state import Channel, User
from bot.voice.client import ListeningVoiceClient
from bot.voice.config import VoiceConfig

log = logging.getLogger("parley.sandbox.member")

RATE = 24000
FRAME = 480  # 20 ms at 24 kHz
QUIET = 0.01  # amplitude under which a frame counts as silence (players send silence between words too)


def _intents() -> discord.Intents:
    intents = discord.Intents.none()
    intents.guilds = True
    intents.voice_states = True
    return intents


@dataclass
class Recording:
    """What one listener heard, per speaking account, placed at arrival time (24 kHz mono float32)."""

    t0: float = field(default_factory=time.monotonic)
    tracks: dict[int, np.ndarray] = field(default_factory=dict)
    cursors: dict[int, int] = field(default_factory=dict)
    onsets: list[tuple[float, int]] = field(default_factory=list)  # (seconds since t0, user) of each sound start
    last_sound: dict[int, float] = field(default_factory=dict)  # user → monotonic time of their last loud frame

    def add(self, user_id: int, pcm16: bytes, arrived: float) -> None:
        x = to_float(pcm16)
        at = int((arrived - self.t0) * RATE) - len(x)
        cursor = self.cursors.get(user_id, 0)
        if at > cursor + 3 * FRAME:  # a gap: the sender was silent
            cursor = at
        track = self.tracks.get(user_id, np.zeros(0, np.float32))
        end = cursor + len(x)
        if len(track) < end:
            track = np.concatenate([track, np.zeros(end - len(track) + RATE, np.float32)])
        quiet_before = not np.any(np.abs(track[max(0, cursor - 10 * FRAME):cursor]) > QUIET)
        track[cursor:end] += x
        loud = bool(np.max(np.abs(x)) > QUIET) if len(x) else False
        if loud:
            self.last_sound[user_id] = arrived
            if quiet_before:
                self.onsets.append((cursor / RATE, user_id))
        self.tracks[user_id] = track
        self.cursors[user_id] = end

    def mix(self, user_id: int | None = None) -> np.ndarray:
        tracks = [t for u, t in self.tracks.items() if user_id is None or u == user_id]
        if not tracks:
            return np.zeros(0, np.float32)
        out = np.zeros(max(len(t) for t in tracks), np.float32)
        for t in tracks:
            out[: len(t)] += t
        end = max(self.cursors.get(u, 0) for u in self.tracks if user_id is None or u == user_id)
        return np.clip(out[:end], -1, 1)


class Member:
    """A person in the sandbox. `await m.start()`, `await m.join(channel)`, `await m.speak(wav)`, `m.heard()`."""

    def __init__(self, user: User, client_options: dict[str, object] | None = None) -> None:
        self.user = user
        self.client = discord.Client(intents=_intents(), **(client_options or {}))
        self.voice: ListeningVoiceClient | None = None
        self.recording = Recording()
        self._tasks: list[asyncio.Task[None]] = []

    @property
    def name(self) -> str:
        return self.user.name

    async def start(self, timeout: float = 20.0) -> None:
        await self.client.login(self.user.token)
        runner = asyncio.create_task(self.client.connect(reconnect=False), name=f"member-{self.name}")
        self._tasks.append(runner)
        ready = asyncio.create_task(self.client.wait_until_ready())
        try:
            done, _ = await asyncio.wait({runner, ready}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        finally:
            ready.cancel()
        if runner in done:
            raise ConnectionError(f"{self.name}: gateway ended before READY: {runner.exception()!r}")
        if not done:
            raise TimeoutError(f"{self.name}: no READY within {timeout:.0f} s")

    async def join(self, channel: Channel, timeout: float = 20.0) -> None:
        """Join the voice channel and start recording what is heard there."""
        guild = self.client.get_guild(channel.guild_id)
        target = guild.get_channel(channel.id) if guild else None
        if not isinstance(target, discord.VoiceChannel):
            raise LookupError(f"{self.name} cannot see voice channel {channel.name}")
        self.voice = await target.connect(cls=ListeningVoiceClient.configured(VoiceConfig()), timeout=timeout)
        self.recording = Recording()
        self._tasks.append(asyncio.create_task(self._record(self.voice), name=f"record-{self.name}"))

    async def _record(self, voice: ListeningVoiceClient) -> None:
        while True:
            frame = await voice.frames.get()
            if frame.pcm:
                self.recording.add(frame.user_id, frame.pcm, time.monotonic())

    async def speak(self, wav: Path | bytes) -> float:
        """Say a WAV file (or 24 kHz mono pcm16) into the channel; returns when it has been played.

        Returns the monotonic time the first frame was sent (the utterance's start on the wall clock)."""
        if self.voice is None:
            raise RuntimeError(f"{self.name} is not in a voice channel")
        pcm24 = read_wav_24k_mono(wav) if isinstance(wav, Path) else wav
        x = to_float(pcm24)
        stereo = np.repeat(soxr.resample(x, RATE, 48000, quality="HQ")[:, None], 2, axis=1)
        pcm48 = to_pcm16(stereo)
        done = asyncio.get_running_loop().create_future()
        loop = asyncio.get_running_loop()

        def after(error: Exception | None) -> None:  # on discord.py's player thread
            loop.call_soon_threadsafe(lambda: done.done() or done.set_result(error))

        started = time.monotonic()
        self.voice.play(discord.PCMAudio(io.BytesIO(pcm48)), after=after)
        error = await done
        if error is not None:
            raise RuntimeError(f"{self.name}: playback failed: {error!r}")
        return started

    def heard(self, user_id: int | None = None) -> np.ndarray:
        """Everything heard so far (or only from `user_id`), 24 kHz mono float32 from the join on."""
        return self.recording.mix(user_id)

    async def leave(self) -> None:
        if self.voice is not None:
            await self.voice.disconnect(force=True)
            self.voice = None

    async def close(self) -> None:
        try:
            with contextlib.suppress(discord.DiscordException, ConnectionError):
                await self.leave()
            await self.client.close()
        finally:
            for task in self._tasks:
                task.cancel()
            for task in self._tasks:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
            self._tasks.clear()
