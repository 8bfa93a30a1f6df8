"""The storage_fallback alarm's fix fits its cause (no advice that needs the coordinator that is down)."""

from __future__ import annotations

import logging

import pytest

from peerload.loader.load_metrics import record_fallback


def _alarm(caplog: pytest.LogCaptureFixture, reason: str, hint: str = "") -> str:
    with caplog.at_level(logging.WARNING):
        record_fallback(reason, "org/model", 0, ["coordinator at 10.0.0.1:8001: Check failed with UNAVAILABLE"], hint)
    [line] = [r.getMessage() for r in caplog.records if r.getMessage().startswith("ALARM storage_fallback")]
    caplog.clear()
    return line


def test_coordinator_down_says_to_start_the_coordinator_not_to_ask_it(caplog: pytest.LogCaptureFixture) -> None:
    line = _alarm(caplog, "coordinator_unreachable")
    assert "(coordinator_unreachable: coordinator at 10.0.0.1:8001: Check failed" in line
    assert "fix: start the coordinator (`peerload serve`)" in line and "publishes itself once it answers" in line
    assert "sources --explain" not in line and "READY seed" not in line


def test_no_source_says_to_start_a_seed_and_a_hint_wins(caplog: pytest.LogCaptureFixture) -> None:
    assert "fix: start (or wait for) a READY seed" in _alarm(caplog, "no_source")
    assert _alarm(caplog, "no_source", hint="give both sides the same model name").endswith(
        "fix: give both sides the same model name"
    )
