"""`peerload bench replica`: what a user waits for, process start to first token of a new vLLM replica.

Real vLLM on CPU (torch.compile on, its default), a tiny Llama, one seed replica that loaded from
disk, compiled, and serves its weights and (once settled) its compile cache. Then fresh replica
processes, side by side in one run:
  (a) disk weights, empty compile cache   (b) peer weights, empty compile cache
  (c) peer weights and peer compile cache (d) disk weights, warm local compile cache (the limit)
Goals: (c) within 1.15x of (d); (a)/(c) >= 2. Beside it, the artifact path's GB/s against the
weights path's for the same bytes, in this process (NIXL on loopback, both verified).
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from peerload._process import spawn, stop_process, wait_ready_file

SERVED = "peerload-bench/tiny-llama"
CASES = {
    "a": "disk weights, empty compile cache",
    "b": "peer weights, empty compile cache",
    "c": "peer weights + peer compile cache",
    "d": "disk weights, warm local compile cache",
}
PROMPTS = [[5, 17, 99, 3, 250], [7, 7, 42, 11], [300, 1, 2, 8, 64, 9]]
PATH_ROUNDS = 11  # artifact and weights back to back, per round (the ratio is the median round's)


@dataclass(frozen=True)
class ReplicaBenchConfig:
    vllm_python: Path
    out: Path
    repeats: int = 1
    artifact_mib: int = 256  # bytes moved by each path for the GB/s comparison


def make_tiny_llama(directory: Path) -> tuple[Path, Path]:
    """(full, bare): a 2-layer fp32 Llama with random weights, and its config without weights."""
    import torch
    import transformers

    config = transformers.LlamaConfig(
        vocab_size=1000,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=32,
        max_position_embeddings=256,
        tie_word_embeddings=False,
        dtype="float32",
    )
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(config).eval()
    with torch.no_grad():
        for p in model.parameters():
            if p.ndim > 1:
                p.normal_(0.0, 0.2)
    full, bare = directory / "full", directory / "bare"
    model.save_pretrained(full, safe_serialization=True)
    bare.mkdir(parents=True)
    for f in full.iterdir():
        if not f.name.endswith(".safetensors"):
            shutil.copy(f, bare / f.name)
    return full, bare


def _env(cache_root: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PEERLOAD_", "VLLM_"))}
    env.update(
        HF_HUB_OFFLINE="1",
        VLLM_CPU_KVCACHE_SPACE="1",
        VLLM_ENABLE_V1_MULTIPROCESSING="0",
        VLLM_CACHE_ROOT=str(cache_root),
        TOKENIZERS_PARALLELISM="false",
        UCX_MODULES="^ib",
        UCX_NET_DEVICES="lo",
    )
    return env


class _Runner:
    def __init__(self, config: ReplicaBenchConfig, tmp: Path, coordinator: str) -> None:
        self.config, self.tmp, self.coordinator = config, tmp, coordinator
        self.count = 0

    def start(self, model: Path, cache_root: Path, *, peer: bool, compile_cache: bool = True, hold: bool = False):  # type: ignore[no-untyped-def]
        self.count += 1
        ready = self.tmp / f"replica-{self.count}.json"
        args: dict[str, Any] = {
            "model": str(model),
            "prompts": PROMPTS,
            "served_model_name": SERVED,
            "ready_file": str(ready),
            "hold": hold,
        }
        if peer:
            args["load_format"] = "peerload"
            args["extra_config"] = {"coordinator": self.coordinator, "compile_cache": compile_cache}
        cmd = [str(self.config.vllm_python), "-m", "peerload.bench.vllm_replica", json.dumps(args)]
        logs = self.config.out / "replica-logs"
        logs.mkdir(parents=True, exist_ok=True)
        log = logs / f"replica-{self.count}.log"
        started = time.time()
        proc = spawn(cmd, log, env=_env(cache_root), stdin=subprocess.PIPE if hold else subprocess.DEVNULL)
        return proc, ready, log, started

    def run(self, model: Path, cache_root: Path, **kw: Any) -> dict[str, Any]:
        load_before = os.getloadavg()[0]
        proc, ready, log, started = self.start(model, cache_root, **kw)
        try:
            info = wait_ready_file(proc, ready, timeout_s=900, what=f"the vLLM replica (log {log})")
            proc.wait(timeout=120)
        finally:
            stop_process(proc, timeout_s=30)
        text = log.read_text(errors="replace")
        return {
            "seconds": info["first_token_at"] - started,
            "llm_s": info["llm_s"],
            "tokens": info["tokens"],
            "compile_cache_installed": "compile cache installed" in text,
            "loaded_compiled_graph": "Directly load AOT compilation" in text,
            "weights_from_peer": "from storage" not in text and kw.get("peer", False),
            "load_average": [load_before, os.getloadavg()[0]],  # 1-minute, before and after
        }


def run_replica(config: ReplicaBenchConfig, progress: Callable[[str], None] = lambda s: None) -> dict[str, Any]:
    """Run the four cases `config.repeats` times each; the results dict (also goals and figures)."""
    from peerload.coordinator.server import serve
    from peerload.settings import Settings

    with tempfile.TemporaryDirectory(prefix="peerload-replica-bench-") as tmp_name:
        tmp = Path(tmp_name)
        full, bare = make_tiny_llama(tmp / "model")
        server = serve(Settings.load(env={}, host="127.0.0.1"), port=0)
        try:
            runner = _Runner(config, tmp, server.address)
            progress("seed replica: disk weights, compiling, then serving weights and compile cache")
            seed, seed_ready, seed_log, _ = runner.start(full, tmp / "cache-seed", peer=True, hold=True)
            try:
                seed_info = wait_ready_file(seed, seed_ready, timeout_s=900, what=f"the seed replica (log {seed_log})")
                _wait_for_artifact(server.address, seed_log)
                runs: dict[str, list[dict[str, Any]]] = {k: [] for k in CASES}
                for i in range(config.repeats):
                    warm = tmp / f"cache-a{i}"
                    progress(f"(a) {CASES['a']} #{i + 1}")
                    runs["a"].append(runner.run(full, warm, peer=False))
                    progress(f"(b) {CASES['b']} #{i + 1}")
                    runs["b"].append(runner.run(bare, tmp / f"cache-b{i}", peer=True, compile_cache=False))
                    progress(f"(c) {CASES['c']} #{i + 1}")
                    runs["c"].append(runner.run(bare, tmp / f"cache-c{i}", peer=True))
                    progress(f"(d) {CASES['d']} #{i + 1}")
                    runs["d"].append(runner.run(full, warm, peer=False))
            finally:
                stop_process(seed, timeout_s=30, close_stdin=True)
        finally:
            server.stop(grace_s=0)
        progress("artifact path vs weights path, same bytes")
        paths = compare_paths(config.artifact_mib)
    return _results(config, seed_info, runs, paths)


def _wait_for_artifact(coordinator: str, log: Path, timeout_s: float = 300) -> None:
    from peerload.client import CoordinatorClient, SourceStatus

    deadline = time.monotonic() + timeout_s
    with CoordinatorClient(coordinator) as client:
        while time.monotonic() < deadline:
            refs = client.list_sources(model_name=SERVED, status=SourceStatus.READY)
            records = [client.get_metadata(r.mx_source_id, r.worker_id) for r in refs]
            if any(r is not None and r.artifact is not None for r in records):
                return
            time.sleep(0.5)
    raise TimeoutError(f"the seed replica published no compile cache within {timeout_s} s (log {log})")


def compare_paths(mib: int, rounds: int = PATH_ROUNDS) -> dict[str, Any]:
    """GB/s of fetch_artifact and of load_into for the same `mib` MiB, in this process, side by side.

    Both sources stay up; each round fetches the artifact into a fresh directory and loads the
    weights into fresh tensors, back to back, so their ratio per round cancels the slow spells of
    a shared machine. The ratio reported is the median of the rounds' ratios.
    """
    import torch

    from peerload.artifacts import ArtifactSource, artifact_identity, fetch_artifact
    from peerload.coordinator.server import serve
    from peerload.identity import SourceIdentity
    from peerload.loader import load_into
    from peerload.seed.publisher import publish
    from peerload.settings import Settings

    size = mib << 20
    server = serve(Settings.load(env={}, host="127.0.0.1"), port=0)
    settings = Settings.load(env={}, coordinator=server.address)
    identity = SourceIdentity(model_name="peerload-bench/paths", dtype="uint8")
    per_round: list[dict[str, Any]] = []
    try:
        with tempfile.TemporaryDirectory(prefix="peerload-paths-") as tmp_name:
            tmp = Path(tmp_name)
            (tmp / "cache").mkdir()
            data = torch.randint(0, 256, (size,), dtype=torch.uint8)
            (tmp / "cache" / "blob.so").write_bytes(data.numpy().tobytes())
            wanted = artifact_identity(identity, "torch_compile_cache")
            with (
                ArtifactSource(tmp / "cache", wanted, settings=settings),
                publish({"w": data}, identity, settings=settings),
            ):
                for i in range(rounds):
                    installed = tmp / f"installed-{i}"
                    outcome = fetch_artifact(wanted, installed, settings=settings)
                    if outcome.status != "installed":
                        raise RuntimeError(f"the artifact was not installed: {outcome.reason}")
                    if (installed / "blob.so").read_bytes() != data.numpy().tobytes():
                        raise RuntimeError("the installed artifact differs from the published one")
                    shutil.rmtree(installed)
                    destination = {"w": torch.empty_like(data)}
                    result = load_into(destination, identity, settings=settings, publish=False)
                    if not torch.equal(destination["w"], data):
                        raise RuntimeError("the weights loaded differ from the published ones")
                    moving = result.seconds.get("transfer", 0.0)  # parts verified as they arrive, in this phase
                    per_round.append(
                        {
                            "artifact": {
                                "transfer_s": outcome.transfer_seconds,
                                "total_s": outcome.seconds,
                                "gbps": outcome.gbps,
                            },
                            "weights": {
                                "source": result.source,
                                "transfer_s": moving,
                                "total_s": result.seconds.get("total", 0.0),
                                "gbps": result.gbps,
                            },
                            "ratio": outcome.gbps / result.gbps if result.gbps else 0.0,
                        }
                    )
    finally:
        server.stop(grace_s=0)

    def median(path: str, key: str) -> float:
        return statistics.median(r[path][key] for r in per_round)

    return {
        "bytes": size,
        "rounds": per_round,
        "ratio": statistics.median(r["ratio"] for r in per_round),
        "artifact": {k: median("artifact", k) for k in ("transfer_s", "total_s", "gbps")},
        "weights": {k: median("weights", k) for k in ("transfer_s", "total_s", "gbps")},
    }


def _results(
    config: ReplicaBenchConfig, seed: dict[str, Any], runs: dict[str, list[dict[str, Any]]], paths: dict[str, Any]
) -> dict[str, Any]:
    median = {k: statistics.median(r["seconds"] for r in v) for k, v in runs.items()}
    tokens_equal = all(r["tokens"] == seed["tokens"] for v in runs.values() for r in v)
    ratio_cd = median["c"] / median["d"] if median["d"] else 0.0
    ratio_ac = median["a"] / median["c"] if median["c"] else 0.0
    ratio_paths = paths["ratio"]
    return {
        "what": "seconds from process start to the first generated token of a new vLLM replica (CPU, tiny Llama)",
        "finished_utc": time.strftime("%Y-%m-%d %H:%M", time.gmtime()),
        "cpus": os.cpu_count(),
        "repeats": config.repeats,
        "cases": {k: {"label": CASES[k], "median_s": median[k], "runs": runs[k]} for k in CASES},
        "seed": {"llm_s": seed["llm_s"]},
        "tokens_equal": tokens_equal,
        "paths": paths,
        "goals": {
            "c_over_d": {"value": ratio_cd, "goal": "<= 1.15", "met": ratio_cd <= 1.15},
            "a_over_c": {"value": ratio_ac, "goal": ">= 2", "met": ratio_ac >= 2.0},
            "artifact_over_weights_gbps": {"value": ratio_paths, "goal": ">= 0.8", "met": ratio_paths >= 0.8},
        },
    }


def replica_table(results: dict[str, Any]):  # type: ignore[no-untyped-def]
    from rich.table import Table

    table = Table(title=results["what"])
    for column in ("case", "median s", "LLM() s", "compiled graph from peer", "runs"):
        table.add_column(column)
    for key, case in results["cases"].items():
        runs = case["runs"]
        table.add_row(
            f"({key}) {case['label']}",
            f"{case['median_s']:.1f}",
            f"{statistics.median(r['llm_s'] for r in runs):.1f}",
            "yes" if all(r["loaded_compiled_graph"] and r["compile_cache_installed"] for r in runs) else "no",
            str(len(runs)),
        )
    for name, goal in results["goals"].items():
        table.add_row(
            f"goal {name} {goal['goal']}", f"{goal['value']:.2f}", "", "met" if goal["met"] else "NOT met", ""
        )
    return table


def plot_replica(results: dict[str, Any], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = list(results["cases"])
    values = [results["cases"][k]["median_s"] for k in keys]
    labels = [f"({k}) {results['cases'][k]['label']}" for k in keys]
    fig, ax = plt.subplots(figsize=(8, 3.5))
    ax.barh(labels, values, color=["#999", "#69c", "#2a7", "#ccc"])
    for i, v in enumerate(values):
        ax.text(v, i, f" {v:.1f} s", va="center")
    ax.invert_yaxis()
    ax.set_xlabel("seconds, process start to first token (median)")
    ax.set_title("A new vLLM replica on CPU: what peer weights and a peer compile cache save")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
