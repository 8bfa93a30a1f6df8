"""The bench machinery: inventory, summary and ratios (pure), and one tiny real run (schema only)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from peerload.bench.checkpoint import inventory
from peerload.bench.runner import BenchConfig, Runs, measure, summarise


def test_inventory_is_llama_like_and_sized() -> None:
    specs = inventory(256 << 20, 500)
    names = [s.name for s in specs]
    assert len(specs) == 498 and len(set(names)) == len(names)
    assert {"model.embed_tokens.weight", "lm_head.weight", "model.norm.weight"} <= set(names)
    assert any(n.endswith("mlp.down_proj.weight") for n in names)
    assert abs(sum(s.nbytes for s in specs) - (256 << 20)) < 0.01 * (256 << 20)


def _runs(*seconds: float, **extra: object) -> Runs:
    return Runs(runs=[{"seconds": s, **extra} for s in seconds])


def test_ratios_follow_their_definitions() -> None:
    raw = {"limit": _runs(2.0, 3.0, 4.0), "safetensors_cold": _runs(6.0), "safetensors_warm": _runs(1.0),
           "peerload_nixl": _runs(1.5, 1.5, bytes_ok=True), "peerload_nixl_noverify": _runs(1.0),
           "modelexpress_nixl": _runs(4.5), "setup_nixl": _runs(0.2),
           "peerload_transfer_engine": Runs(error="seed: boom")}
    cfg = BenchConfig(size_gib=0.01, tensors=30, repeats=3, transports=("nixl", "transfer_engine"))
    r = summarise(raw, cfg, inventory(cfg.total_bytes, cfg.tensors))
    json.dumps(r)  # serialisable
    assert r["cases"]["limit"] | {"runs": None} == {"median": 3.0, "min": 2.0, "max": 4.0, "runs": None,
                                                     "gbps": pytest.approx(r["config"]["bytes"] / 3.0 / 1e9)}
    ratios = r["ratios"]
    assert ratios["p2p_cold_to_limit"] == pytest.approx(3.0 / 1.5)
    assert ratios["p2p_cold_vs_cold_storage"] == pytest.approx(6.0 / 1.5)
    assert ratios["p2p_cold_vs_modelexpress"] == pytest.approx(4.5 / 1.5)
    assert ratios["p2p_noverify_vs_modelexpress"] == pytest.approx(4.5 / 1.0)
    assert ratios["setup_s"] == 0.2 and ratios["targets"]["setup_s"]["met"]
    assert ratios["targets"]["p2p_cold_to_limit"]["met"]
    assert ratios["per_transport"]["transfer_engine"]["p2p_cold_to_limit"] is None
    assert r["cases"]["peerload_transfer_engine"] == {"error": "seed: boom"}
    assert r["cases"]["peerload_nixl"]["bytes_ok"] is True


@pytest.mark.timeout(120)
def test_tiny_real_run_writes_the_schema(tmp_path: Path) -> None:
    cfg = BenchConfig(size_gib=4 / 1024, tensors=21, repeats=1, transports=("nixl",), out=tmp_path,
                      groups=("limit", "storage", "peerload"),
                      skip=frozenset({"limit_prefault", "safetensors_warm", "peerload_nixl_noverify"}))
    r = measure(cfg)
    assert set(r) == {"config", "machine", "cases", "ratios"}
    assert set(r["cases"]) == {"limit", "safetensors_cold", "peerload_nixl"}
    for name, case in r["cases"].items():
        assert "error" not in case, (name, case)
        assert case["min"] <= case["median"] <= case["max"] and case["gbps"] > 0
    assert r["cases"]["peerload_nixl"]["bytes_ok"] is True
    assert {"prepare", "transfer", "verify", "total"} <= set(r["cases"]["peerload_nixl"]["breakdown_median_s"])
    assert r["cases"]["safetensors_cold"]["breakdown_median_s"]["resident_before"] < 0.5
    ratios = r["ratios"]
    assert ratios["p2p_cold_to_limit"] > 0 and ratios["p2p_cold_vs_cold_storage"] > 0
    assert ratios["p2p_cold_vs_modelexpress"] is None  # not measured in this run
