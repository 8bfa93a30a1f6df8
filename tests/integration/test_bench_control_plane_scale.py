"""One tiny real run of the control plane at scale: a real redis-server, one and two `peerload
serve` replicas, open-loop beats and lists from two generator processes; the results schema and
that every call was answered (a small load that any machine carries)."""

from __future__ import annotations

import pytest

from peerload.bench.control_plane_scale import ScaleConfig, run_scale, scale_table

pytestmark = pytest.mark.redis


@pytest.mark.timeout(300)
def test_tiny_scale_run_answers_every_beat_and_list_on_one_and_two_replicas() -> None:
    config = ScaleConfig(workers=60, models=6, interval_s=1.0, list_rps=20, duration_s=2.0, channels=4)
    results = run_scale(config)
    assert [c["replicas"] for c in results["cases"]] == [1, 2]
    for case in results["cases"]:
        lists, beats = case["ListSources"], case["UpdateStatus"]
        assert beats["calls"] == 60 * 2, "every worker beats once per interval, on schedule"
        assert lists["calls"] == 20 * 2
        assert lists["errors"] == beats["errors"] == 0 and lists["incomplete"] == 0
        assert 0 < lists["p50_ms"] <= lists["p99_ms"] <= lists["max_ms"]
        assert beats["lag_max_s"] > 0 and beats["late"] == 0
        assert len(case["cpu_s"]["coordinators"]) == case["replicas"]
        assert all(cpu > 0 for cpu in case["cpu_s"]["coordinators"]), "every replica served calls"
        assert case["cpu_ms_per_call"]["coordinators"] > 0
    assert scale_table(results).row_count == 2
