"""The one retry backoff: exponential with jitter, so a fleet that lost its coordinator at once
does not come back in step (every client would otherwise retry at the same instants)."""

from __future__ import annotations

import random


class Backoff:
    """Jittered exponential delays from `first_s`, doubling up to `cap_s` (never more)."""

    def __init__(self, first_s: float, cap_s: float, rng: random.Random | None = None) -> None:
        self.first_s, self.cap_s = first_s, cap_s
        self._rng = rng or random.Random()
        self._next = first_s

    def next(self) -> float:
        """The next delay: uniform in [half, all] of the current step, so a fleet does not retry in step."""
        step = min(self._next, self.cap_s)
        self._next = step * 2
        return self._rng.uniform(step / 2, step)

    def reset(self) -> None:
        self._next = self.first_s
