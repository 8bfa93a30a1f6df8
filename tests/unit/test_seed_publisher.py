"""The heartbeat's backoff: jittered, doubling, never longer than one interval."""

from __future__ import annotations

import random

from peerload._backoff import Backoff


def test_backoff_is_jittered_doubling_and_capped_at_the_interval():
    backoff = Backoff(0.125, 1.0, rng=random.Random(1))
    delays = [backoff.next() for _ in range(8)]
    steps = [0.125, 0.25, 0.5, 1.0, 1.0, 1.0, 1.0, 1.0]
    assert all(step / 2 <= d <= step for d, step in zip(delays, steps, strict=True)), delays
    assert len(set(delays)) == len(delays), "jitter"
    backoff.reset()
    assert backoff.next() <= 0.125
