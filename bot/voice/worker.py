"""ReceiveWorker: runs a VoiceReceiver on its own thread so Opus/soxr never block the event loop.

Datagrams (from discord.py's socket-reader thread) and gateway events (from the event loop) go into
one queue, so their relative order is preserved; frames come back to asyncio through
:class:`AsyncioFrameSink`. libopus (ctypes) and soxr release the GIL while they work.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from bot.voice.capture import CaptureWriter
from bot.voice.receiver import OP_SESSION_DESCRIPTION, VoiceReceiver

_log = logging.getLogger(__name__)
TICK_SECONDS = 0.02
_STOP = object()


@dataclass(frozen=True, slots=True)
class VoiceFrame:
    """20 ms of a member's speech (24 kHz mono s16le, 960 bytes), or the end of their stream."""

    user_id: int
    pcm: bytes
    end: bool = False


class AsyncioFrameSink:
    """FrameSink that hands frames to an ``asyncio.Queue`` on ``loop`` (thread-safe)."""

    def __init__(self, loop: asyncio.AbstractEventLoop, frames: asyncio.Queue[VoiceFrame]) -> None:
        self._loop = loop
        self._frames = frames
        self.dropped = 0

    def _put(self, item: VoiceFrame) -> None:
        try:
            self._frames.put_nowait(item)
        except asyncio.QueueFull:
            self.dropped += 1

    def on_frame(self, user_id: int, pcm: bytes) -> None:
        self._loop.call_soon_threadsafe(self._put, VoiceFrame(user_id, pcm))

    def on_stream_end(self, user_id: int) -> None:
        self._loop.call_soon_threadsafe(self._put, VoiceFrame(user_id, b"", True))


class ReceiveWorker:
    """Owns a receiver on a daemon thread; the ``feed_*`` methods are safe from any thread."""

    def __init__(
        self,
        receiver: VoiceReceiver,
        *,
        capture: CaptureWriter | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.receiver = receiver
        self.capture = capture
        self._clock = clock
        self._t0 = clock()
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name="parley-voice-receive", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def feed_datagram(self, data: bytes) -> None:
        """Socket listener: called by discord.py's SocketReader thread for every datagram."""
        self._queue.put((self._clock(), data))

    def feed_gateway(self, op: int, d: Any) -> None:
        self._queue.put((self._clock(), op, d))

    def stop(self, timeout: float = 2.0) -> None:
        """Flush and end all streams, close the capture, join the thread."""
        if self._thread.is_alive():
            self._queue.put(_STOP)
            self._thread.join(timeout)

    def counters(self) -> dict[str, Any]:
        with self._lock:
            return self.receiver.counters()

    def _run(self) -> None:
        receiver, q, capture = self.receiver, self._queue, self.capture
        next_tick = self._clock() + TICK_SECONDS
        while True:
            try:
                item = q.get(timeout=TICK_SECONDS)
            except queue.Empty:
                item = None
            if item is _STOP:
                break
            with self._lock:
                try:
                    if item is not None:
                        if len(item) == 2:
                            receiver.feed(item[1], item[0])
                            if capture is not None:
                                capture.datagram(item[0] - self._t0, item[1])
                        else:
                            self._gateway(*item)
                    now = self._clock()
                    if now >= next_tick:
                        receiver.tick(now)
                        next_tick = now + TICK_SECONDS
                except Exception:  # the thread must survive anything
                    _log.exception("voice receive worker error")
        with self._lock:
            receiver.flush()
            if capture is not None:
                capture.close()

    def _gateway(self, t: float, op: int, d: Any) -> None:
        self.receiver.on_gateway(op, d, t)
        capture = self.capture
        if capture is None:
            return
        if op == OP_SESSION_DESCRIPTION and not capture.started and isinstance(d, dict):
            try:
                capture.start(d["mode"], d["secret_key"])
            except (KeyError, TypeError, ValueError, OSError):
                _log.exception("voice capture: cannot start")
            return
        capture.event(t - self._t0, op, d)
