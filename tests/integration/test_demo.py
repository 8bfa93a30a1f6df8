"""`peerload demo` (what `make demo` runs) works end to end and cleans up after itself."""

from __future__ import annotations

import tempfile
from pathlib import Path


def test_demo_runs_and_cleans_up(run_peerload):
    before = set(Path(tempfile.gettempdir()).glob("peerload-demo-*"))
    proc = run_peerload("demo", "--hidden", "256", "--layers", "2", timeout=180)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    out = " ".join(proc.stdout.split())
    assert "identical=True" in out and "bit-identical: True" in out and "demo OK" in out
    assert set(Path(tempfile.gettempdir()).glob("peerload-demo-*")) == before
