"""End-to-end loader tests: a real coordinator, real `peerload seed` processes, real NIXL transfers
into real `transformers` models in separate target processes; bit-exact and token-exact checks."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from peerload._process import stop_process, wait_ready_file
from peerload.adapters import hf
from peerload.client import CoordinatorClient, SourceStatus
from peerload.seed_client import SeedClient
from peerload.settings import Settings
from peerload.tensors import module_tensors, sha256_of

REPO = Path(__file__).resolve().parents[2]
PEERS = Path(__file__).with_name("loader_peers.py")
NAME = "test/tiny-llama"


def make_llama(directory: Path, *, hidden: int = 64, layers: int = 2, vocab: int = 1000, seed: int = 0) -> Path:
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=vocab,
        hidden_size=hidden,
        intermediate_size=hidden * 2,
        num_hidden_layers=layers,
        num_attention_heads=max(2, hidden // 32),
        num_key_value_heads=2,
        head_dim=32,
        max_position_embeddings=256,
        tie_word_embeddings=True,
        initializer_range=0.2,
        dtype="float32",
    )
    LlamaForCausalLM(config).save_pretrained(str(directory))
    return directory


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_llama(tmp_path_factory.mktemp("llama") / "model")


@pytest.fixture(scope="module")
def disk_model(model_dir: Path) -> torch.nn.Module:
    return hf.load_model(model_dir)


def hashes(tensors: dict[str, torch.Tensor]) -> dict[str, str]:
    return {n: sha256_of(t) for n, t in tensors.items()}


class Seeds:
    """Starts `peerload seed` processes; stops them (SIGTERM, expecting exit 0) after the test."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.procs: list[subprocess.Popen] = []

    def start(self, model: Path, coordinator: str, *extra: str, name: str = NAME) -> dict[str, Any]:
        ready = self.tmp / f"seed-{len(self.procs)}.ready"
        log = open(self.tmp / f"seed-{len(self.procs)}.log", "wb")
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "peerload.cli.main",
                "seed",
                str(model),
                "--model-name",
                name,
                "--coordinator",
                coordinator,
                "--ready-file",
                str(ready),
                *extra,
            ],
            stdout=log,
            stderr=log,
            cwd=REPO,
        )
        self.procs.append(proc)
        info = wait_ready_file(proc, ready, timeout_s=90)
        info["ready_file"] = str(ready)
        info["proc"] = proc
        return info

    def stop_all(self) -> list[int | None]:
        return [stop_process(proc, timeout_s=30) for proc in self.procs]


@pytest.fixture
def seeds(tmp_path: Path) -> Iterator[Seeds]:
    s = Seeds(tmp_path)
    yield s
    s.stop_all()


def run_target(tmp: Path, model: Path, coordinator: str, *extra: str, timeout: float = 120) -> dict[str, Any]:
    out = tmp / f"target-{time.monotonic_ns()}.json"
    proc = subprocess.run(
        [sys.executable, str(PEERS), "target", str(model), NAME, coordinator, str(out), *extra],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=REPO,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(out.read_text())
    report["path"] = out
    return report


def test_p2p_load_is_bit_exact_and_generates_like_disk(coordinator, seeds, model_dir, disk_model, tmp_path):
    seed = seeds.start(model_dir, coordinator.address)
    report = run_target(tmp_path, model_dir, coordinator.address)
    assert report["source"] == seed["worker_id"], report["attempts"]
    assert report["sha256"] == hashes(module_tensors(disk_model))
    assert report["tokens"] == hf.greedy_tokens(disk_model)
    assert len(set(report["tokens"])) > 1, "degenerate generation would make the comparison meaningless"


def test_seed_with_the_device_digest_is_verified_and_bit_exact(
    coordinator, seeds, model_dir, disk_model, tmp_path, monkeypatch
):
    """A seed publishing wsum64 (what GPU memory gets, forced here on CPU): verified, bit-exact."""
    monkeypatch.setenv("PEERLOAD_CHECKSUM", "wsum64")
    seed = seeds.start(model_dir, coordinator.address)
    with CoordinatorClient(coordinator.address) as client:
        record = client.get_metadata(seed["source_id"], seed["worker_id"])
    assert record is not None
    with SeedClient(record.manifest_endpoint, seed["worker_id"], timeout_s=10) as seed_client:
        manifest = seed_client.manifest()
    assert manifest.checksum_algorithm == "per_part" and set(manifest.part_algorithms) == {"wsum64"}
    report = run_target(tmp_path, model_dir, coordinator.address)
    assert report["source"] == seed["worker_id"], report["attempts"]
    assert report["verified"] is True
    assert report["sha256"] == hashes(module_tensors(disk_model))


def test_cli_load_report_and_no_record_of_a_one_shot_load(
    coordinator, seeds, model_dir, disk_model, tmp_path, run_model_command
):
    seed = seeds.start(model_dir, coordinator.address)
    report_path = tmp_path / "report.json"
    proc = run_model_command(
        "load", model_dir, NAME, coordinator.address, "--report", str(report_path), "--no-progress"
    )
    assert proc.returncode == 0, proc.stderr
    report = json.loads(report_path.read_text())
    assert report["source"] == seed["worker_id"]
    assert report["bytes"] > 0 and report["gbps"] > 0 and report["published"] is False
    assert set(report["seconds"]) >= {"health", "prepare", "discover", "handshake", "transfer", "verify", "total"}
    assert report["sha256"] == hashes(module_tensors(disk_model))
    # Without --serve the target never became a source: no STALE row of it is left behind.
    with CoordinatorClient(coordinator.address) as client:
        records = {r.worker_id: r for r in client.list_sources()}
    assert list(records) == [seed["worker_id"]]
    assert records[seed["worker_id"]].worker_rank == 0


def test_seed_sigterm_marks_stale_and_exits_zero(coordinator, seeds, model_dir):
    seed = seeds.start(model_dir, coordinator.address)
    with CoordinatorClient(coordinator.address) as client:
        ready = client.list_sources(status=SourceStatus.READY)
        assert [r.worker_id for r in ready] == [seed["worker_id"]]
        assert seeds.stop_all() == [0]
        record = client.get_metadata(seed["source_id"], seed["worker_id"])
        assert record is not None and record.status == SourceStatus.STALE
        assert client.list_sources(status=SourceStatus.READY) == []


def test_tensor_parallel_two_ranks(coordinator, seeds, model_dir, disk_model, tmp_path):
    for rank in (0, 1):
        seeds.start(model_dir, coordinator.address, "--tp-size", "2", "--tp-rank", str(rank))
    full = module_tensors(disk_model, attributes=False)
    shards = []
    for rank in (0, 1):
        report = run_target(tmp_path, model_dir, coordinator.address, "--tp-size", "2", "--tp-rank", str(rank))
        assert report["source"] != "storage", report["attempts"]
        expected = hf.shard(full, 2, rank)
        assert report["sha256"] == hashes(expected)
        shards.append(torch.load(report["path"].with_suffix(".pt")))
    # Rank 0 holds the first half of a column-parallel weight, rank 1 the second: reassembled, the
    # model is the disk model exactly, and generates the same tokens.
    rebuilt = hf.build_empty_model(model_dir)
    slots = module_tensors(rebuilt, attributes=False)
    with torch.no_grad():
        for name, tensor in hf.unshard(shards).items():
            slots[name].copy_(tensor)
    assert hashes(module_tensors(rebuilt, attributes=False)) == hashes(full)
    assert hf.greedy_tokens(rebuilt) == hf.greedy_tokens(disk_model)


def test_quantized_layout_loads_peer_to_peer(coordinator, seeds, model_dir, tmp_path):
    seed = seeds.start(model_dir, coordinator.address, "--quantize", "int8")
    quantized = hf.load_model(model_dir, quantize="int8")
    report = run_target(tmp_path, model_dir, coordinator.address, "--quantize", "int8")
    assert report["source"] == seed["worker_id"], report["attempts"]
    assert report["sha256"] == hashes(module_tensors(quantized))
    assert any(t.dtype == torch.int8 for t in module_tensors(quantized).values())
    assert report["tokens"] == hf.greedy_tokens(quantized)


def test_target_without_post_processing_gets_layout_mismatch_then_storage(
    coordinator, seeds, model_dir, disk_model, tmp_path
):
    seeds.start(model_dir, coordinator.address, "--quantize", "int8")
    report = run_target(tmp_path, model_dir, coordinator.address)
    assert report["source"] == "storage"
    assert any("LayoutMismatch" in a and "dtype" in a for a in report["attempts"]), report["attempts"]
    assert report["sha256"] == hashes(module_tensors(disk_model))


def test_different_model_under_same_name_falls_back(coordinator, seeds, model_dir, disk_model, tmp_path):
    other = make_llama(tmp_path / "other", layers=3, seed=1)
    seeds.start(other, coordinator.address)
    report = run_target(tmp_path, model_dir, coordinator.address)
    assert report["source"] == "storage"
    assert any("LayoutMismatch" in a and "unexpected tensor" in a for a in report["attempts"]), report["attempts"]
    assert report["sha256"] == hashes(module_tensors(disk_model))


def test_no_ready_source_falls_back_with_reason(coordinator, model_dir, disk_model, tmp_path):
    report = run_target(tmp_path, model_dir, coordinator.address)
    assert report["source"] == "storage"
    assert any("no READY source" in a for a in report["attempts"]), report["attempts"]
    assert report["sha256"] == hashes(module_tensors(disk_model))


def test_coordinator_down(model_dir, tmp_path, free_port, run_peerload):
    address = f"127.0.0.1:{free_port()}"
    report_path = tmp_path / "r.json"
    fell_back = run_peerload(
        "load",
        str(model_dir),
        "--model-name",
        NAME,
        "--coordinator",
        address,
        "--report",
        str(report_path),
        "--no-progress",
    )
    assert fell_back.returncode == 0, fell_back.stderr
    report = json.loads(report_path.read_text())
    assert report["source"] == "storage" and report["published"] is False
    assert any(address in a for a in report["attempts"])
    refused = run_peerload("load", str(model_dir), "--model-name", NAME, "--coordinator", address, "--no-fallback")
    assert refused.returncode == 1
    assert address in refused.stderr and "UNAVAILABLE" in refused.stderr
    # Fails fast, not waiting for a coordinator to appear: it gave up after its configured retries.
    retries = Settings.load(env={}).rpc_retries
    assert f"after {retries + 1} attempts" in refused.stderr, refused.stderr
    assert any(f"after {retries + 1} attempts" in a for a in report["attempts"]), report["attempts"]


def test_seed_killed_mid_transfer_completes_from_another(coordinator, seeds, tmp_path):
    # ~60 MB in 1 MiB requests, so the kill lands while most bytes are still to come.
    big = make_llama(tmp_path / "big", hidden=512, layers=4, vocab=8000)
    a = seeds.start(big, coordinator.address)
    b = seeds.start(big, coordinator.address)
    report = run_target(
        tmp_path,
        big,
        coordinator.address,
        "--chunk-bytes",
        str(1 << 20),
        "--kill-ready",
        a["ready_file"],
        "--kill-ready",
        b["ready_file"],
    )
    assert len(report["killed"]) == 1, "the first source should have been killed mid-transfer"
    assert report["source"] not in ("storage", report["killed"][0])
    assert any(report["killed"][0] in a and "TransportError" in a for a in report["attempts"]), report["attempts"]
    assert report["sha256"] == hashes(module_tensors(hf.load_model(big)))


@pytest.mark.parametrize("checksum", ["auto", "wsum64"])
def test_flipped_byte_is_caught_by_checksum(coordinator, model_dir, disk_model, tmp_path, checksum):
    ready = tmp_path / "corrupt.ready"
    tensor = "model.layers.0.mlp.up_proj.weight"
    args = ["corrupt-seed", str(model_dir), NAME, coordinator.address, str(ready), tensor, "--checksum", checksum]
    proc = subprocess.Popen([sys.executable, str(PEERS), *args], cwd=REPO)
    try:
        wait_ready_file(proc, ready, timeout_s=90)
        report = run_target(tmp_path, model_dir, coordinator.address)
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    assert report["source"] == "storage"
    assert any("ChecksumMismatch" in a and tensor in a for a in report["attempts"]), report["attempts"]
    assert report["sha256"] == hashes(module_tensors(disk_model))


def test_bare_safetensors_file_and_sharded_directory(coordinator, seeds, tmp_path, run_model_command):
    from safetensors.torch import save_file
    from transformers import LlamaForCausalLM

    # A bare file (no config.json): its tensors are the model, names and all.
    raw = {
        "a.weight": torch.randn(64, 32),
        "b.bias": torch.arange(7, dtype=torch.int64),
        "c": torch.randn(3, 5).to(torch.bfloat16),
    }
    file = tmp_path / "weights.safetensors"
    save_file(raw, str(file))
    seed = seeds.start(file, coordinator.address, name="test/raw")
    report_path = tmp_path / "raw.json"
    proc = run_model_command(
        "load", file, "test/raw", coordinator.address, "--report", str(report_path), "--no-progress"
    )
    assert proc.returncode == 0, proc.stderr
    report = json.loads(report_path.read_text())
    assert report["source"] == seed["worker_id"] and report["sha256"] == hashes(raw)

    # A sharded HF directory (model.safetensors.index.json + several files) reads as one checkpoint.
    sharded = tmp_path / "sharded"
    model = hf.load_model(make_llama(tmp_path / "src"))
    LlamaForCausalLM.save_pretrained(model, str(sharded), max_shard_size="200KB")
    assert len(hf.checkpoint_files(sharded)) > 1 and (sharded / "model.safetensors.index.json").exists()
    assert hashes(hf.read_checkpoint(sharded)) == hashes(hf.read_checkpoint(tmp_path / "src"))
