"""Pure source ordering: peerload seeds first (their checksums make a load verifiable), then the
least reported load, ties broken at random."""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Protocol, TypeVar

from peerload.wire import PEERLOAD


class _Candidate(Protocol):
    @property
    def worker_id(self) -> str: ...

    @property
    def source_load(self) -> float | None: ...

    @property
    def kind(self) -> str: ...


C = TypeVar("C", bound=_Candidate)


def order_sources(
    candidates: Sequence[C], *, exclude: set[str] | frozenset[str] = frozenset(), rng: random.Random | None = None
) -> list[C]:
    """Candidates sorted by kind (peerload before modelexpress), then load (unknown counts as 0),
    random among equals."""
    rng = rng or random.Random()
    pool = [c for c in candidates if c.worker_id not in exclude]
    keyed = [((c.kind != PEERLOAD), (c.source_load or 0.0), rng.random(), c) for c in pool]
    keyed.sort(key=lambda k: k[:3])
    return [k[-1] for k in keyed]
