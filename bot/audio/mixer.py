"""The way back: every speaker's translated audio (24 kHz mono pcm16) mixed into 20 ms frames of 48 kHz stereo.

`push` runs on the event loop, `read_frame` on discord.py's player thread every 20 ms; they share only the
per-speaker byte queues, under one lock held for a few slices and appends. Mixing, limiting and resampling
happen outside that lock, serialised by a second lock that only readers take.

- Per speaker a FIFO of bytes (chunks of any length, even odd ones, join seamlessly). A speaker starts
  playing once `prebuffer_ms` is queued (or after waiting that long, for a short tail), so audio that arrives
  in real time in odd-sized chunks does not stutter; a speaker that runs dry re-buffers.
- Catch-up tempo: translations run longer than speech, so a continuous speaker's queue grows. Past a third
  of `max_backlog_s` queued (1 s of 3 s), that speaker's audio goes through a WSOLA stretcher
  (`bot.audio.tempo`) that plays it faster without changing its pitch, from 1× rising linearly with the
  backlog to `max_tempo` at 0.8 of the bound; it stays in the stretcher (at 1× once caught up) until its
  queue runs dry, then the stretcher's tail is flushed and the speaker is played as it comes again.
- A bounded backlog: audio is dropped (counted) only when a speaker has more than `max_backlog_s` queued AND
  its oldest audio has waited longer than that (in play time: the mixer's own clock, 20 ms per read), so the
  delay never grows without bound even when `max_tempo` is not enough, while a burst longer than the bound (a
  whole sentence synthesized at once, as bot.localrt sends it) is played whole, faster.
- Overlapping speakers are mixed, with ducking: the speaker who has been playing longest holds the floor at
  full level; anyone talking over them is played at `DUCK_GAIN` (-6 dB) until the floor is free, with gain
  ramps across a frame so nothing clicks. One speaker's backlog never delays another's (each has its queue).
- The sum is float32 with a soft knee towards ±1.0 (no int16 wrap-around), then ONE streaming soxr resampler
  24 → 48 kHz in float32 (libsoxr dithers int16 output, which would make output differ run to run).
- Nothing queued → silence, never b"": discord.py stops its player on an empty read. `has_audio()` tells
  a caller that prefers pausing the player when there is something to play (it includes the resampler tail).
"""

from __future__ import annotations

import math
import threading
from collections import deque
from dataclasses import dataclass

import numpy as np
import soxr

from bot import latency
from bot.audio.pcm import SCALE, to_int16
from bot.audio.tempo import Stretcher

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
_TEMPO_FROM = 1 / 3  # a speaker with more than this fraction of max_backlog_s queued is played faster…
_TEMPO_FULL = 0.8  # …reaching max_tempo at this fraction
DUCK_GAIN = 0.5  # a speaker talking over the one holding the floor (-6 dB)
_STRETCH_READY = IN_FRAME_SAMPLES + 256  # stretched samples kept ready ahead of the next frame


@dataclass(frozen=True, slots=True)
class MixerStats:
    frames: int  # read_frame calls
    frames_mixed: int  # of which at least one speaker contributed audio
    samples_mixed: int  # 24 kHz samples taken from the queues
    samples_dropped: int  # 24 kHz samples dropped at the backlog bound
    samples_sped_up: int  # 24 kHz samples taken while playing faster than 1×
    max_tempo_used: float  # the fastest tempo any speaker was played at (1.0: never sped up)
    underruns: int  # a playing speaker ran short mid-stream and re-buffered (a gap in its audio)
    output_gaps: int  # the resampler fell short of a frame after warm-up (zeros inserted; expected 0)
    speakers: int


class _Voice:
    """One speaker's queue and play state (guarded by the mixer's queue lock)."""

    __slots__ = ("arrivals", "buf", "gain", "marks", "out", "playing", "pushed", "since", "stalled", "stretcher",
                 "stretching", "taken", "waited")

    def __init__(self) -> None:
        self.buf = bytearray()  # deleting from the front of a bytearray is amortised O(1) in CPython
        # Delta arrival marks for bot.latency: (byte offset of a delta's start in everything pushed, arrival).
        self.marks: deque[tuple[int, float]] = deque()
        self.pushed = 0  # bytes ever pushed
        # (byte offset where a push starts, the mixer's frame count when it came): how long audio has waited
        self.arrivals: deque[tuple[int, int]] = deque()
        self.taken = 0  # bytes ever taken off the front of buf (played or dropped)
        self.playing = False
        self.waited = 0  # reads spent waiting for the prebuffer
        self.stalled = False  # stopped playing with part of a frame left: a tail, or audio arriving late
        self.since = 0  # the frame it started playing at (the earliest holds the floor)
        self.gain = 1.0
        # Reader-only from here: the stretcher and its output not yet played (float32, in int16 units).
        self.stretcher: Stretcher | None = None
        self.stretching = False  # its audio goes through the stretcher until the queue runs dry
        self.out = np.zeros(0, dtype=np.float32)

    def queued_samples(self) -> int:
        return len(self.buf) // 2 + self.out.size


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

    def __init__(self, *, max_backlog_s: float = 3.0, prebuffer_ms: int = 40, quality: str = "HQ",
                 max_tempo: float = 1.35) -> None:
        if max_backlog_s <= 0:
            raise ValueError("max_backlog_s must be positive")
        if prebuffer_ms < 0:
            raise ValueError("prebuffer_ms must be >= 0")
        if not 1.0 <= max_tempo <= 2.0:
            raise ValueError("max_tempo must be between 1.0 and 2.0")
        self._max_backlog_bytes = int(max_backlog_s * IN_RATE) * 2
        self._max_backlog_frames = round(max_backlog_s * 50)  # the mixer's clock: one read_frame is 20 ms
        self._max_tempo = max_tempo
        self._tempo_from = int(max_backlog_s * _TEMPO_FROM * IN_RATE)  # samples
        self._tempo_full = int(max_backlog_s * _TEMPO_FULL * IN_RATE)
        self._sped_up = 0
        self._fastest = 1.0
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
    def push(self, key: int, pcm16_24k_mono: bytes, received_at: float | None = None) -> None:
        """Queue translated audio for `key` (any length); past the backlog bound the oldest audio goes.

        `received_at` (bot.latency's clock): when it came off the websocket; the frame that starts playing it
        records the delay in `bot.latency.DELTA_TO_FRAME`."""
        if not pcm16_24k_mono:
            return
        with self._lock:
            voice = self._voices.get(key)
            if voice is None:
                voice = self._voices[key] = _Voice()
            if received_at is not None:
                voice.marks.append((voice.pushed, received_at))
            start = voice.pushed
            voice.arrivals.append((start, self._frames))
            voice.pushed += len(pcm16_24k_mono)
            buf = voice.buf
            buf += pcm16_24k_mono
            excess = len(buf) + voice.out.size * 2 - self._max_backlog_bytes
            if excess > 0:
                # Only audio that has waited longer than the bound goes: bursts (a whole sentence synthesized at
                # once, as bot.localrt sends them) are played, faster, never cut; a speaker who keeps falling
                # behind loses the audio that could no longer be heard within `max_backlog_s` of its arrival.
                stale = self._stale_end(voice, start) - voice.taken
                excess = min(excess + (excess & 1), stale - (stale & 1))  # whole samples: the queue stays aligned
            if excess > 0:
                del buf[:excess]
                self._dropped += excess // 2
                voice.taken += excess
                marks = voice.marks
                while marks and marks[0][0] < voice.taken:  # dropped before it was heard: no delay to record
                    marks.popleft()

    def _stale_end(self, voice: _Voice, limit_offset: int) -> int:
        """Under the queue lock: the offset up to which queued audio arrived more than `max_backlog_s` of play
        ago (never past `limit_offset`, where the newest push starts)."""
        arrivals, taken = voice.arrivals, voice.taken  # played ones were forgotten as they were taken (`_slice`)
        oldest_fresh = self._frames - self._max_backlog_frames
        end = taken
        for i, (_, at) in enumerate(arrivals):
            if at > oldest_fresh:
                break
            end = arrivals[i + 1][0] if i + 1 < len(arrivals) else limit_offset
        return max(taken, min(end, limit_offset))

    def remove(self, key: int) -> int:
        """Forget a speaker; returns how many queued samples were discarded with it."""
        with self._lock:
            voice = self._voices.pop(key, None)
        return 0 if voice is None else voice.queued_samples()

    def backlog_ms(self, key: int) -> float:
        """How much audio is queued for `key` (0 for an unknown speaker)."""
        with self._lock:
            voice = self._voices.get(key)
            return 0.0 if voice is None else voice.queued_samples() / IN_RATE * 1000

    def has_audio(self) -> bool:
        """True while a speaker has audio queued or the resampler still holds the tail of some."""
        with self._lock:
            if any(v.buf or v.out.size or v.stretching for v in self._voices.values()):
                return True
        return self._zeros_fed < _QUIET_SAMPLES or bool(np.any(self._out))

    def stats(self) -> MixerStats:
        return MixerStats(
            frames=self._frames,
            frames_mixed=self._frames_mixed,
            samples_mixed=self._mixed,
            samples_dropped=self._dropped,
            samples_sped_up=self._sped_up,
            max_tempo_used=self._fastest,
            underruns=self._underruns,
            output_gaps=self._gaps,
            speakers=len(self._voices),
        )

    # -- player thread side -----------------------------------------------------------------------------
    def read_frame(self) -> bytes:
        """The next 20 ms: 3840 bytes of 48 kHz stereo s16le (silence when nothing is queued)."""
        with self._read_lock:
            plans = self._take()
            self._frames += 1
            chunks = [self._render(*plan) for plan in plans]
            chunks = [c for c in chunks if c[1].size]
            if not chunks:
                if self._zeros_fed >= _QUIET_SAMPLES and not self._out.any():
                    return SILENT_OUT_FRAME  # resampler holds only zeros: skipping it is the same as feeding zeros
                mix = np.zeros(IN_FRAME_SAMPLES, dtype=np.float32)
            else:
                self._frames_mixed += 1
                mix = _soft_clip(self._duck_and_sum(chunks))
            mono = self._resample(mix)
        pcm = to_int16(mono)
        return np.repeat(pcm, 2).tobytes()

    def _speed(self, queued: int) -> float:
        """The catch-up tempo for a speaker with `queued` samples waiting: 1× up to a third of the bound, then rising
        linearly to `max_tempo` at 0.8 × the backlog bound (the third of it: 1 s of the default 3 s)."""
        if queued <= self._tempo_from:
            return 1.0
        frac = min(1.0, (queued - self._tempo_from) / (self._tempo_full - self._tempo_from))
        return 1.0 + (self._max_tempo - 1.0) * frac

    def _take(self) -> list[tuple[_Voice, bytes, float | None, bool]]:
        """Under the queue lock: per speaker that plays now, the raw bytes this frame needs, the tempo when they
        go through the stretcher (None: played as they are), and whether the stretcher's tail is due."""
        plans: list[tuple[_Voice, bytes, float | None, bool]] = []
        with self._lock:
            for voice in self._voices.values():
                buf = voice.buf
                n = len(buf) & ~1
                have = n // 2 + voice.out.size
                if voice.stretching:  # in the stretcher until its queue runs dry, then its tail is flushed
                    speed = self._speed(have)
                    need = _STRETCH_READY - voice.out.size
                    take = min(n, 2 * math.ceil(need * speed)) if need > 0 else 0
                    plans.append((voice, self._slice(voice, take, speed), speed, n == 0))
                    continue
                if voice.playing and have < IN_FRAME_SAMPLES:
                    voice.playing = False  # ran dry, or this is the tail: re-buffer, or play it after a wait
                    voice.waited = 0
                    voice.stalled = have > 0
                if not voice.playing:
                    if have == 0:
                        voice.waited = 0
                        continue
                    refilled = have * 2 >= self._prebuffer_bytes
                    if not refilled and voice.waited < self._prebuffer_reads:
                        voice.waited += 1
                        continue
                    if voice.stalled and refilled:
                        self._underruns += 1  # more audio came while a partial frame waited: it was late
                    voice.playing = True
                    voice.stalled = False
                    voice.since = self._frames
                if have > self._tempo_from and self._max_tempo > 1.0:
                    voice.stretching = True  # falling behind: catch up, faster, same pitch
                    speed = self._speed(have)
                    take = min(n, 2 * (math.ceil((_STRETCH_READY - voice.out.size) * speed)
                                       + Stretcher.latency_samples()))
                    plans.append((voice, self._slice(voice, take, speed), speed, False))
                    continue
                take = min(n, 2 * max(0, IN_FRAME_SAMPLES - voice.out.size))
                plans.append((voice, self._slice(voice, take, None), None, False))
        return plans

    def _slice(self, voice: _Voice, take: int, speed: float | None) -> bytes:
        """Under the queue lock: the first `take` bytes of a speaker's queue, counted; the deltas whose start
        is in them are being played now."""
        buf = voice.buf
        chunk = bytes(buf[:take])
        del buf[:take]
        voice.taken += take
        arrivals = voice.arrivals
        while len(arrivals) > 1 and arrivals[1][0] <= voice.taken:  # played: only the backlog's arrivals are kept
            arrivals.popleft()
        marks = voice.marks
        if marks and marks[0][0] < voice.taken:
            now = latency.now()
            while marks and marks[0][0] < voice.taken:
                latency.DELTA_TO_FRAME.observe(now - marks.popleft()[1])
        self._mixed += take // 2
        if speed is not None and speed > 1.0:
            self._sped_up += take // 2
            self._fastest = max(self._fastest, speed)
        return chunk

    @staticmethod
    def _render(voice: _Voice, raw: bytes, speed: float | None, flush: bool) -> tuple[_Voice, np.ndarray]:
        """Reader only: this frame's samples of one speaker, in int16 units (stretched when `speed` is given)."""
        x = np.frombuffer(raw, dtype=np.int16)
        if speed is None:
            if not voice.out.size:
                return voice, x  # the common case: as it came, no copy
            parts = [voice.out, x.astype(np.float32)]
        else:
            if voice.stretcher is None:
                voice.stretcher = Stretcher()
            parts = [voice.out]
            if x.size:
                parts.append(voice.stretcher.feed(x.astype(np.float32), speed).astype(np.float32))
            if flush:
                parts.append(voice.stretcher.flush().astype(np.float32))
                voice.stretching = False
        joined = np.concatenate(parts)
        voice.out = joined[IN_FRAME_SAMPLES:]
        return voice, joined[:IN_FRAME_SAMPLES]

    @staticmethod
    def _duck_and_sum(chunks: list[tuple[_Voice, np.ndarray]]) -> np.ndarray:
        """Sum the speakers of this frame (scaled to ±1.0): the one playing longest at full level, the others
        ducked."""
        floor = min(chunks, key=lambda c: c[0].since)[0]
        acc = np.zeros(IN_FRAME_SAMPLES, dtype=np.float32)
        for voice, frame in chunks:
            n = frame.size
            target = 1.0 if voice is floor else DUCK_GAIN
            if voice.gain != target:  # a ramp across the frame: a gain change never clicks
                acc[:n] += frame * np.linspace(voice.gain, target, IN_FRAME_SAMPLES, dtype=np.float32)[:n]
                voice.gain = target
            elif target == 1.0:
                acc[:n] += frame
            else:
                acc[:n] += frame * np.float32(target)
        acc *= 1.0 / SCALE
        return acc

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
