"""One tiny real fan-out run on emulated hosts: the uncapped ceiling, then 1 and 2 targets at once
under NIC caps set below it, and the fanout.json it writes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from peerload.errors import FleetUnavailable
from peerload.fleet import Fleet


@pytest.mark.timeout(300)
def test_tiny_fanout_run_measures_the_ceiling_then_fanout_under_caps_below_it(run_peerload, tmp_path: Path) -> None:
    try:
        Fleet(2, max_seconds=30).close()
    except FleetUnavailable as exc:
        pytest.skip(f"emulated hosts unavailable here: {exc}")
    proc = run_peerload(
        "bench", "fanout", "--targets", "2,1", "--size-gib", "0.02", "--part-mib", "1", "--transport", "nixl",
        "--out", str(tmp_path), "--no-plot", timeout=280,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads((tmp_path / "fanout.json").read_text())
    ceiling = results["ceiling"]
    assert ceiling["targets"] == [1, 2] and set(ceiling["cases"]) == {"1", "2"}
    assert ceiling["aggregate_gbps"] == ceiling["cases"]["2"]["aggregate_gbps"] > 0
    config = results["config"]
    assert config["targets"] == [1, 2] and config["nic_rule"] == "0.5 x ceiling / 2"
    # two NICs at the chosen cap ask for half of what the machine carried without caps
    assert config["nic_gbit"] == pytest.approx(0.5 * ceiling["aggregate_gbps"] * 8 / 2, rel=1e-3)
    assert results["bound"]["demand_share_of_ceiling"] == pytest.approx(0.5, rel=1e-3)
    assert set(results["fanout"]) == set(results["origin_copies"]) == {"1", "2"}
    assert results["fanout"]["1"] == 1.0 and results["origin_copies"]["1"] == pytest.approx(1.0)
    assert 0 < results["origin_copies"]["2"] <= 2.0
    assert results["goals"]["fanout_2"]["goal"] == 1.5 and results["goals"]["origin_copies_2"]["goal"] == 2.0
    assert results["verdict"].startswith("At N=2, the NICs ")
    for case in [*results["cases"].values(), *ceiling["cases"].values()]:
        assert case["restarted_bytes"] == 0 and case["seed_nic_sent_copies"] >= case["origin_copies"] * 0.99
