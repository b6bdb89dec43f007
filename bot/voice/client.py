"""discord.py glue: a VoiceClient that receives every member's speech.

Usage (the listener account)::

    vc = await channel.connect(cls=ListeningVoiceClient.configured(settings.voice))
    while True:
        frame = await vc.frames.get()                       # VoiceFrame(user_id, pcm, end)

discord.py 2.7.1 has no receive API; it does expose the two seams used here: a voice-gateway hook
(``VoiceConnectionState(..., hook=)``, called as ``hook(ws, msg)`` after discord.py has processed the
message) and raw UDP listeners (``VoiceConnectionState.add_socket_listener``, called on its
socket-reader thread). The DAVE session is read from ``_connection.dave_session`` on every frame
because discord.py replaces it on transitions. It is used from the receive thread while discord.py
may be processing an MLS commit on the event loop; davey then refuses the concurrent borrow with an
exception, which counts that one frame as ``dave_failed`` (concealed) instead of racing.
"""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path
from typing import Any, ClassVar

import discord
from discord.voice_state import VoiceConnectionState

from bot.voice.capture import CaptureWriter
from bot.voice.config import VoiceConfig
from bot.voice.connection import PromptVoiceConnectionState, VoiceClient
from bot.voice.dave import DaveDecryptor
from bot.voice.receiver import GATEWAY_OPS, VoiceReceiver
from bot.voice.worker import AsyncioFrameSink, ExcludePredicate, ReceiveWorker, VoiceFrame

_log = logging.getLogger(__name__)


def capture_path(directory: Path, guild_id: int, channel_id: int) -> Path:
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    return directory / f"{guild_id}-{channel_id}-{stamp}.jsonl"


class ListeningVoiceClient(VoiceClient):
    """A VoiceClient whose members' speech arrives on :attr:`frames` as 20 ms 24 kHz pcm16 frames."""

    voice_config: ClassVar[VoiceConfig] = VoiceConfig()
    capture_exclude: ClassVar[ExcludePredicate | None] = None
    """Members never written to a capture (bound by :meth:`configured`; see :attr:`exclude`)."""

    def __init__(self, client: discord.Client, channel: Any) -> None:
        super().__init__(client, channel)
        config = self.voice_config
        self.frames: asyncio.Queue[VoiceFrame] = asyncio.Queue(maxsize=config.frame_queue_size)
        self.ended = asyncio.Event()  # set when the connection is gone (our disconnect, a kick, a deleted channel)
        self._sink = AsyncioFrameSink(self.loop, self.frames)
        capture = None
        if config.capture:
            members = {m.id: m.display_name for m in getattr(channel, "members", ())}
            path = capture_path(config.capture_dir, channel.guild.id, channel.id)
            capture = CaptureWriter(path, members)
            _log.info("voice capture: writing %s", path)
        dave = DaveDecryptor(self._dave_session, e2ee_required=self._e2ee_required)
        receiver = VoiceReceiver(self._sink, config, dave=dave)
        sink = self._sink
        self.receive = ReceiveWorker(
            receiver,
            capture=capture,
            after_burst=sink.flush,
            exclude=type(self).capture_exclude,
            dropped=lambda: sink.dropped,
        )
        self.receive.start()

    @classmethod
    def configured(
        cls, config: VoiceConfig, *, exclude: ExcludePredicate | None = None
    ) -> type[ListeningVoiceClient]:
        """A subclass bound to ``config`` (``channel.connect(cls=...)`` only passes client and channel).

        ``exclude(user_id) -> bool``: members whose audio is never written to a capture (opted out);
        consulted on the receive thread for every captured datagram, so it must be cheap and
        thread-safe. It is in place before the first datagram arrives.
        """
        attrs: dict[str, Any] = {"voice_config": config}
        if exclude is not None:
            attrs["capture_exclude"] = staticmethod(exclude)
        return type(cls.__name__, (cls,), attrs)

    @property
    def exclude(self) -> ExcludePredicate | None:
        """Members never captured; assignable at any time (takes effect from the next datagram)."""
        return self.receive.exclude

    @exclude.setter
    def exclude(self, predicate: ExcludePredicate | None) -> None:
        self.receive.exclude = predicate

    def create_connection_state(self) -> VoiceConnectionState:
        return PromptVoiceConnectionState(self, hook=self._voice_ws_hook)

    def _dave_session(self) -> Any:
        return self._connection.dave_session

    def _e2ee_required(self) -> bool:
        return self._connection.dave_protocol_version > 0

    async def _voice_ws_hook(self, ws: Any, msg: dict[str, Any]) -> None:
        """Forward the events the receiver needs (4: key, 5/12: SSRC map, 11/13: join/leave)."""
        op = msg.get("op")
        if op in GATEWAY_OPS:
            self.receive.feed_gateway(op, msg.get("d"))

    async def connect(self, *, reconnect: bool, timeout: float, self_deaf: bool = False,
                      self_mute: bool = False) -> None:
        await super().connect(reconnect=reconnect, timeout=timeout, self_deaf=self_deaf, self_mute=self_mute)
        # Only now does the UDP socket exist; the reader thread keeps listeners across reconnects.
        self._connection.add_socket_listener(self.receive.feed_datagram)

    def cleanup(self) -> None:
        self._connection.remove_socket_listener(self.receive.feed_datagram)
        self.receive.stop(timeout=0)  # flushes on its own thread; never wait on the event loop
        super().cleanup()
        self.loop.call_soon_threadsafe(self.ended.set)

    @property
    def receive_counters(self) -> dict[str, Any]:
        """Counters of this connection's receive path, JSON-ready, safe from any thread (for metrics).

        ``received``/``pending``/``outcomes`` (every datagram, :mod:`bot.audio.outcomes`), ``frames``
        (decoder stats), ``dave_failures`` (reason → frames), ``overflow`` (datagrams refused: worker
        behind), ``frames_dropped`` (decoded frames dropped: :attr:`frames` full, same as
        :attr:`frames_dropped`) and, when capturing, ``capture`` (written, excluded, unmapped_dropped,
        not_audio_dropped, held).
        """
        return self.receive.counters()

    @property
    def frames_dropped(self) -> int:
        """Frames dropped because the consumer of :attr:`frames` fell behind."""
        return self._sink.dropped
