"""The fan-out benchmark's arithmetic: the NIC cap below the ceiling, where the run was bound, the verdict."""

from __future__ import annotations

import pytest

from peerload.bench.fanout import NIC_BOUND_SHARE, _goal, nic_cap_gbit, verdict, where_bound


def test_the_cap_lets_n_full_nics_ask_for_the_share_of_the_ceiling() -> None:
    # 0.4 GB/s carried by 8 targets: half of it is 0.2 GB/s, 25 MB/s a NIC, 0.2 Gbit/s
    assert nic_cap_gbit(0.4, 8, 0.5) == pytest.approx(0.2)
    assert nic_cap_gbit(0.4, 1, 1.0) == pytest.approx(3.2)


def _case(gbps: float) -> dict[str, float]:
    return {"aggregate_gbps": gbps}


def test_nic_bound_needs_demand_below_the_ceiling_and_one_target_near_its_cap() -> None:
    ceiling = {"aggregate_gbps": 0.4}
    bound = where_bound({"1": _case(0.02), "8": _case(0.15)}, ceiling, 0.2, 8, 1 << 20)
    assert bound["nic_gbps"] == pytest.approx(0.025)
    assert bound["demand_share_of_ceiling"] == pytest.approx(0.5)
    assert bound["single_share_of_nic"] == pytest.approx(0.8) and bound["nic_bound"]
    assert bound["top_share_of_ceiling"] == pytest.approx(0.375)
    slow_alone = where_bound({"1": _case(0.025 * (NIC_BOUND_SHARE - 0.1))}, ceiling, 0.2, 8, 1 << 20)
    assert not slow_alone["nic_bound"], "one target far below its cap: something else binds"
    over = where_bound({"1": _case(0.2)}, ceiling, 1.6, 8, 1 << 20)  # 8 x 0.2 GB/s = 4x the ceiling
    assert over["demand_share_of_ceiling"] == pytest.approx(4.0) and not over["nic_bound"]


def test_the_verdict_says_where_it_was_bound_and_each_goal_plainly() -> None:
    goals = {"fanout_8": _goal(1.62, 1.5), "origin_copies_8": _goal(1.4, 2.0)}
    text = verdict(goals, {"nic_bound": True}, 8)
    assert text == (
        "At N=8, the NICs bound; fanout_8 = 1.62 (goal <= 1.5): NOT met; origin_copies_8 = 1.40 (goal <= 2): met"
    )
    assert "did NOT bind" in verdict({"fanout_8": _goal(None, 1.5)}, {"nic_bound": False}, 8)
    assert "not measured" in verdict({"fanout_8": _goal(None, 1.5)}, {"nic_bound": False}, 8)
