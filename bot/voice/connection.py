"""A discord.py voice connection that cannot miss the answers to its own join.

discord.py 2.7 marks a voice connection as waiting for its VOICE_STATE_UPDATE / VOICE_SERVER_UPDATE only
after its gateway op 4 has been written. When the answers are handled before that (a fast gateway, or a
busy event loop resuming the writer late), discord.py ignores them as unexpected and the join times out
after 30 s. Here the state is set before the op 4 goes out. Both of Parley's accounts connect with it.
"""

from __future__ import annotations

import discord
from discord.voice_state import ConnectionFlowState, VoiceConnectionState


class PromptVoiceConnectionState(VoiceConnectionState):
    async def _voice_connect(self, *, self_deaf: bool = False, self_mute: bool = False) -> None:
        if self.state is ConnectionFlowState.disconnected:
            self.state = ConnectionFlowState.set_guild_voice_state
        await super()._voice_connect(self_deaf=self_deaf, self_mute=self_mute)


class VoiceClient(discord.VoiceClient):
    """`channel.connect(cls=VoiceClient)`: discord.py's client with the race above closed."""

    def create_connection_state(self) -> VoiceConnectionState:
        return PromptVoiceConnectionState(self)
