"""`MixerSource`: the room's `Mixer` as the discord.py `AudioSource` the speaker account plays.

discord.py's player thread calls `read()` every 20 ms and encodes the 48 kHz stereo s16le with libopus
(`is_opus()` is False). The source never returns b"" while open — that would end the player — so a quiet
room is sent as silence and the player keeps its clock; `close()` ends playback at the next read.
"""

from __future__ import annotations

import discord

from bot.audio.mixer import Mixer


class MixerSource(discord.AudioSource):
    def __init__(self, mixer: Mixer) -> None:
        self.mixer = mixer
        self._closed = False

    def read(self) -> bytes:
        if self._closed:
            return b""
        return self.mixer.read_frame()

    def is_opus(self) -> bool:
        return False

    def close(self) -> None:
        """Ask the player to stop: its next read gets b"" and it ends (and calls `cleanup`)."""
        self._closed = True

    def cleanup(self) -> None:
        # The mixer belongs to the room and outlives this source (a reconnect plays a new one on it).
        self._closed = True
