"""One tiny real fan-out run on emulated hosts: 1 and 2 targets at once, the fleet.json it writes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from peerload.errors import FleetUnavailable
from peerload.fleet import Fleet


@pytest.mark.timeout(240)
def test_tiny_fanout_run_writes_fanout_and_origin_copies(run_peerload, tmp_path: Path) -> None:
    try:
        Fleet(2, max_seconds=30).close()
    except FleetUnavailable as exc:
        pytest.skip(f"emulated hosts unavailable here: {exc}")
    (tmp_path / "fleet.json").write_text(json.dumps({"striping_speedup": {"4": 2.5}}))  # an earlier --fleet run
    proc = run_peerload(
        "bench", "--fleet", "--targets", "2,1", "--size-gib", "0.02", "--nic-gbit", "1", "--part-mib", "1",
        "--transport", "nixl", "--out", str(tmp_path), "--no-plot", timeout=220,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads((tmp_path / "fleet.json").read_text())
    assert results["striping_speedup"] == {"4": 2.5}, "the earlier fleet figures are kept"
    assert set(results["fanout"]) == set(results["origin_copies"]) == {"1", "2"}
    assert results["fanout"]["1"] == 1.0 and results["origin_copies"]["1"] == pytest.approx(1.0)
    assert 0 < results["origin_copies"]["2"] <= 2.0
    run = results["fanout_run"]
    assert run["config"]["targets"] == [1, 2] and run["goals"]["fanout_2"]["goal"] == 1.5
    for case in run["cases"].values():
        assert case["restarted_bytes"] == 0 and case["seed_nic_sent_copies"] >= case["origin_copies"] * 0.99
