"""Where decoded speech goes: one 20 ms pcm16 24 kHz mono frame at a time, per member."""

from __future__ import annotations

from typing import Protocol


class FrameSink(Protocol):
    """Receives a speaker's frames in order; called from the receive worker thread."""

    def on_frame(self, user_id: int, pcm: bytes, at: float) -> None:
        """``pcm``: 480 samples of 24 kHz mono s16le (960 bytes); ``at``: when the datagram that completed
        it arrived (the receiver's clock), so the delay it takes to go upstream can be measured."""

    def on_stream_end(self, user_id: int) -> None:
        """The member stopped talking (silence frames, timeout, left, or a long gap)."""


class CollectingSink:
    """Keeps everything in memory: for replay and tests."""

    def __init__(self) -> None:
        self.frames: dict[int, list[bytes]] = {}
        self.ends: dict[int, int] = {}

    def on_frame(self, user_id: int, pcm: bytes, at: float = 0.0) -> None:
        self.frames.setdefault(user_id, []).append(pcm)

    def on_stream_end(self, user_id: int) -> None:
        self.ends[user_id] = self.ends.get(user_id, 0) + 1

    def pcm(self, user_id: int) -> bytes:
        return b"".join(self.frames.get(user_id, ()))
