"""The bench machinery without processes: inventory, checkpoint reuse, plan, summary, ratios and goals."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console

from peerload.bench import report
from peerload.bench.runner import (
    GOALS,
    SETUP_GOAL_S,
    BenchConfig,
    CaseFailed,
    Runs,
    _Measurement,
    goals,
    outlier_rounds,
    summarise,
)
from peerload.synthetic import inventory, write_checkpoint


def test_inventory_is_llama_like_and_sized() -> None:
    specs = inventory(256 << 20, 500)
    names = [s.name for s in specs]
    assert len(specs) == 498 and len(set(names)) == len(names)
    assert {"model.embed_tokens.weight", "lm_head.weight", "model.norm.weight"} <= set(names)
    assert any(n.endswith("mlp.down_proj.weight") for n in names)
    assert abs(sum(s.nbytes for s in specs) - (256 << 20)) < 0.01 * (256 << 20)


def test_checkpoint_is_reused_only_with_the_same_layout(tmp_path: Path) -> None:
    path = tmp_path / "ckpt.safetensors"
    small, other = inventory(1 << 20, 21), inventory(2 << 20, 21)
    write_checkpoint(path, small)
    first = path.stat().st_ino  # a rewrite renames a new file into place: another inode
    write_checkpoint(path, small)
    assert path.stat().st_ino == first  # same names and shapes: reused
    write_checkpoint(path, other)
    assert path.stat().st_ino != first  # other shapes: written anew
    path.write_bytes(b"not a safetensors file")
    write_checkpoint(path, small)
    assert path.stat().st_size > 1 << 19  # unreadable: written anew


class _FakeHarness:
    """Seeds that start (or fail) at once; runs that return a fixed time."""

    def __init__(self, failing: frozenset[str] = frozenset()) -> None:
        self.failing = failing
        self.seeds: list[dict[str, Any]] = []

    @contextmanager
    def seed(self, case: str, args: dict[str, Any]) -> Iterator[Path]:
        if args.get("transport", case) in self.failing:
            raise CaseFailed(f"{case}: exited with code 1")
        self.seeds.append(args)
        yield Path(f"/ready/{len(self.seeds)}")

    def run(self, case: str, args: dict[str, Any]) -> dict[str, Any]:
        return {"seconds": 1.0, "case": case}


def _measurement(harness: _FakeHarness, **config: Any) -> _Measurement:
    base = {"model_name": "m", "specs": []}
    coordinator = {"coordinator": "127.0.0.1:1"}
    return _Measurement(BenchConfig(**config), harness, ExitStack(), base, coordinator)  # type: ignore[arg-type]


def test_plan_has_one_seed_per_transport_and_honours_groups_and_skip() -> None:
    harness = _FakeHarness()
    m = _measurement(
        harness,
        transports=("nixl", "transfer_engine"),
        groups=("limit", "peerload", "wire"),
        skip=frozenset({"limit_prefault", "peerload_transfer_engine_noverify"}),
    )
    plan = m.plan()
    assert [name for name, _, _ in plan] == [
        "limit",
        "peerload_nixl",
        "peerload_nixl_noverify",
        "wire_nixl",
        "peerload_transfer_engine",
        "wire_transfer_engine",
    ]
    # the limit copies from a shared-memory holder's resident bytes; one seed per transport
    assert [s["model_name"] for s in harness.seeds] == ["m", "m-nixl", "m-transfer_engine"]
    assert {name: args for name, _, args in plan}["limit"]["holder_ready"] == "/ready/1"
    target = {name: args for name, _, args in plan}["peerload_nixl_noverify"]
    assert target["verify"] is False and target["transport"] == "nixl" and target["seed_ready"] == "/ready/2"
    m.config.repeats = 2
    m.run_rounds(plan, progress=lambda s: None)
    assert [len(m.raw[name].runs) for name, _, _ in plan] == [2] * len(plan)


def test_a_seed_that_fails_marks_its_cases_and_the_rest_still_run() -> None:
    m = _measurement(
        _FakeHarness(failing=frozenset({"transfer_engine"})),
        transports=("nixl", "transfer_engine"),
        groups=("peerload", "setup"),
    )
    plan = m.plan()
    assert {name for name, _, _ in plan} == {"peerload_nixl", "peerload_nixl_noverify", "setup_nixl"}
    assert m.raw["peerload_transfer_engine"].error == "seed: seed: exited with code 1"


def _runs(*seconds: float, **extra: object) -> Runs:
    return Runs(runs=[{"seconds": s, **extra} for s in seconds])


def test_ratios_follow_their_definitions() -> None:
    raw = {
        "limit": _runs(2.0, 3.0, 4.0),
        "safetensors_cold": _runs(6.0),
        "safetensors_warm": _runs(1.0),
        "peerload_nixl": _runs(1.5, 1.5, bytes_ok=True),
        "peerload_nixl_noverify": _runs(1.0),
        "modelexpress_nixl": _runs(4.5),
        "setup_nixl": _runs(0.2),
        "peerload_transfer_engine": Runs(error="seed: boom"),
    }
    cfg = BenchConfig(size_gib=0.01, tensors=30, repeats=3, transports=("nixl", "transfer_engine"))
    r = summarise(raw, cfg, inventory(cfg.total_bytes, cfg.tensors))
    json.dumps(r)  # serialisable
    assert r["cases"]["limit"] | {"runs": None} == {
        "median": 3.0,
        "min": 2.0,
        "max": 4.0,
        "runs": None,
        "gbps": pytest.approx(r["config"]["bytes"] / 3.0 / 1e9),
    }
    ratios = r["ratios"]
    assert ratios["p2p_cold_to_limit"] == pytest.approx(3.0 / 1.5)
    assert ratios["p2p_cold_vs_cold_storage"] == pytest.approx(6.0 / 1.5)
    assert ratios["p2p_cold_vs_modelexpress"] == pytest.approx(4.5 / 1.5)
    assert ratios["p2p_noverify_vs_modelexpress"] == pytest.approx(4.5 / 1.0)
    assert ratios["setup_s"] == 0.2 and ratios["goals"]["setup_s"]["met"]
    assert ratios["goals"]["p2p_cold_to_limit"] == {
        "goal": 0.8,
        "value": pytest.approx(2.0),
        "met": True,
        "what": GOALS["p2p_cold_to_limit"][1],
    }
    assert ratios["per_transport"]["transfer_engine"]["p2p_cold_to_limit"] is None
    assert r["cases"]["peerload_transfer_engine"] == {"error": "seed: boom"}
    assert r["cases"]["peerload_nixl"]["bytes_ok"] is True


def test_goals_are_met_at_their_threshold_and_not_when_missed_or_unmeasured() -> None:
    values = {
        "p2p_cold_to_limit": GOALS["p2p_cold_to_limit"][0],
        "p2p_cold_vs_cold_storage": 2.9,
        "p2p_cold_vs_modelexpress": None,
        "setup_s": SETUP_GOAL_S + 0.01,
    }
    met = {name: g["met"] for name, g in goals(values).items()}
    assert met == {
        "p2p_cold_to_limit": True,
        "p2p_cold_vs_cold_storage": False,
        "p2p_cold_vs_modelexpress": False,
        "setup_s": False,
    }
    assert goals({**values, "setup_s": None})["setup_s"] == {
        "goal": SETUP_GOAL_S,
        "value": None,
        "met": False,
        "what": "setup (agent, registration, handshake) <= 0.3 s",
    }


def _render(table: Any) -> str:
    console = Console(file=io.StringIO(), width=200)
    console.print(table)
    return console.file.getvalue()


def test_tables_show_goals_without_issue_numbers_and_parts_without_a_limit_ratio() -> None:
    raw = {"limit": _runs(2.0), "peerload_nixl": _runs(1.0), "wire_nixl": _runs(0.5), "setup_nixl": _runs(0.1)}
    cfg = BenchConfig(size_gib=0.01, tensors=30, repeats=1, transports=("nixl",))
    r = summarise(raw, cfg, inventory(cfg.total_bytes, cfg.tensors))
    goals_text = _render(report.goals_table(r))
    assert "performance goals" in goals_text and "issue" not in goals_text.lower()
    rows = {
        line.split("│")[1].strip(): [c.strip() for c in line.split("│")[2:-1]]
        for line in _render(report.table(r)).splitlines()
        if line.startswith("│")
    }
    assert rows[report.label("peerload_nixl")][-1] == "2.00"  # x limit: 2.0 s / 1.0 s
    assert rows[report.label("wire_nixl")][-2:] == [f"{r['cases']['wire_nixl']['gbps']:.2f}", ""]
    assert rows[report.label("setup_nixl")][-2:] == ["", ""]


class _TimedHarness(_FakeHarness):
    """Runs of a case take the next of its given times (1.0 s once they run out)."""

    def __init__(self, times: dict[str, list[float]]) -> None:
        super().__init__()
        self.times = times

    def run(self, case: str, args: dict[str, Any]) -> dict[str, Any]:
        queue = self.times.get(case) or [1.0]
        return {"seconds": queue.pop(0) if len(queue) > 1 or case not in self.times else queue[0], "case": case}


def test_an_outlier_is_a_run_far_above_the_median_of_the_others() -> None:
    assert outlier_rounds([6.36, 0.78, 0.78], 2.0) == [0]
    assert outlier_rounds([0.78, 6.36], 2.0) == [1]
    assert outlier_rounds([1.0, 1.1, 0.9], 2.0) == []
    assert outlier_rounds([6.0, 6.0, 0.8], 2.0) == []  # most runs slow: none stands out
    assert outlier_rounds([6.36], 2.0) == []


def _limit_and_p2p(limit_times: list[float], remeasure: int = 2) -> dict[str, Any]:
    harness = _TimedHarness({"limit": limit_times, "target": [1.0]})
    m = _measurement(
        harness, repeats=3, transports=("nixl",), groups=("limit", "peerload"), remeasure=remeasure,
        skip=frozenset({"limit_prefault", "peerload_nixl_noverify"}),
    )  # fmt: skip
    plan = m.plan()
    m.run_rounds(plan, progress=lambda s: None)
    m.remeasure_outliers(plan, progress=lambda s: None)
    cfg = m.config
    return summarise(m.raw, cfg, inventory(1 << 20, 21))


def test_a_bimodal_limit_round_is_remeasured_and_replaced() -> None:
    r = _limit_and_p2p([6.36, 0.78, 0.80, 0.79])
    limit = r["cases"]["limit"]
    assert limit["runs"] == [0.79, 0.78, 0.80]
    assert limit["outliers"] == [
        {
            "round": 1,
            "seconds": 6.36,
            "others_median": pytest.approx(0.79),
            "remeasured": [0.79],
            "action": "remeasured",
        }
    ]
    ratios = r["ratios"]
    assert ratios["p2p_cold_to_limit_per_round"] == [0.79, 0.78, 0.80]
    assert ratios["p2p_cold_to_limit_same_round_median"] == pytest.approx(0.79)
    assert ratios["limit_outliers"]["left_out_of_same_round_median"] == []
    assert r["config"]["outlier_factor"] == 2.0 and r["config"]["remeasure"] == 2


def test_an_outlier_that_stays_is_reported_and_left_out_of_the_same_round_ratio() -> None:
    r = _limit_and_p2p([6.36, 0.78, 0.80, 6.1, 5.9])
    (outlier,) = r["cases"]["limit"]["outliers"]
    assert outlier["action"] == "reported" and outlier["remeasured"] == [6.1, 5.9]
    assert r["cases"]["limit"]["runs"] == [6.36, 0.78, 0.80]
    ratios = r["ratios"]
    assert ratios["p2p_cold_to_limit_per_round"] == [6.36, 0.78, 0.80]
    assert ratios["limit_outliers"]["left_out_of_same_round_median"] == [1]
    assert ratios["p2p_cold_to_limit_same_round_median"] == pytest.approx(0.79)


def test_with_no_remeasure_an_outlier_is_only_reported() -> None:
    r = _limit_and_p2p([6.36, 0.78, 0.80], remeasure=0)
    assert r["cases"]["limit"]["outliers"][0]["action"] == "reported"
    assert r["cases"]["limit"]["outliers"][0]["remeasured"] == []


def test_the_table_names_an_outlier_round_and_what_became_of_it() -> None:
    r = _limit_and_p2p([6.36, 0.78, 0.80, 0.79])
    note = report.outliers_note(r)
    assert note == (
        f"{report.label('limit')}, round 1: 6.360 s against 0.790 s in the other rounds; re-measured 0.790: remeasured"
    )
    assert report.table(r).caption == note
