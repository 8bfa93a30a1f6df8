"""Pure source ordering: least reported load first, ties broken at random."""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Protocol, TypeVar


class _Candidate(Protocol):
    worker_id: str

    @property
    def source_load(self) -> float | None: ...


C = TypeVar("C", bound=_Candidate)


def order_sources(
    candidates: Sequence[C], *, exclude: set[str] | frozenset[str] = frozenset(), rng: random.Random | None = None
) -> list[C]:
    """Candidates sorted by load (unknown load counts as 0), random among equals."""
    rng = rng or random.Random()
    pool = [c for c in candidates if c.worker_id not in exclude]
    keyed = [((c.source_load or 0.0), rng.random(), c) for c in pool]
    keyed.sort(key=lambda k: (k[0], k[1]))
    return [c for _, _, c in keyed]
