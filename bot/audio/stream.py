"""One member's audio path: jitter buffer → Opus decode (FEC/PLC) → 48→24 kHz → 20 ms frames.

Every packet handed to :meth:`ReceiveStream.push` is counted exactly once, when its fate is known;
``uncounted`` is how many are still buffered or in flight (the receiver's accounting relies on it).
"""

from __future__ import annotations

from collections.abc import Callable

from bot.audio.jitter import ACCEPTED, DUPLICATE, JitterBuffer
from bot.audio.opus import SILENCE_FRAME, OpusDecoder, packet_has_silk
from bot.audio.outcomes import Outcome
from bot.audio.resample import Downsampler
from bot.audio.sink import FrameSink

FRAME_SECONDS = 0.02
LOST = b""  # jitter slot of a frame that arrived but could not be decrypted

# Concealment statistics (frames, not datagrams).
STAT_FEC = "frames_fec"
STAT_PLC = "frames_plc"
STAT_OUT = "frames_out"
STAT_STREAMS = "streams"


class ReceiveStream:
    """Decoding state of one member; not thread-safe (the receive worker owns it)."""

    __slots__ = (
        "_count",
        "_decoder",
        "_e2ee",
        "_jitter",
        "_max_conceal",
        "_resampler",
        "_sink",
        "_stats",
        "active",
        "last_arrival",
        "uncounted",
        "user_id",
    )

    def __init__(
        self,
        user_id: int,
        sink: FrameSink,
        count: list[int],
        stats: dict[str, int],
        e2ee: Callable[[int, bytes], bytes | None],
        *,
        jitter_depth: int = 3,
        max_conceal_frames: int = 5,
    ) -> None:
        self.user_id = user_id
        self._sink = sink
        self._count = count
        self._stats = stats
        self._e2ee = e2ee
        self._jitter = JitterBuffer(jitter_depth)
        self._max_conceal = max_conceal_frames
        self._decoder = OpusDecoder(1)
        self._resampler = Downsampler()
        self.active = False
        self.last_arrival = 0.0
        self.uncounted = 0

    def _done(self, outcome: Outcome) -> None:
        self._count[outcome] += 1
        self.uncounted -= 1

    def push(self, sequence: int, frame: bytes, now: float) -> None:
        """One transport-decrypted frame (still E2EE-encrypted) of this member."""
        self.uncounted += 1
        self.last_arrival = now
        jitter = self._jitter
        status, ext = jitter.classify(sequence)
        if status != ACCEPTED:
            self._done(Outcome.DUPLICATE if status == DUPLICATE else Outcome.LATE)
            return
        if frame != SILENCE_FRAME:  # DAVE never encrypts Discord's silence frame
            plain = self._e2ee(self.user_id, frame)
            if plain is None:
                self._done(Outcome.DAVE_FAILED)
                frame = LOST  # keeps its place so the loss is concealed without waiting for it
            else:
                frame = plain
        jitter.insert(ext, frame)
        self._drain(False)

    def _drain(self, force: bool) -> None:
        jitter = self._jitter
        while (item := jitter.pop(force)) is not None:
            self._play(*item)

    def _play(self, missing: int, payload: bytes) -> None:
        if not payload:  # LOST (already counted): conceal it and any gap before it
            self._conceal(missing + 1, None)
            return
        if payload == SILENCE_FRAME:
            self._done(Outcome.SILENCE)
            self._end_stream()
            return
        if missing:
            self._conceal(missing, payload)
        decoder = self._decoder
        pcm = decoder.decode(payload)
        if pcm is None:
            self._conceal(1, None)
            self._done(Outcome.OPUS_ERROR)
            return
        if not self.active:
            self.active = True
            self._stats[STAT_STREAMS] += 1
        self._emit(pcm)
        self._done(Outcome.DECODED)

    def _conceal(self, frames: int, next_packet: bytes | None) -> None:
        """Fill ``frames`` lost frames: the last one from ``next_packet``'s FEC when it has any.

        Nothing to conceal between talk spurts; a gap longer than ``max_conceal_frames`` ends the
        stream instead (the consumer pads silence on its own clock).
        """
        if not self.active:
            return
        if frames > self._max_conceal:
            self._end_stream()
            return
        decoder, stats = self._decoder, self._stats
        fec = next_packet is not None and packet_has_silk(next_packet)
        for _ in range(frames - 1 if fec else frames):
            self._emit(decoder.conceal())
            stats[STAT_PLC] += 1
        if fec:
            pcm = decoder.decode_fec(next_packet)  # type: ignore[arg-type]
            if pcm is None:
                pcm = decoder.conceal()
                stats[STAT_PLC] += 1
            else:
                stats[STAT_FEC] += 1
            self._emit(pcm)

    def _emit(self, pcm) -> None:
        if pcm is None:
            return
        frames = self._resampler.push(pcm)
        if frames:
            sink, uid = self._sink, self.user_id
            at = self.last_arrival
            for f in frames:
                sink.on_frame(uid, f, at)
            self._stats[STAT_OUT] += len(frames)

    def _end_stream(self) -> None:
        if not self.active:
            return
        self.active = False
        sink, uid = self._sink, self.user_id
        frames = self._resampler.flush()
        for f in frames:
            sink.on_frame(uid, f, self.last_arrival)
        self._stats[STAT_OUT] += len(frames)
        self._decoder.reset()
        sink.on_stream_end(uid)

    def tick(self, now: float, hold: float, timeout: float) -> None:
        """Release packets stuck behind a gap after ``hold`` s; end the stream after ``timeout`` s."""
        idle = now - self.last_arrival
        if len(self._jitter) and idle >= hold:
            self._drain(True)
        if self.active and idle >= timeout:
            self._end_stream()

    def flush(self) -> None:
        """Decode whatever is buffered and end the stream (replay end, orderly shutdown)."""
        self._drain(True)
        self._end_stream()

    def discard(self) -> None:
        """Drop buffered packets without decoding (member left)."""
        while self.uncounted > 0:
            self._done(Outcome.SPEAKER_LEFT)
        self._jitter = JitterBuffer(self._jitter.depth)
