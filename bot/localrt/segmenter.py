"""Speech segmentation: a VAD state machine over 200 ms frames. Pure: it sees probabilities only.

A segment opens on the first speech frame (with a little pre-roll), and ends after enough silence or
when it grows too long (so a speaker who never pauses still gets translated).
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field
from enum import Enum

from bot.realtime.translation_events import ENGINE_FRAME_MS


class Step(Enum):
    IDLE = "idle"  # no segment open, frame kept as pre-roll only
    START = "start"  # this frame opened a segment
    CONTINUE = "continue"  # frame added to the open segment
    END = "end"  # frame added; the segment is complete (silence or length cut)
    DROP = "drop"  # the open segment ended but was too short to be speech


@dataclass
class Segmenter:
    threshold: float = 0.5
    min_silence_ms: int = 400
    min_speech_ms: int = 200
    max_segment_ms: int = 12_000
    max_grace_ms: int = 2_000
    pre_roll_ms: int = 200
    frames: list[bytes] = field(default_factory=list)  # the open segment (or the last closed one)
    _pre: deque[bytes] = field(default_factory=deque)
    _open: bool = False
    _silent_run: int = 0
    _speech_frames: int = 0
    ended_by_silence: bool = False  # how the last segment ended: silence (vs. length cut or close)

    def __post_init__(self) -> None:
        self._silence_frames = max(1, math.ceil(self.min_silence_ms / ENGINE_FRAME_MS))
        self._min_speech = max(1, math.ceil(self.min_speech_ms / ENGINE_FRAME_MS))
        self._max_frames = max(2, self.max_segment_ms // ENGINE_FRAME_MS)
        self._grace_frames = max(0, self.max_grace_ms // ENGINE_FRAME_MS)
        self._pre = deque(maxlen=max(0, math.ceil(self.pre_roll_ms / ENGINE_FRAME_MS)) or None)
        if not self._pre.maxlen:
            self._pre = deque(maxlen=1)

    @property
    def is_open(self) -> bool:
        return self._open

    @property
    def one_frame_from_end(self) -> bool:
        """The open segment ends as speech (not dropped) if the next frame is silent too: a hint to
        decode ahead."""
        return (
            self._open and 0 < self._silent_run == self._silence_frames - 1 and self._speech_frames >= self._min_speech
        )

    def push(self, frame: bytes, probability: float) -> Step:
        speech = probability >= self.threshold
        if not self._open:
            if not speech:
                self._pre.append(frame)
                return Step.IDLE
            self._open = True
            self.frames = [*self._pre, frame]
            self._pre.clear()
            self._silent_run = 0
            self._speech_frames = 1
            return Step.START
        self.frames.append(frame)
        if speech:
            self._silent_run = 0
            self._speech_frames += 1
        else:
            self._silent_run += 1
        if self._silent_run >= self._silence_frames:
            self.ended_by_silence = True
            return self._close()
        # Past the length limit, end at the first quiet frame (a word gap) rather than mid-word; cut
        # hard only if none comes within the grace period.
        over = len(self.frames) - self._max_frames
        if (over >= 0 and not speech) or over >= self._grace_frames:
            self.ended_by_silence = False
            return self._close()
        return Step.CONTINUE

    def finish(self) -> Step:
        """End of input (session.close): close whatever is open."""
        self.ended_by_silence = False
        return self._close() if self._open else Step.IDLE

    def _close(self) -> Step:
        self._open = False
        self._silent_run = 0
        return Step.END if self._speech_frames >= self._min_speech else Step.DROP
