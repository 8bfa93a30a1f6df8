"""Options shared by `peerload seed` and `peerload load`: identity, parallelism, post-processing."""

from __future__ import annotations

import json
import signal
import threading
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Optional

import typer

from peerload.errors import ConfigError
from peerload.identity import SourceIdentity, worker_rank
from peerload.settings import Settings

PathArg = Annotated[Path, typer.Argument(help="A .safetensors file or a HF-style model directory.")]
ModelNameOpt = Annotated[str, typer.Option("--model-name", help="Model name of the source identity.")]
CoordinatorOpt = Annotated[Optional[str], typer.Option("--coordinator", help="Coordinator HOST:PORT.")]
TransportOpt = Annotated[Optional[str], typer.Option("--transport", help="nixl or transfer_engine.")]
RevisionOpt = Annotated[str, typer.Option("--revision", help="Model revision (part of the identity).")]
TpSizeOpt = Annotated[int, typer.Option("--tp-size", min=1, help="Tensor-parallel size.")]
TpRankOpt = Annotated[int, typer.Option("--tp-rank", min=0, help="This process' tensor-parallel rank.")]
PpSizeOpt = Annotated[int, typer.Option("--pp-size", min=1, help="Pipeline-parallel size.")]
PpRankOpt = Annotated[int, typer.Option("--pp-rank", min=0, help="This process' pipeline-parallel rank.")]
EpSizeOpt = Annotated[int, typer.Option("--ep-size", min=1, help="Expert-parallel size.")]
QuantizeOpt = Annotated[Optional[str], typer.Option("--quantize", help="Post-processing: int8 (weight-only).")]
WorkerIdOpt = Annotated[Optional[str], typer.Option("--worker-id", help="Stable worker id (default: generated).")]


@dataclass(frozen=True)
class ModelOptions:
    path: Path
    identity: SourceIdentity
    rank: int
    tp_size: int
    tp_rank: int
    quantize: str | None


def model_options(path: Path, model_name: str, revision: str, tp_size: int, tp_rank: int,
                  pp_size: int, pp_rank: int, ep_size: int, quantize: str | None) -> ModelOptions:
    if not path.exists():
        raise ConfigError(f"{path} does not exist: give a .safetensors file or a model directory")
    if quantize is not None and quantize != "int8":
        raise ConfigError(f"--quantize {quantize!r} is not supported; the only choice is int8")
    rank = worker_rank(tp_rank, pp_rank, tp_size, pp_size)
    config = model_config(path)
    identity = SourceIdentity(
        model_name=model_name, revision=revision, tensor_parallel_size=tp_size,
        pipeline_parallel_size=pp_size, expert_parallel_size=ep_size,
        # Runtime post-processing (--quantize) is not part of the identity: a target that forgot
        # it finds the source and is told exactly which tensors differ.
        dtype=checkpoint_dtype(path, config), quantization=checkpoint_quantization(config),
    )
    return ModelOptions(path=path, identity=identity, rank=rank, tp_size=tp_size, tp_rank=tp_rank,
                        quantize=quantize)


def model_config(path: Path) -> dict:
    """PATH/config.json as a dict ({} for a bare safetensors file)."""
    config = path / "config.json" if path.is_dir() else None
    return json.loads(config.read_text()) if config is not None and config.exists() else {}


def checkpoint_dtype(path: Path, config: dict) -> str:
    """The model's dtype as configured (config.json), else the commonest one in the checkpoint."""
    value = config.get("dtype") or config.get("torch_dtype")
    if value:
        return str(value).replace("torch.", "")
    from peerload.adapters.hf import checkpoint_layout

    try:
        counts = Counter(str(dt).replace("torch.", "") for _, dt in checkpoint_layout(path).values())
    except ConfigError:
        return ""
    return counts.most_common(1)[0][0] if counts else ""


def checkpoint_quantization(config: dict) -> str:
    """The checkpoint's own quantization method (config.json quantization_config), or ""."""
    return str((config.get("quantization_config") or {}).get("quant_method", ""))


def settings_for(coordinator: str | None, transport: str | None, **more: object) -> Settings:
    return Settings.load(coordinator=coordinator, transport=transport, **more)


def wait_for_signal() -> None:
    """Block until SIGINT or SIGTERM."""
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    while not stop.wait(1.0):
        pass
