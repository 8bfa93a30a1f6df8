"""Source ordering (pure): least reported load first, random among equals."""

from __future__ import annotations

import random
from dataclasses import dataclass

from peerload.loader.selection import order_sources


@dataclass
class Ref:
    worker_id: str
    source_load: float | None


def test_least_load_first_random_among_equals():
    refs = [Ref("busy", 5.0), Ref("a", None), Ref("b", 0.0), Ref("mid", 1.0)]
    seen = set()
    for seed in range(20):
        order = [r.worker_id for r in order_sources(refs, rng=random.Random(seed))]
        assert order[2:] == ["mid", "busy"]
        seen.add(tuple(order[:2]))
    assert seen == {("a", "b"), ("b", "a")}
    assert [r.worker_id for r in order_sources(refs, exclude={"a", "b"})] == ["mid", "busy"]
