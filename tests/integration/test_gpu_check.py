"""`make gpu-check`'s script on CPU (CUDA is not available here): a seed and a target process over
NIXL, bit-exact, verified with the on-device digest (wsum64), and its JSON report complete.

On a GPU machine the same script runs with --device cuda (docs/testing.md, "GPU check"); only that run
measures GPU memory, cuda_ipc and the device copy the goals refer to.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_gpu_check_runs_on_cpu_and_reports_every_figure(tmp_path):
    out = tmp_path / "gpu-check.json"
    cmd = [sys.executable, "scripts/gpu_check.py", "--device", "cpu", "--size-mib", "16", "--tensors", "6"]
    proc = subprocess.run(
        [*cmd, "--part-mib", "1", "--json", str(out)], cwd=REPO, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report == json.loads(proc.stdout)
    assert report["ok"] is True and report["device"] == "cpu"
    assert report["load"]["verified"] is True and report["load"]["exact"] is True
    assert report["load"]["source"] == report["seed"]["worker_id"], report["load"]["attempts"]
    assert report["seed"]["part_algorithms"] == ["wsum64"]
    assert report["transfer"]["exact"] is True
    assert report["bytes"] == 6 * ((16 << 20) // 6 // 4096 * 4096)
    assert report["digest"]["parts"] >= 6
    for key in ("transfer_vs_copy", "digest_vs_copy", "load_vs_copy", "setup_s"):
        assert report[key] > 0
    assert set(report["goals"]) == {"transfer_vs_copy", "digest_vs_copy"}


def test_gpu_check_names_a_missing_gpu():
    proc = subprocess.run(
        [sys.executable, "scripts/gpu_check.py", "--device", "cuda:0"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    assert "CUDA is not available here" in proc.stderr
