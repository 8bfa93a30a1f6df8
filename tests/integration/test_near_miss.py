"""A load that finds no READY source says why: near misses through `peerload load` and
`peerload sources --explain`, against a real coordinator (and a real seed for the commonest miss).

Records other than the real seed's are published with the coordinator client as a seed would
publish them; no transfer is started, so they carry no transport metadata.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from peerload.cli._model_options import identity_options
from peerload.client import CoordinatorClient, SourceStatus, WorkerInfo

FULL, BARE = "org/tiny-llama", "/models/tiny-llama"  # one model spelled two ways (vLLM: path vs name)


@pytest.fixture
def registry(coordinator_factory: Any) -> Any:
    # READY records must not expire while a test runs its CLI commands.
    return coordinator_factory(heartbeat_timeout_s=300, gc_timeout_s=600)


def publish(address: str, identity: Any, rank: int, status: SourceStatus | None, worker_id: str) -> None:
    with CoordinatorClient(address) as client:
        source_id = client.publish(identity, WorkerInfo(rank=rank), worker_id)
        if status is not None:
            client.update_status(source_id, worker_id, rank, status)


def explain(run_peerload: Any, path: Path, address: str, *options: str) -> dict[str, Any]:
    proc = run_peerload("sources", "--explain", str(path), *options, "--coordinator", address, "--json")
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def test_seed_under_another_model_name(tiny_model, registry, seed_process, run_peerload, tmp_path):
    model = tiny_model("llama")
    seed = seed_process(model, registry.address, name=FULL)
    ours = ["--model-name", BARE, "--coordinator", registry.address]

    refused = run_peerload("load", str(model), *ours, "--no-fallback", "--no-progress")
    assert refused.returncode == 1
    err = " ".join(refused.stderr.split())  # rich wraps long lines
    assert f"model_name is '{FULL}' there, '{BARE}' here" in err, refused.stderr
    assert seed["worker_id"] in err and "READY at rank 0" in err
    assert "hint: give both sides the same model name (peerload: --model-name; vLLM: --served-model-name" in err

    explained = explain(run_peerload, model, registry.address, "--model-name", BARE)
    assert explained["matches"] == []
    (miss,) = explained["near_misses"]
    assert miss["kind"] == "identity" and miss["differences"] == [
        {"field": "model_name", "theirs": f"'{FULL}'", "ours": f"'{BARE}'"}
    ]
    matched = explain(run_peerload, model, registry.address, "--model-name", FULL)
    assert matched["matches"] == [seed["worker_id"]] and matched["near_misses"] == []

    text = run_peerload("sources", "--explain", str(model), "--model-name", BARE, "--coordinator", registry.address)
    assert "no READY source matches; near misses:" in text.stdout and "to use it:" in text.stdout, text.stdout
    listed = run_peerload("sources", "--coordinator", registry.address, "--model", FULL, "--json")
    assert [row["worker_id"] for row in json.loads(listed.stdout)] == [seed["worker_id"]]
    other = run_peerload("sources", "--coordinator", registry.address, "--model", BARE, "--json")
    assert json.loads(other.stdout) == []

    # With the storage fallback the load succeeds and its report says why no peer served it.
    report_path = tmp_path / "report.json"
    loaded = run_peerload("load", str(model), *ours, "--no-progress", "--report", str(report_path))
    assert loaded.returncode == 0, loaded.stderr
    report = json.loads(report_path.read_text())
    assert report["source"] == "storage"
    assert any(a.startswith("near miss: source") and FULL in a for a in report["attempts"]), report["attempts"]
    # A one-shot load (no --serve) publishes nothing: no STALE worker of this identity is left.
    after = explain(run_peerload, model, registry.address, "--model-name", BARE)
    assert [m["kind"] for m in after["near_misses"]] == ["identity"]


def test_each_kind_of_near_miss(tiny_model, registry, run_peerload):
    """This load is rank 1 of tp 2; the coordinator holds one worker of each kind of near miss."""
    model = tiny_model("llama")
    ours, rank = identity_options(model, BARE, "", 2, 1, 1, 0, 1)
    assert rank == 1
    records = {
        "stale-r1": (ours, 1, SourceStatus.STALE),
        "loading-r1": (ours, 1, None),  # published, never READY: INITIALIZING
        "ready-r0": (ours, 0, SourceStatus.READY),
        "two-fields": (
            ours.__class__(**{**ours.as_dict(), "model_name": FULL, "revision": "v2"}),
            1,
            SourceStatus.READY,
        ),
        "three-fields": (
            ours.__class__(**{**ours.as_dict(), "model_name": FULL, "revision": "v2", "dtype": "bfloat16"}),
            1,
            SourceStatus.READY,
        ),
    }
    for worker_id, (identity, worker_rank, status) in records.items():
        publish(registry.address, identity, worker_rank, status, worker_id)

    options = ("--model-name", BARE, "--tp-size", "2", "--tp-rank", "1")
    explained = explain(run_peerload, model, registry.address, *options)
    kinds = {m["workers"][0]["worker_id"]: m for m in explained["near_misses"]}
    assert explained["matches"] == [] and set(kinds) == {"stale-r1", "loading-r1", "ready-r0", "two-fields"}
    assert kinds["stale-r1"]["kind"] == "status" and "is STALE at rank 1" in kinds["stale-r1"]["text"]
    assert kinds["loading-r1"]["kind"] == "status" and "INITIALIZING" in kinds["loading-r1"]["text"]
    assert kinds["ready-r0"]["kind"] == "rank" and "READY at rank 0; this load is rank 1" in kinds["ready-r0"]["text"]
    assert [d["field"] for d in kinds["two-fields"]["differences"]] == ["model_name", "revision"]
    assert "--revision" in kinds["two-fields"]["fix"]

    refused = run_peerload(
        "load", str(model), *options, "--coordinator", registry.address, "--no-fallback", "--no-progress"
    )
    assert refused.returncode == 1
    err = " ".join(refused.stderr.split())
    for expected in (
        "is STALE at rank 1",
        "is INITIALIZING at rank 1",
        "READY at rank 0; this load is rank 1",
        "revision is 'v2' there, '' here",
    ):
        assert expected in err, refused.stderr
    assert "three-fields" not in err and "hint:" in err


def test_survey_reads_a_bounded_number_of_identities(registry):
    """Many other models at the coordinator: at most MAX_LOOKUPS GetMetadata calls, same model name first."""
    from peerload.identity import SourceIdentity
    from peerload.loader import survey

    ours = SourceIdentity(model_name=BARE, dtype="float32")
    publish(registry.address, SourceIdentity(model_name=BARE, dtype="bfloat16"), 0, SourceStatus.READY, "bf16")
    for i in range(survey.MAX_LOOKUPS + 4):  # all newer than "bf16"
        publish(
            registry.address,
            SourceIdentity(model_name=f"mirror-{i}/tiny-llama", dtype="float32"),
            0,
            None,
            f"other-{i}",
        )

    class Counting(CoordinatorClient):
        lookups = 0

        def get_metadata(self, source_id: str, worker_id: str) -> Any:
            Counting.lookups += 1
            return super().get_metadata(source_id, worker_id)

    with Counting(registry.address) as client:
        explained = survey.explain_sources(client, ours, 0)
    assert Counting.lookups == survey.MAX_LOOKUPS
    # The source with the same model name is read first; the others (the same model under other
    # names, one field away: model_name)
    # fill the rest of the budget, and the ones past it are not judged.
    kinds = {m.workers[0].worker_id: [d.field for d in m.differences] for m in explained.near_misses}
    assert kinds["bf16"] == ["dtype"] and len(kinds) == survey.MAX_LOOKUPS
