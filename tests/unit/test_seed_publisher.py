"""The heartbeat's backoff (jittered, doubling, never longer than one interval) and its beat counts."""

from __future__ import annotations

import random

from peerload._backoff import Backoff
from peerload.client import SourceStatus
from peerload.seed.heartbeats import HeartbeatCounter


def test_backoff_is_jittered_doubling_and_capped_at_the_interval():
    backoff = Backoff(0.125, 1.0, rng=random.Random(1))
    delays = [backoff.next() for _ in range(8)]
    steps = [0.125, 0.25, 0.5, 1.0, 1.0, 1.0, 1.0, 1.0]
    assert all(step / 2 <= d <= step for d, step in zip(delays, steps, strict=True)), delays
    assert len(set(delays)) == len(delays), "jitter"
    backoff.reset()
    assert backoff.next() <= 0.125


def test_heartbeat_counts_say_which_beat_did_what():
    counter = HeartbeatCounter()
    counter.started()
    counter.succeeded(SourceStatus.READY)
    counter.started()
    counter.failed()
    counter.started()
    counter.republished()
    counter.succeeded(SourceStatus.READY)
    counter.started()
    counter.succeeded(SourceStatus.STALE)
    counter.started()
    counter.succeeded(SourceStatus.STALE)
    counts = counter.snapshot()
    assert (counts.attempts, counts.succeeded, counts.failed, counts.ended) == (5, 4, 1, 5)
    assert (counts.republished, counts.republished_at) == (1, 3)
    assert (counts.last_status, counts.status_since) == (SourceStatus.STALE, 4)
    assert counter.wait_for(lambda c: c.attempts >= 5, timeout_s=0) == counts
    assert counter.wait_for(lambda c: c.attempts >= 6, timeout_s=0) is None
