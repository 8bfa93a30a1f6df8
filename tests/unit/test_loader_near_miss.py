"""Near-miss analysis (pure): which workers almost match a load, and what to change."""

from __future__ import annotations

import dataclasses

import pytest

from peerload.identity import BackendFramework, SourceIdentity
from peerload.loader.near_miss import MAX_SHOWN, Seen, differences, explain, related_names

OURS = SourceIdentity(model_name="/models/bare", dtype="float32", backend_framework=BackendFramework.VLLM)


def seen(worker: str, identity: SourceIdentity, *, rank: int = 0, status: str = "READY") -> Seen:
    return Seen(worker, identity.source_id(), rank, status, identity)


def other(**changes: object) -> SourceIdentity:
    return dataclasses.replace(OURS, **changes)


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        ({"model_name": "meta-llama/bare"}, [("model_name", "'meta-llama/bare'", "'/models/bare'")]),
        ({"model_name": "/MODELS/BARE"}, []),  # the hash lower-cases: the same source id
        ({"dtype": "bfloat16", "revision": "v2"}, [("dtype", "'bfloat16'", "'float32'"), ("revision", "'v2'", "''")]),
        ({"backend_framework": BackendFramework.UNKNOWN}, [("backend_framework", "UNKNOWN", "VLLM")]),
        ({"tensor_parallel_size": 2}, [("tensor_parallel_size", "2", "1")]),
        ({"extra_parameters": {"k": "v"}}, [("extra_parameters", '{"k": "v"}', "{}")]),
        ({"torch_version": "2.13.0"}, [("torch_version", "'2.13.0'", "''")]),
    ],
)
def test_differences_name_each_field_and_both_values(changes, expected):
    found = differences(other(**changes), OURS)
    assert [(d.field, d.theirs, d.ours) for d in found] == expected


def test_one_field_away_is_a_near_miss_with_a_fix():
    result = explain(OURS, 0, [seen("seed-a", other(model_name="meta-llama/bare"))])
    assert result.matches == ()
    (miss,) = result.near_misses
    assert miss.kind == "identity"
    assert "model_name is 'meta-llama/bare' there, '/models/bare' here" in miss.describe()
    assert "worker seed-a, READY at rank 0" in miss.describe()
    assert "--served-model-name" in miss.fix and "--model-name" in miss.fix
    assert result.hint == miss.fix
    assert result.attempt_lines() == [f"near miss: {miss.describe()}; to use it: {miss.fix}"]


def test_two_fields_are_a_near_miss_three_are_another_model():
    two = other(model_name="BARE", dtype="bfloat16")
    three = other(model_name="BARE", dtype="bfloat16", revision="main")
    result = explain(OURS, 0, [seen("two", two), seen("three", three)])
    assert [m.workers[0].worker_id for m in result.near_misses] == ["two"]
    fix = result.near_misses[0].fix
    assert "model name" in fix and "dtype" in fix


@pytest.mark.parametrize(
    ("worker", "kind", "text", "fix"),
    [
        (seen("w", OURS, status="STALE"), "status", "is STALE at rank 0", "stopped heartbeating"),
        (seen("w", OURS, status="INITIALIZING"), "status", "is INITIALIZING at rank 0", "still loading"),
        (seen("w", OURS, rank=1), "rank", "is READY at rank 1; this load is rank 0", "same rank"),
        (seen("w", OURS, rank=1, status="STALE"), "status", "STALE at rank 1; this load is rank 0", "heartbeating"),
    ],
)
def test_same_identity_not_ready_or_at_another_rank(worker, kind, text, fix):
    (miss,) = explain(OURS, 0, [worker]).near_misses
    assert miss.kind == kind and miss.source_id == OURS.source_id()
    assert text in miss.describe() and fix in miss.fix


def test_matches_exclusions_ordering_and_grouping():
    full = other(model_name="meta-llama/bare")
    workers = [
        seen("match", OURS),
        seen("self", OURS, status="INITIALIZING"),  # this load's own record: never a near miss
        seen("stale", OURS, status="STALE"),
        seen("full-0", full, status="STALE"),
        seen("full-1", full, rank=1),
        Seen("unread", "ffff", 0, "READY", None),  # identity not looked up: not judged
    ]
    result = explain(OURS, 0, workers, exclude={"self"})
    assert [w.worker_id for w in result.matches] == ["match"]
    # READY first: the identity near miss (one READY worker) before the STALE worker of this identity.
    assert [m.kind for m in result.near_misses] == ["identity", "status"]
    grouped = result.near_misses[0]
    assert [w.worker_id for w in grouped.workers] == ["full-0", "full-1"]
    assert "2 workers: 1 READY, 1 STALE, ranks 0, 1" in grouped.describe()
    assert grouped.as_dict()["differences"] == [
        {"field": "model_name", "theirs": "'meta-llama/bare'", "ours": "'/models/bare'"}
    ]


def test_attempt_lines_are_bounded():
    workers = [seen(f"w{i}", OURS, status="STALE") for i in range(MAX_SHOWN + 3)]
    lines = explain(OURS, 0, workers).attempt_lines()
    assert len(lines) == MAX_SHOWN + 1 and "3 more near miss(es)" in lines[-1]
    assert explain(OURS, 0, []).attempt_lines() == [] and explain(OURS, 0, []).hint == ""


def test_another_model_is_never_a_near_miss() -> None:
    """A seed of an unrelated model differing only in the name: no hint to rename after it."""
    result = explain(OURS, 0, [seen("seed-a", other(model_name="mistralai/Mistral-7B"))])
    assert result.near_misses == () and result.hint == ""


def test_related_names_are_one_model_spelled_two_ways() -> None:
    assert related_names("Qwen/Qwen3-0.6B", "/models/qwen3-0.6b/")
    assert not related_names("org/llama", "org/mistral") and not related_names("", "")


def test_a_source_of_another_parallel_layout_can_be_resharded():
    result = explain(OURS, 1, [seen("tp2", other(tensor_parallel_size=2, pipeline_parallel_size=2))])
    (miss,) = result.near_misses
    assert miss.reshardable and miss.as_dict()["reshardable"] is True
    assert miss.describe().endswith(
        "tensor_parallel_size is 2 there, 1 here; pipeline_parallel_size is 2 there, "
        "1 here: the layout differs but can be resharded"
    )
    assert "reshards from it" in miss.fix and "--tp-size" in miss.fix
    other_too = explain(OURS, 0, [seen("tp2-bf16", other(tensor_parallel_size=2, dtype="bfloat16"))])
    assert not other_too.near_misses[0].reshardable and "resharded" not in other_too.near_misses[0].describe()
