"""The one list of a load's phases: every phase the loader times is in it (reports show each)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from peerload.loader import PHASES
from peerload.loader.phases import PhaseTimer

LOADER = Path(__file__).resolve().parents[2] / "src" / "peerload" / "loader"


def test_every_phase_the_loader_times_is_listed() -> None:
    timed = {m for f in LOADER.glob("*.py") for m in re.findall(r'_phase\("(\w+)"\)', f.read_text())}
    assert {"transfer", "settle"} <= timed  # the scan finds the loader's phases
    assert timed <= set(PHASES)


def test_a_phase_outside_the_list_is_refused() -> None:
    seconds: dict[str, float] = {}
    with PhaseTimer(seconds, "settle"):
        pass
    assert set(seconds) == {"settle"}
    with pytest.raises(ValueError, match="'warmup' is not one of PHASES"):
        PhaseTimer(seconds, "warmup")
