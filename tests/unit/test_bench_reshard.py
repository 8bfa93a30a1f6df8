"""`peerload bench reshard`'s summary: medians per case, speed against the same-layout baseline, wire bytes."""

from __future__ import annotations

from peerload.bench.reshard import CASES, ReshardBenchConfig, reshard_table, summarize


def run(gbps: float, payload: float = 1.0, nic: float = 1.01) -> dict[str, object]:
    return {"bytes": 100, "gbps": gbps, "transfer_s": 1 / gbps, "payload_ratio": payload, "nic_ratio": nic,
            "resharded_from": ""}  # fmt: skip


def test_goals_compare_each_resharding_case_with_its_baseline():
    speeds = {"2->1": [0.8, 0.9, 1.0], "1->1": [1.0, 1.0, 1.0], "1->2": [0.5, 0.7, 0.6], "2->2": [1.0, 1.0, 1.0]}
    runs = {case: [run(g, payload=1.06 if case == "1->2" else 1.0) for g in gs] for case, gs in speeds.items()}
    assert set(runs) == {c for c, *_ in CASES}
    results = summarize(ReshardBenchConfig(), runs, 100)
    goals = results["goals"]
    assert goals["speed_2->1"] == {"value": 0.9, "goal": 0.8, "met": True}
    assert goals["speed_1->2"]["value"] == 0.6 and not goals["speed_1->2"]["met"]
    assert goals["wire_2->1"]["met"] and not goals["wire_1->2"]["met"]
    assert results["cases"]["1->2"]["gbps"] == 0.6
    assert reshard_table(results).row_count == 4 + 4
