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
_BURST = 64  # datagrams handled before frames are handed to the event loop
MAX_BACKLOG = 5000  # ~4 s of a 25-speaker room; beyond it the worker is hopelessly behind


@dataclass(frozen=True, slots=True)
class VoiceFrame:
    """20 ms of a member's speech (24 kHz mono s16le, 960 bytes), or the end of their stream."""

    user_id: int
    pcm: bytes
    end: bool = False


class AsyncioFrameSink:
    """FrameSink that hands frames to an ``asyncio.Queue`` on ``loop``.

    Frames are batched on the worker thread and posted with one ``call_soon_threadsafe`` per
    :meth:`flush` (the worker flushes after each burst of datagrams), so a busy room costs the
    event loop one wake-up per burst rather than one per frame.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, frames: asyncio.Queue[VoiceFrame]) -> None:
        self._loop = loop
        self._frames = frames
        self._batch: list[VoiceFrame] = []
        self.dropped = 0

    def _put_all(self, batch: list[VoiceFrame]) -> None:
        put = self._frames.put_nowait
        for item in batch:
            try:
                put(item)
            except asyncio.QueueFull:
                self.dropped += 1

    def on_frame(self, user_id: int, pcm: bytes) -> None:
        self._batch.append(VoiceFrame(user_id, pcm))

    def on_stream_end(self, user_id: int) -> None:
        self._batch.append(VoiceFrame(user_id, b"", True))

    def flush(self) -> None:
        if self._batch:
            batch, self._batch = self._batch, []
            try:
                self._loop.call_soon_threadsafe(self._put_all, batch)
            except RuntimeError:  # loop closed during shutdown
                self.dropped += len(batch)


class ReceiveWorker:
    """Owns a receiver on a daemon thread; the ``feed_*`` methods are safe from any thread."""

    def __init__(
        self,
        receiver: VoiceReceiver,
        *,
        capture: CaptureWriter | None = None,
        clock: Callable[[], float] = time.monotonic,
        after_burst: Callable[[], None] | None = None,
    ) -> None:
        self.receiver = receiver
        self._after_burst = after_burst
        self.overflow = 0
        """Datagrams refused because the worker was :data:`MAX_BACKLOG` behind (never reach the receiver)."""
        self.capture = capture
        self._clock = clock
        self._t0 = clock()
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._snapshot: dict[str, Any] = receiver.counters()
        self._snapshot_at = 0.0
        self._thread = threading.Thread(target=self._run, name="parley-voice-receive", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def feed_datagram(self, data: bytes) -> None:
        """Socket listener: called by discord.py's SocketReader thread for every datagram."""
        q = self._queue
        if q.qsize() >= MAX_BACKLOG:
            self.overflow += 1
            return
        q.put((self._clock(), data))

    def feed_gateway(self, op: int, d: Any) -> None:
        self._queue.put((self._clock(), op, d))

    def stop(self, timeout: float | None = 2.0) -> None:
        """Flush and end all streams, close the capture; wait up to ``timeout`` s (0: don't wait)."""
        if self._thread.is_alive():
            self._queue.put(_STOP)
            if timeout:
                self._thread.join(timeout)

    def counters(self) -> dict[str, Any]:
        """The receiver's counters plus ``overflow``; from any thread, never waits.

        A snapshot the worker publishes at most every 20 ms (and when it stops), so it can lag
        the receiver by one tick.
        """
        counters = dict(self._snapshot)
        counters["overflow"] = self.overflow
        return counters

    def _run(self) -> None:
        q, after_burst = self._queue, self._after_burst
        next_tick = self._clock() + TICK_SECONDS
        stopping = False
        while not stopping:
            burst: list[Any] = []
            try:
                burst.append(q.get(timeout=TICK_SECONDS))
                while len(burst) < _BURST:
                    burst.append(q.get_nowait())
            except queue.Empty:
                pass
            for item in burst:
                if item is _STOP:
                    stopping = True
                    break
                self._handle(item)
            now = self._clock()
            if now >= next_tick and not stopping:
                self._guard(self.receiver.tick, now)
                next_tick = now + TICK_SECONDS
            if stopping:
                self._guard(self.receiver.close)
                if self.capture is not None:
                    self._guard(self.capture.close)
            if stopping or now - self._snapshot_at >= TICK_SECONDS:
                self._snapshot = self.receiver.counters()  # one reference swap: atomic for readers
                self._snapshot_at = now
            if after_burst is not None:
                self._guard(after_burst)

    @staticmethod
    def _guard(fn: Callable[..., Any], *args: Any) -> None:
        try:
            fn(*args)
        except Exception:  # the thread must survive anything
            _log.exception("voice receive worker error")

    def _handle(self, item: tuple[Any, ...]) -> None:
        try:
            if len(item) == 2:
                self.receiver.feed(item[1], item[0])
                if self.capture is not None:
                    self.capture.datagram(item[0] - self._t0, item[1])
            else:
                self._gateway(*item)
        except Exception:
            _log.exception("voice receive worker error")

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
