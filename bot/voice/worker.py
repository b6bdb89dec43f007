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

from bot.audio.outcomes import Outcome
from bot.voice.capture import CaptureWriter
from bot.voice.hold import HeldPacket, UnmappedHold
from bot.voice.receiver import OP_CLIENT_CONNECT, OP_SESSION_DESCRIPTION, OP_SPEAKING, VoiceReceiver
from bot.voice.rtp import RtpHeader, parse_rtp

_log = logging.getLogger(__name__)
TICK_SECONDS = 0.02
_STOP = object()
_BURST = 64  # datagrams handled before frames are handed to the event loop
MAX_BACKLOG = 5000  # ~4 s of a 25-speaker room; beyond it the worker is hopelessly behind

ExcludePredicate = Callable[[int], bool]
"""User id → True when that member's audio must never be captured (opted out). Called on the receive
thread for each captured audio datagram: it must be cheap, thread-safe and non-blocking (e.g. a lookup
in a set the event loop replaces wholesale). If it raises, the datagram is left out (fail closed)."""


@dataclass(frozen=True, slots=True)
class VoiceFrame:
    """20 ms of a member's speech (24 kHz mono s16le, 960 bytes), or the end of their stream."""

    user_id: int
    pcm: bytes
    end: bool = False
    at: float = 0.0  # when the datagram that completed it arrived (monotonic): see bot.latency


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

    def on_frame(self, user_id: int, pcm: bytes, at: float = 0.0) -> None:
        self._batch.append(VoiceFrame(user_id, pcm, False, at))

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
        exclude: ExcludePredicate | None = None,
        dropped: Callable[[], int] | None = None,
    ) -> None:
        self.receiver = receiver
        self._after_burst = after_burst
        self._dropped = dropped
        self.overflow = 0
        """Datagrams refused because the worker was :data:`MAX_BACKLOG` behind (never reach the receiver)."""
        self.capture = capture
        self.exclude = exclude
        """Members never captured (see :data:`ExcludePredicate`); may be replaced at any time."""
        cfg = receiver.config
        self._capture_hold = UnmappedHold(cfg.unmapped_hold_packets, cfg.unmapped_hold_seconds)
        self._capture_count = {"written": 0, "excluded": 0, "unmapped_dropped": 0, "not_audio_dropped": 0}
        self._exclude_failed = False
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
        """The receiver's counters plus ``overflow`` (datagrams refused, worker behind),
        ``frames_dropped`` (decoded frames the consumer had no room for, from ``dropped``) and, with a
        capture, ``capture`` (datagrams written / left out by reason); from any thread, never waits.

        A snapshot the worker publishes at most every 20 ms (and when it stops), so it can lag
        the receiver by one tick.
        """
        counters = dict(self._snapshot)
        counters["overflow"] = self.overflow
        counters["frames_dropped"] = self._dropped() if self._dropped is not None else 0
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
                if self.capture is not None and len(self._capture_hold):
                    self._capture_count["unmapped_dropped"] += self._capture_hold.expire(now)
                next_tick = now + TICK_SECONDS
            if stopping:
                self._guard(self.receiver.close)
                if self.capture is not None:
                    self._capture_count["unmapped_dropped"] += self._capture_hold.clear()
                    self._guard(self.capture.close)
            if stopping or now - self._snapshot_at >= TICK_SECONDS:
                snapshot = self.receiver.counters()
                if self.capture is not None:
                    snapshot["capture"] = {**self._capture_count, "held": len(self._capture_hold)}
                self._snapshot = snapshot  # one reference swap: atomic for readers
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
                    self._capture_datagram(item[0], item[1])
            else:
                self._gateway(*item)
        except Exception:
            _log.exception("voice receive worker error")

    # -- the capture: never an excluded member's audio -----------------------------------------------

    def _capture_datagram(self, t: float, data: bytes) -> None:
        """Write ``data`` to the capture if it may be kept.

        Opus RTP is kept only when its SSRC is mapped to a member that :attr:`exclude` does not
        exclude; from a not yet mapped SSRC it is held (bounded like the receiver's hold) and written
        when op 5/12 maps it, or dropped from the capture when the hold expires or overflows. Other RTP
        payload types (video, whose owner is not known) and malformed RTP are left out; datagrams that
        carry no media (RTCP, keepalives, IP discovery) are written.
        """
        header = parse_rtp(data)
        if header.__class__ is not RtpHeader:
            if header in (Outcome.NOT_RTP, Outcome.RTCP):
                self._write_datagram(t, data)
            else:
                self._capture_count["not_audio_dropped"] += 1
            return
        ssrc = header.ssrc  # type: ignore[union-attr]
        user = self.receiver.user_of(ssrc)
        if user is None:
            evicted = self._capture_hold.add(HeldPacket(t, ssrc, 0, data))
            self._capture_count["unmapped_dropped"] += evicted
        elif self._excluded(user):
            self._capture_count["excluded"] += 1
        else:
            self._write_datagram(t, data)

    def _write_datagram(self, t: float, data: bytes) -> None:
        assert self.capture is not None
        if self.capture.started:
            self.capture.datagram(t - self._t0, data)
            self._capture_count["written"] += 1

    def _excluded(self, user_id: int) -> bool:
        exclude = self.exclude
        if exclude is None:
            return False
        try:
            return bool(exclude(user_id))
        except Exception:
            if not self._exclude_failed:
                self._exclude_failed = True
                _log.exception("voice capture: the exclude predicate failed; leaving such audio out")
            return True

    def _release_held(self, op: int, d: Any) -> None:
        """After op 5/12 mapped an SSRC: its held datagrams go to the capture (or are excluded)."""
        key = "ssrc" if op == OP_SPEAKING else "audio_ssrc"
        try:
            ssrc = int(d.get(key) or 0)
        except (AttributeError, TypeError, ValueError):
            return
        held = self._capture_hold.release(ssrc) if ssrc else []
        if not held:
            return
        user = self.receiver.user_of(ssrc)
        if user is None:  # not an audio mapping after all (e.g. marked as video)
            self._capture_count["unmapped_dropped"] += len(held)
        elif self._excluded(user):
            self._capture_count["excluded"] += len(held)
        else:
            for packet in held:
                self._write_datagram(packet.arrival, packet.frame)

    def _gateway(self, t: float, op: int, d: Any) -> None:
        self.receiver.on_gateway(op, d, t)
        capture = self.capture
        if capture is None:
            return
        if op in (OP_SPEAKING, OP_CLIENT_CONNECT):
            self._release_held(op, d)  # written before the event: the file stays in time order
        if op == OP_SESSION_DESCRIPTION and not capture.started and isinstance(d, dict):
            try:
                capture.start(d["mode"], d["secret_key"])
            except (KeyError, TypeError, ValueError, OSError):
                _log.exception("voice capture: cannot start")
            return
        capture.event(t - self._t0, op, d)
