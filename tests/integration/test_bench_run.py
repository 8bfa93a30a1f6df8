"""One tiny real `measure` run: fresh case processes, a seed, the coordinator, the results schema."""

from __future__ import annotations

from pathlib import Path

import pytest

from peerload.bench.runner import BenchConfig, measure


@pytest.mark.timeout(180)
def test_tiny_real_run_writes_the_schema(tmp_path: Path) -> None:
    cfg = BenchConfig(
        size_gib=4 / 1024,
        tensors=21,
        repeats=1,
        transports=("nixl",),
        out=tmp_path,
        groups=("limit", "storage", "peerload", "wire"),
        skip=frozenset({"limit_prefault", "safetensors_warm", "peerload_nixl_noverify"}),
    )
    r = measure(cfg)
    assert set(r) == {"config", "machine", "cases", "ratios"}
    assert set(r["cases"]) == {"limit", "safetensors_cold", "peerload_nixl", "wire_nixl"}
    for name, case in r["cases"].items():
        assert "error" not in case, (name, case)
        assert case["min"] <= case["median"] <= case["max"] and case["gbps"] > 0
    assert r["cases"]["peerload_nixl"]["bytes_ok"] is True
    assert {"prepare", "transfer", "verify", "total"} <= set(r["cases"]["peerload_nixl"]["breakdown_median_s"])
    assert r["cases"]["wire_nixl"]["bytes_ok"] is True and "first_read" in r["cases"]["wire_nixl"]["breakdown_median_s"]
    # A share of the file in the page cache (0..1), not a time: the cold case really starts cold.
    assert r["cases"]["safetensors_cold"]["breakdown_median_s"]["resident_before"] < 0.5
    ratios = r["ratios"]
    assert ratios["p2p_cold_to_limit"] > 0 and ratios["p2p_cold_vs_cold_storage"] > 0
    assert ratios["p2p_cold_vs_modelexpress"] is None  # not measured in this run
    assert ratios["goals"]["p2p_cold_vs_modelexpress"]["met"] is False
