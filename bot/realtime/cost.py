"""Audio time sent upstream → minutes and dollars. OpenAI bills translation by audio time, silence
and replays included, so the meter counts every byte that went out on a socket."""

from __future__ import annotations

from dataclasses import dataclass, field

from bot.realtime.replay_buffer import BYTES_PER_MS


@dataclass
class CostMeter:
    price_per_minute: float
    audio_ms: float = 0.0
    replayed_ms: float = 0.0
    tokens: dict[str, int] = field(default_factory=lambda: {"input": 0, "output": 0})

    def add_audio(self, nbytes: int, replay: bool = False) -> None:
        ms = nbytes / BYTES_PER_MS
        self.audio_ms += ms
        if replay:
            self.replayed_ms += ms

    def add_tokens(self, input_tokens: int | None, output_tokens: int | None) -> None:
        self.tokens["input"] += input_tokens or 0
        self.tokens["output"] += output_tokens or 0

    @property
    def minutes(self) -> float:
        return self.audio_ms / 60_000

    @property
    def dollars(self) -> float:
        return self.minutes * self.price_per_minute

    def summary(self) -> dict[str, float | int]:
        return {
            "audio_seconds": round(self.audio_ms / 1000, 3),
            "replayed_seconds": round(self.replayed_ms / 1000, 3),
            "minutes": round(self.minutes, 4),
            "usd": round(self.dollars, 6),
            **{f"{k}_tokens": v for k, v in self.tokens.items() if v},
        }
