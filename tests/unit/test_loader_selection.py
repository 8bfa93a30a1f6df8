"""Source ordering (pure): peerload seeds first, then least reported load, random among equals."""

from __future__ import annotations

import random
from dataclasses import dataclass

import pytest

from peerload.loader.selection import order_sources
from peerload.wire import PEERLOAD_MANIFEST_KEY, SourceRef


@dataclass
class Ref:
    worker_id: str
    source_load: float | None
    kind: str = "peerload"


def test_least_load_first_random_among_equals():
    refs = [Ref("busy", 5.0), Ref("a", None), Ref("b", 0.0), Ref("mid", 1.0)]
    seen = set()
    for seed in range(20):
        order = [r.worker_id for r in order_sources(refs, rng=random.Random(seed))]
        assert order[2:] == ["mid", "busy"]
        seen.add(tuple(order[:2]))
    assert seen == {("a", "b"), ("b", "a")}
    assert [r.worker_id for r in order_sources(refs, exclude={"a", "b"})] == ["mid", "busy"]


@pytest.mark.parametrize(
    "refs, expected",
    [
        # A verifiable peerload seed beats an idler modelexpress one.
        ([Ref("mx", 0.0, "modelexpress"), Ref("pl", 3.0)], ["pl", "mx"]),
        ([Ref("mx", None, "modelexpress"), Ref("pl", None)], ["pl", "mx"]),
        # Within a kind, load still orders.
        (
            [Ref("mx-busy", 2.0, "modelexpress"), Ref("mx-idle", 0.0, "modelexpress"), Ref("pl", 9.0)],
            ["pl", "mx-idle", "mx-busy"],
        ),
        # Only modelexpress seeds: they are used.
        ([Ref("mx", None, "modelexpress")], ["mx"]),
        ([], []),
    ],
)
def test_peerload_seeds_first(refs, expected):
    for seed in range(5):
        assert [r.worker_id for r in order_sources(refs, rng=random.Random(seed))] == expected


def test_kind_of_a_listed_worker_comes_from_its_topology():
    def ref(topology: dict[str, str]) -> SourceRef:
        return SourceRef("sid", "w", "m", 0, "cpu", 0, topology)

    assert ref({PEERLOAD_MANIFEST_KEY: "10.0.0.1:5000", "rack": "r1"}).kind == "peerload"
    assert ref({"rack": "r1"}).kind == "modelexpress"
    assert ref({PEERLOAD_MANIFEST_KEY: ""}).kind == "modelexpress"
