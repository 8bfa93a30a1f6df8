"""Resharding loads end to end: a real coordinator, seed ranks in real processes (real NIXL
agents), targets of another tensor-parallel size loading in this process; every target rank
bit-exact against its own shard of the checkpoint, every byte verified by its source's digest."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from peerload._process import spawn, stop_process, wait_ready_file
from peerload.adapters import hf
from peerload.boxes import Heads
from peerload.loader import Progress, load_into
from peerload.settings import Settings
from peerload.tensors import module_tensors

REPO = Path(__file__).resolve().parents[2]
PEERS = Path(__file__).with_name("reshard_peers.py")
SIZES = (1, 2, 4)


def make_model(directory: Path, family: str, *, hidden: int = 32, ffn: int = 64, seed: int = 0) -> Path:
    """A tiny model of 8 query heads and 2 KV heads (so TP=4 replicates KV), float32."""
    import transformers

    common = {
        "vocab_size": 64,
        "hidden_size": hidden,
        "intermediate_size": ffn,
        "num_hidden_layers": 1,
        "num_attention_heads": 8,
        "num_key_value_heads": 2,
        "max_position_embeddings": 32,
        "dtype": "float32",
        "pad_token_id": 0,
        "bos_token_id": 1,
        "eos_token_id": 2,
    }
    torch.manual_seed(seed)
    if family == "llama":
        model = transformers.LlamaForCausalLM(transformers.LlamaConfig(**common, head_dim=hidden // 8))
    else:
        model = transformers.Phi3ForCausalLM(transformers.Phi3Config(**common))
    model.save_pretrained(str(directory))
    return directory


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return {f: make_model(tmp_path_factory.mktemp(f) / "model", f) for f in ("llama", "phi3")}


class SeedProcs:
    """Seed processes (`reshard_peers.py`), stopped after the test."""

    def __init__(self, tmp: Path, coordinator: str) -> None:
        self.tmp, self.coordinator = tmp, coordinator
        self.procs: list[Any] = []

    def start(self, *specs: str) -> dict[str, Any]:
        ready = self.tmp / f"seeds-{len(self.procs)}.json"
        log = self.tmp / f"seeds-{len(self.procs)}.log"
        proc = spawn([sys.executable, str(PEERS), str(ready), self.coordinator, *specs], log, cwd=REPO)
        self.procs.append(proc)
        try:
            return wait_ready_file(proc, ready, timeout_s=180, what="the seed ranks")
        except Exception as exc:
            raise AssertionError(f"{exc}:\n{log.read_text(errors='replace')[-3000:]}") from None

    def stop(self) -> None:
        for proc in self.procs:
            stop_process(proc)


@pytest.fixture
def seed_procs(tmp_path: Path, coordinator: Any) -> Iterator[SeedProcs]:
    procs = SeedProcs(tmp_path, coordinator.address)
    yield procs
    procs.stop()


def expected_shard(model_dir: Path, tp: int, rank: int) -> dict[str, torch.Tensor]:
    """This rank's own shard of the checkpoint, as the HF adapter cuts it from storage."""
    full = module_tensors(hf.load_model(model_dir), attributes=False)
    heads = Heads.from_config(hf.read_model_config(model_dir))
    return hf.shard(full, tp, rank, heads)


def load_rank(
    model_dir: Path, name: str, coordinator: str, tp: int, rank: int, *, fallback: bool = False, **more: Any
) -> tuple[Any, dict[str, torch.Tensor]]:
    """Load rank `rank` of `tp` in this process (not published); (result, its tensors by name)."""
    source = hf.checkpoint_source(model_dir, name, tp_size=tp, tp_rank=rank)
    destination, from_storage = hf.target_tensors(source.checkpoint, quantize=None, tp_size=tp, tp_rank=rank)
    settings = Settings.load(env={}, coordinator=coordinator, chunk_bytes=4096, part_timeout_s=30)
    result = load_into(
        destination,
        source.identity,
        rank=source.rank,
        settings=settings,
        fallback=from_storage if fallback else None,
        publish=False,
        **{"layout": hf.tensor_layout(source.checkpoint, quantize=None, tp_size=tp, tp_rank=rank), **more},
    )
    tensors = module_tensors(destination, attributes=False) if isinstance(destination, torch.nn.Module) else destination
    return result, tensors


def assert_bit_exact(got: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]) -> None:
    assert set(got) == set(expected)
    for name, tensor in expected.items():
        assert got[name].shape == tensor.shape, name
        assert torch.equal(got[name], tensor), name


@pytest.mark.parametrize("family", ["llama", "phi3"])
def test_every_tp_pair_reshards_bit_exact(models, seed_procs, coordinator, family):
    """Seeds at TP 1, 2 and 4 (each its own model name, so only that layout serves it); targets of
    every TP load every rank from them: 9 pairs, each rank bit-exact, verified, bytes read once."""
    model_dir = models[family]
    seeds = seed_procs.start(*(f"{model_dir}:{family}-s{tp}:{tp}" for tp in SIZES))
    for tp_seed in SIZES:
        name = f"{family}-s{tp_seed}"
        for tp in SIZES:
            for rank in range(tp):
                result, got = load_rank(model_dir, name, coordinator.address, tp, rank)
                assert_bit_exact(got, expected_shard(model_dir, tp, rank))
                assert result.source != "storage" and result.storage_bytes == 0, result.attempts
                assert result.verified is True, result.unverified_reason
                wire = sum(s.bytes for s in result.sources)
                assert wire == result.bytes, (tp_seed, tp, rank)  # every destination byte read exactly once
                used = {s.worker_id for s in result.sources if s.bytes}
                assert used <= {w for k, w in seeds["workers"].items() if k.startswith(f"{name}/")}
                if tp == tp_seed:
                    assert result.resharded_from == "", result.attempts  # same layout: the plain path
                else:
                    assert result.resharded_from.startswith(f"tp={tp_seed} pp=1"), result.attempts
    if family == "llama":
        explained_and_refused_without_a_layout(model_dir, coordinator.address)


def explained_and_refused_without_a_layout(model_dir: Path, coordinator: str) -> None:
    """`sources --explain` names the TP=2 seeds as reshardable; a load without a layout (as vLLM's)
    cannot plan, says so, and loads from storage instead (nothing read half)."""
    from peerload._process import peerload_cmd

    explained = subprocess.run(
        peerload_cmd("sources", "--explain", str(model_dir), "--model-name", "llama-s2", "--coordinator", coordinator),
        capture_output=True, text=True, timeout=120, cwd=REPO,
    )  # fmt: skip
    assert explained.returncode == 0, explained.stderr
    text = " ".join(explained.stdout.split())
    assert "tensor_parallel_size is 2 there, 1 here: the layout differs but can be resharded" in text, text
    assert "reshards from it" in text
    result, got = load_rank(model_dir, "llama-s2", coordinator, 1, 0, fallback=True, layout=None)
    assert result.source == "storage" and result.resharded_from == ""
    assert any("this load has no layout" in a and "vLLM" in a for a in result.attempts), result.attempts
    assert_bit_exact(got, expected_shard(model_dir, 1, 0))


def test_a_seed_rank_killed_mid_load_leaves_only_its_boxes_to_storage(tmp_path, models, coordinator):
    """TP=4 seeds (one process each) of a larger model; a TP=2 rank-0 target kills seed rank 1 on its
    first bytes: rank 1's replicated KV parts come from rank 0, its own boxes from storage."""
    model_dir = make_model(tmp_path / "big", "llama", hidden=256, ffn=512, seed=3)
    procs = SeedProcs(tmp_path, coordinator.address)
    try:
        seeds = [procs.start(f"{model_dir}:big:4:{r}") for r in range(4)]
        pid_of = {s["workers"][f"big/4/{r}"]: s["pid"] for r, s in enumerate(seeds)}
        victim = seeds[1]["workers"]["big/4/1"]
        killed: list[str] = []

        def kill_on_first_bytes(event: Progress) -> None:
            if event.source == victim and not killed:
                os.kill(pid_of[victim], signal.SIGKILL)
                killed.append(victim)

        result, got = load_rank(
            model_dir, "big", coordinator.address, 2, 0, fallback=True, progress=kill_on_first_bytes
        )
        assert killed == [victim]
        assert_bit_exact(got, expected_shard(model_dir, 2, 0))
        stats = {s.worker_id: s for s in result.sources}
        assert stats[victim].error, result.attempts
        assert 0 < result.storage_bytes < result.bytes, result.attempts
        assert result.source == "storage" and result.resharded_from.startswith("tp=4")
        peer = sum(s.bytes for s in result.sources)
        assert peer + result.storage_bytes == result.bytes  # storage filled exactly what no peer delivered
    finally:
        procs.stop()
