"""`peerload bench replica`: the goals are computed from the medians, and the table and chart render."""

from __future__ import annotations

from pathlib import Path

from peerload.bench.replica import CASES, ReplicaBenchConfig, _results, plot_replica, replica_table


def run(seconds: float, graph: bool = False) -> dict:
    return {
        "seconds": seconds,
        "llm_s": seconds - 2,
        "tokens": [[1]],
        "compile_cache_installed": graph,
        "loaded_compiled_graph": graph,
        "weights_from_peer": False,
    }


def test_goals_from_medians(tmp_path: Path) -> None:
    runs = {"a": [run(30), run(32)], "b": [run(28)], "c": [run(11, True)], "d": [run(10)]}
    paths = {"bytes": 1, "artifact": {"gbps": 0.9}, "weights": {"gbps": 1.0}, "ratio": 0.9}
    results = _results(ReplicaBenchConfig(Path("py"), tmp_path), {"llm_s": 30, "tokens": [[1]]}, runs, paths)
    assert set(results["cases"]) == set(CASES)
    assert results["cases"]["a"]["median_s"] == 31
    goals = results["goals"]
    assert goals["c_over_d"]["value"] == 1.1 and goals["c_over_d"]["met"]
    assert round(goals["a_over_c"]["value"], 2) == 2.82 and goals["a_over_c"]["met"]
    assert goals["artifact_over_weights_gbps"]["met"] and results["tokens_equal"]
    replica_table(results)
    assert plot_replica(results, tmp_path / "r.png").stat().st_size > 0
    runs["c"] = [run(12)]
    slower = _results(ReplicaBenchConfig(Path("py"), tmp_path), {"llm_s": 30, "tokens": [[2]]}, runs, paths)
    assert not slower["goals"]["c_over_d"]["met"] and not slower["tokens_equal"]
