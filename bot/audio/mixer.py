"""The way back: every speaker's translated audio (24 kHz mono pcm16) mixed into 20 ms frames of 48 kHz stereo.

`push` runs on the event loop, `read_frame` on discord.py's player thread every 20 ms; they share only the
per-speaker byte queues, under one lock held for a few slices and appends. Mixing, limiting and resampling
happen outside that lock, serialised by a second lock that only readers take.

- Per speaker a FIFO of bytes (chunks of any length, even odd ones, join seamlessly). A speaker starts
  playing once `prebuffer_ms` is queued (or after waiting that long, for a short tail), so audio that arrives
  in real time in odd-sized chunks does not stutter; a speaker that runs dry re-buffers.
- A bounded backlog: past `max_backlog_s` the oldest audio is dropped and counted, so the delay between
  speech and its translation never grows without bound.
- The sum is float32 with a soft knee towards ±1.0 (no int16 wrap-around), then ONE streaming soxr resampler
  24 → 48 kHz in float32 (libsoxr dithers int16 output, which would make output differ run to run).
- Nothing queued → silence, never b"": discord.py stops its player on an empty read. `has_audio()` tells
  a caller that prefers pausing the player when there is something to play (it includes the resampler tail).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

import numpy as np
import soxr

from bot.audio.pcm import SCALE, to_int16

IN_RATE = 24_000
OUT_RATE = 48_000
IN_FRAME_SAMPLES = 480  # 20 ms at 24 kHz
IN_FRAME_BYTES = IN_FRAME_SAMPLES * 2
OUT_FRAME_SAMPLES = 960  # 20 ms at 48 kHz, per channel
OUT_FRAME_BYTES = OUT_FRAME_SAMPLES * 2 * 2  # stereo s16le: 3840
SILENT_OUT_FRAME = bytes(OUT_FRAME_BYTES)  # 20 ms of 48 kHz stereo silence, what the player gets when quiet

_KNEE = 0.8  # below this the mix passes untouched; above it, tanh bends it towards (never past) the ceiling
_CEILING = 0.97  # headroom for the resampler's overshoot, so the final int16 clip stays a backstop
# soxr works in blocks (its output per 480-sample chunk alternates 0 and ~1660 samples) and its lag settles
# only after a few hundred chunks (measured: the last shortfall at chunk 77 for HQ, 293 for VHQ, none up to
# 200 000): warm the output buffer up on silence so that it never runs short once real audio flows (~3 ms).
_WARMUP_FRAMES = 500
# After this much silence fed in a row the resampler holds only zeros: reads may skip it.
_QUIET_SAMPLES = 4_800


@dataclass(frozen=True, slots=True)
class MixerStats:
    frames: int  # read_frame calls
    frames_mixed: int  # of which at least one speaker contributed audio
    samples_mixed: int  # 24 kHz samples taken from the queues
    samples_dropped: int  # 24 kHz samples dropped at the backlog bound
    underruns: int  # a playing speaker ran short mid-stream and re-buffered (a gap in its audio)
    output_gaps: int  # the resampler fell short of a frame after warm-up (zeros inserted; expected 0)
    speakers: int


class _Voice:
    """One speaker's queue and play state (guarded by the mixer's queue lock)."""

    __slots__ = ("buf", "playing", "stalled", "waited")

    def __init__(self) -> None:
        self.buf = bytearray()  # deleting from the front of a bytearray is amortised O(1) in CPython
        self.playing = False
        self.waited = 0  # reads spent waiting for the prebuffer
        self.stalled = False  # stopped playing with part of a frame left: a tail, or audio arriving late


def _soft_clip(x: np.ndarray) -> np.ndarray:
    """Identity below the knee, tanh above it: continuous slope, bounded by the ceiling, memoryless."""
    mag = np.abs(x)
    if mag.max(initial=0.0) <= _KNEE:
        return x
    over = mag > _KNEE
    head = _CEILING - _KNEE
    bent = _KNEE + head * np.tanh((mag[over] - _KNEE) / head)
    out = x.copy()
    out[over] = np.copysign(bent, x[over]).astype(np.float32)
    return out


class Mixer:
    """Per-speaker FIFOs of 24 kHz mono pcm16 in, 20 ms frames of 48 kHz stereo s16le out."""

    def __init__(self, *, max_backlog_s: float = 3.0, prebuffer_ms: int = 40, quality: str = "HQ") -> None:
        if max_backlog_s <= 0:
            raise ValueError("max_backlog_s must be positive")
        if prebuffer_ms < 0:
            raise ValueError("prebuffer_ms must be >= 0")
        self._max_backlog_bytes = int(max_backlog_s * IN_RATE) * 2
        self._prebuffer_bytes = min(int(prebuffer_ms * IN_RATE / 1000) * 2, self._max_backlog_bytes)
        self._prebuffer_reads = -(-prebuffer_ms // 20)  # a tail shorter than the prebuffer waits this long
        self._voices: dict[int, _Voice] = {}
        self._lock = threading.Lock()  # the queues: taken by push and briefly by read_frame
        self._read_lock = threading.Lock()  # the resampler and the output buffer: readers only
        self._stream = soxr.ResampleStream(IN_RATE, OUT_RATE, 1, dtype="float32", quality=quality)
        self._out = np.zeros(0, dtype=np.float32)  # resampled samples not yet handed out
        self._zeros_fed = 0
        self._frames = 0
        self._frames_mixed = 0
        self._mixed = 0
        self._dropped = 0
        self._underruns = 0
        self._gaps = 0
        silence = np.zeros(IN_FRAME_SAMPLES, dtype=np.float32)
        for _ in range(_WARMUP_FRAMES):
            self._resample(silence)
        self._gaps = 0

    # -- event loop side --------------------------------------------------------------------------------
    def push(self, key: int, pcm16_24k_mono: bytes) -> None:
        """Queue translated audio for `key` (any length); past the backlog bound the oldest audio goes."""
        if not pcm16_24k_mono:
            return
        with self._lock:
            voice = self._voices.get(key)
            if voice is None:
                voice = self._voices[key] = _Voice()
            buf = voice.buf
            buf += pcm16_24k_mono
            excess = len(buf) - self._max_backlog_bytes
            if excess > 0:
                excess += excess & 1  # whole samples only, so the queue stays sample-aligned
                del buf[:excess]
                self._dropped += excess // 2

    def remove(self, key: int) -> int:
        """Forget a speaker; returns how many queued samples were discarded with it."""
        with self._lock:
            voice = self._voices.pop(key, None)
        return 0 if voice is None else len(voice.buf) // 2

    def backlog_ms(self, key: int) -> float:
        """How much audio is queued for `key` (0 for an unknown speaker)."""
        with self._lock:
            voice = self._voices.get(key)
            return 0.0 if voice is None else len(voice.buf) / 2 / IN_RATE * 1000

    def has_audio(self) -> bool:
        """True while a speaker has audio queued or the resampler still holds the tail of some."""
        with self._lock:
            if any(v.buf for v in self._voices.values()):
                return True
        return self._zeros_fed < _QUIET_SAMPLES or bool(np.any(self._out))

    def stats(self) -> MixerStats:
        return MixerStats(
            frames=self._frames,
            frames_mixed=self._frames_mixed,
            samples_mixed=self._mixed,
            samples_dropped=self._dropped,
            underruns=self._underruns,
            output_gaps=self._gaps,
            speakers=len(self._voices),
        )

    # -- player thread side -----------------------------------------------------------------------------
    def read_frame(self) -> bytes:
        """The next 20 ms: 3840 bytes of 48 kHz stereo s16le (silence when nothing is queued)."""
        with self._read_lock:
            chunks = self._take()
            self._frames += 1
            if not chunks:
                if self._zeros_fed >= _QUIET_SAMPLES and not self._out.any():
                    return SILENT_OUT_FRAME  # resampler holds only zeros: skipping it is the same as feeding zeros
                mix = np.zeros(IN_FRAME_SAMPLES, dtype=np.float32)
            else:
                self._frames_mixed += 1
                acc = np.zeros(IN_FRAME_SAMPLES, dtype=np.float32)
                for chunk in chunks:
                    samples = np.frombuffer(chunk, dtype=np.int16)
                    acc[: samples.size] += samples
                acc *= 1.0 / SCALE
                mix = _soft_clip(acc)
            mono = self._resample(mix)
        pcm = to_int16(mono)
        return np.repeat(pcm, 2).tobytes()

    def _take(self) -> list[bytes]:
        """Under the queue lock: slice off this frame's bytes of every speaker that plays now."""
        chunks: list[bytes] = []
        with self._lock:
            for voice in self._voices.values():
                buf = voice.buf
                n = len(buf) & ~1
                if voice.playing and n < IN_FRAME_BYTES:
                    voice.playing = False  # ran dry, or this is the tail: re-buffer, or play it after a wait
                    voice.waited = 0
                    voice.stalled = n > 0
                if not voice.playing:
                    if n == 0:
                        voice.waited = 0
                        continue
                    refilled = n >= self._prebuffer_bytes
                    if not refilled and voice.waited < self._prebuffer_reads:
                        voice.waited += 1
                        continue
                    if voice.stalled and refilled:
                        self._underruns += 1  # more audio came while a partial frame waited: it was late
                    voice.playing = True
                    voice.stalled = False
                take = min(n, IN_FRAME_BYTES)
                chunks.append(bytes(buf[:take]))
                del buf[:take]
                self._mixed += take // 2
        return chunks

    def _resample(self, mix: np.ndarray) -> np.ndarray:
        """Feed 480 samples, hand out exactly 960 (zero-padded in front only during warm-up)."""
        self._zeros_fed = self._zeros_fed + mix.size if not mix.any() else 0
        out = self._stream.resample_chunk(mix)
        buf = np.concatenate((self._out, out)) if self._out.size else out
        if buf.size < OUT_FRAME_SAMPLES:
            self._gaps += 1
            buf = np.concatenate((np.zeros(OUT_FRAME_SAMPLES - buf.size, dtype=np.float32), buf))
        frame = buf[:OUT_FRAME_SAMPLES]
        self._out = buf[OUT_FRAME_SAMPLES:]
        return frame
