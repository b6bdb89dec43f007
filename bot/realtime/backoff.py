"""Exponential backoff with jitter, so many sessions dropped at once don't reconnect in lockstep."""

from __future__ import annotations

import random


class Backoff:
    def __init__(
        self,
        initial: float,
        maximum: float,
        multiplier: float = 2.0,
        jitter: float = 0.2,
        rng: random.Random | None = None,
    ) -> None:
        self.initial, self.maximum, self.multiplier, self.jitter = initial, maximum, multiplier, jitter
        self._rng = rng or random.Random()
        self._attempt = 0
        self._floor = 0.0

    @property
    def attempts(self) -> int:
        return self._attempt

    def next_delay(self) -> float:
        """The wait before the next attempt: initial·multiplierⁿ, capped, ± jitter."""
        base = min(self.maximum, self.initial * self.multiplier**self._attempt)
        self._attempt += 1
        delay = base * (1 + self._rng.uniform(-self.jitter, self.jitter))
        return max(delay, self._floor)

    def penalize(self, at_least: float) -> None:
        """A rate limit: the next waits are at least this long, whatever the attempt count."""
        self._floor = max(self._floor, at_least)

    def reset(self) -> None:
        self._attempt = 0
        self._floor = 0.0
