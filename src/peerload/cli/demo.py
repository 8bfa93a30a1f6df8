"""`peerload demo`: the main job end to end on one machine, cleaned up afterwards.

Embedded coordinator -> a small HF Llama written to a temp dir -> a seed process serving it ->
this process loads it peer-to-peer into an empty model -> greedy generation on both -> report.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.table import Table

from peerload._process import peerload_cmd, spawn, stop_process, wait_ready_file
from peerload.errors import ConfigError, PeerloadError
from peerload.identity import SourceIdentity
from peerload.settings import Settings, debug_enabled

if TYPE_CHECKING:
    import torch

    from peerload.loader import LoadResult

MODEL_NAME = "peerload-demo/tiny-llama"


def write_demo_model(directory: Path, hidden: int = 768, layers: int = 8, seed: int = 0) -> Path:
    """A randomly initialised Llama (fp32, ~56M parameters at the defaults) saved as safetensors."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=8000,
        hidden_size=hidden,
        intermediate_size=hidden * 8 // 3 // 64 * 64,
        num_hidden_layers=layers,
        num_attention_heads=hidden // 64,
        num_key_value_heads=max(1, hidden // 256),
        max_position_embeddings=512,
        tie_word_embeddings=True,
        dtype="float32",
        # A wide init makes greedy output vary, so equal tokens mean something.
        initializer_range=0.2,
    )
    model = LlamaForCausalLM(config)
    model.save_pretrained(str(directory))
    return directory


def demo(
    transport: Annotated[str, typer.Option("--transport", help="nixl or transfer_engine.")] = "nixl",
    hidden: Annotated[int, typer.Option("--hidden", min=64, help="Hidden size of the demo model.")] = 768,
    layers: Annotated[int, typer.Option("--layers", min=1, help="Layers of the demo model.")] = 8,
    hosts: Annotated[
        int,
        typer.Option(
            "--hosts", min=0, help="Run on N emulated hosts (root): each new replica stripes from all before it."
        ),
    ] = 0,
    nic_gbit: Annotated[float, typer.Option("--nic-gbit", min=0.01, help="--hosts: NIC cap per host, Gbit/s.")] = 2.0,
) -> None:
    """Seed a small model and load it peer-to-peer into a fresh one; compare with disk."""
    from peerload.coordinator.server import serve  # torch-heavy imports per command keep the CLI fast

    console = Console()
    _quiet_components()
    if hosts:
        if hosts < 3:
            raise ConfigError(f"--hosts needs at least 3 hosts (coordinator, seed, a replica), got {hosts}")
        from peerload.cli._demo_fleet import fleet_demo

        workdir = Path(tempfile.mkdtemp(prefix="peerload-demo-"))
        try:
            model_dir = write_demo_model(workdir / "model", hidden=hidden, layers=layers)
            fleet_demo(console, MODEL_NAME, model_dir, hosts, nic_gbit, transport)
        finally:
            shutil.rmtree(workdir, ignore_errors=True)
        return
    workdir = Path(tempfile.mkdtemp(prefix="peerload-demo-"))
    server = serve(Settings.load(), port=0)
    seed_proc: subprocess.Popen | None = None
    result = None
    try:
        settings = Settings.load(coordinator=server.address, transport=transport)
        console.print(f"[bold]1.[/] coordinator listening on {server.address}")
        model_dir = write_demo_model(workdir / "model", hidden=hidden, layers=layers)
        size = sum(f.stat().st_size for f in model_dir.glob("*.safetensors"))
        console.print(f"[bold]2.[/] wrote a Llama checkpoint to {model_dir} ({size / 2**20:.0f} MiB)")
        seed_proc, seed_info = _start_seed(model_dir, settings, workdir)
        console.print(f"[bold]3.[/] seed process {seed_proc.pid} READY as {seed_info['worker_id']}")
        result, destination, p2p_s = _load_from_peer(model_dir, settings)
        console.print(
            f"[bold]4.[/] built an empty model and loaded {result.bytes / 2**20:.0f} MiB into it from "
            f"{result.source} in {p2p_s:.2f}s"
        )
        _compare_with_disk(console, model_dir, result, destination, p2p_s)
    finally:
        if result is not None:
            result.close()
        if seed_proc is not None:
            stop_process(seed_proc, timeout_s=30)
        server.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    console.print(
        "On one host both paths are memory copies; P2P pays off against storage that is not in "
        "memory (cold disks, network filesystems, S3, a hub) and over RDMA between hosts."
    )
    console.print("[bold green]demo OK[/]: coordinator, seed and temp files cleaned up")


def _quiet_components() -> None:
    """The demo tells its own story; component logs stay for warnings (PEERLOAD_DEBUG=1 shows all)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if not debug_enabled():
        logging.getLogger("peerload").setLevel(logging.WARNING)
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
        os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")


def _start_seed(model_dir: Path, settings: Settings, workdir: Path) -> tuple[subprocess.Popen, dict]:
    """A `peerload seed` process serving `model_dir`, once it is READY."""
    ready = workdir / "seed.ready"
    proc = spawn(
        peerload_cmd(
            "seed",
            str(model_dir),
            "--model-name",
            MODEL_NAME,
            "--coordinator",
            settings.coordinator,
            "--transport",
            settings.transport,
            "--ready-file",
            str(ready),
        ),
        workdir / "seed.log",
    )
    try:
        return proc, wait_ready_file(proc, ready, timeout_s=120)
    except BaseException:
        stop_process(proc, timeout_s=30)
        raise


def _load_from_peer(model_dir: Path, settings: Settings) -> tuple[LoadResult, torch.nn.Module, float]:
    """An empty model of `model_dir` filled peer-to-peer; the result, the model and the seconds taken."""
    import torch

    from peerload.adapters import hf
    from peerload.loader import load_into

    started = time.perf_counter()
    destination, from_storage = hf.target_tensors(model_dir, quantize=None, tp_size=1, tp_rank=0)
    assert isinstance(destination, torch.nn.Module)  # the demo's directory has a config.json
    result = load_into(
        destination, SourceIdentity(model_name=MODEL_NAME, dtype="float32"), settings=settings, fallback=from_storage
    )
    return result, destination, time.perf_counter() - started


def _compare_with_disk(
    console: Console, model_dir: Path, result: LoadResult, destination: torch.nn.Module, p2p_s: float
) -> None:
    """Load the same model from disk; compare bytes and greedy tokens, print the phases."""
    import torch

    from peerload.adapters import hf
    from peerload.loader import PHASES, copy_into
    from peerload.tensors import collect, sha256_of

    started = time.perf_counter()
    disk_model, from_disk = hf.target_tensors(model_dir, quantize=None, tp_size=1, tp_rank=0)
    assert isinstance(disk_model, torch.nn.Module) and from_disk is not None  # config.json and weights
    copy_into(collect(disk_model), from_disk())
    disk_s = time.perf_counter() - started
    same_bytes = {n: sha256_of(t) for n, t in disk_model.state_dict().items()} == {
        n: sha256_of(t) for n, t in destination.state_dict().items()
    }
    tokens_p2p, tokens_disk = hf.greedy_tokens(destination), hf.greedy_tokens(disk_model)
    console.print(
        f"[bold]5.[/] greedy generation, 32 tokens: peer-loaded {tokens_p2p[:8]}... "
        f"disk-loaded {tokens_disk[:8]}... identical={tokens_p2p == tokens_disk}"
    )
    table = Table(title="load_into phases")
    table.add_column("phase")
    table.add_column("seconds", justify="right")
    for phase in (*PHASES, "total"):
        table.add_row(phase, f"{result.seconds.get(phase, 0.0):.3f}")
    console.print(table)
    console.print(
        f"P2P transfer {result.gbps:.2f} GB/s; empty model + P2P load {p2p_s:.2f}s "
        f"vs empty model + load from disk (warm page cache) {disk_s:.2f}s; "
        f"tensors bit-identical: {same_bytes}; the target now serves as source {result.worker_id}"
    )
    if not (same_bytes and tokens_p2p == tokens_disk and result.source != "storage"):
        raise PeerloadError(
            "demo check failed: the peer-loaded model differs from the disk-loaded one "
            f"(source={result.source}, attempts={result.attempts})"
        )
