"""Hugging Face glue: read safetensors checkpoints, build models (empty or loaded), tp shards.

A directory with a config.json becomes a `transformers` causal LM (so non-persistent buffers
such as rotary tables travel too); a bare .safetensors file is moved as its tensors.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file

from peerload.adapters.quantize import quantize_int8
from peerload.errors import CheckpointError, ConfigError, MissingExtraError
from peerload.tensors import module_tensors

# Megatron-style tensor parallelism for Llama/Qwen2-like names: which dim each rank splits.
_COLUMN_PARALLEL = ("q_proj", "k_proj", "v_proj", "gate_proj", "up_proj", "embed_tokens", "lm_head")
_ROW_PARALLEL = ("o_proj", "down_proj")


def checkpoint_files(path: str | Path) -> list[Path]:
    """The safetensors files of a checkpoint: a file, a sharded directory, or a plain directory.

    Raises:
        CheckpointError: not a .safetensors file or directory, a bad index, or a shard it names is missing.
    """
    p = Path(path)
    if p.is_file():
        if p.suffix != ".safetensors":
            raise CheckpointError(p, "not a .safetensors file; give a .safetensors file or a model directory")
        return [p]
    if not p.is_dir():
        raise CheckpointError(p, "does not exist; give a .safetensors file or a model directory")
    index = p / "model.safetensors.index.json"
    if index.exists():
        files = [p / name for name in sorted(set(_index_weight_map(index).values()))]
        missing = [f.name for f in files if not f.is_file()]
        if missing:
            shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
            raise CheckpointError(index, f"names shard(s) missing from {p}: {shown}; download every shard")
        return files
    files = sorted(p.glob("*.safetensors"))
    if not files:
        raise CheckpointError(p, "has no *.safetensors files (and no model.safetensors.index.json)")
    return files


def _index_weight_map(index: Path) -> dict[str, str]:
    """The tensor name -> shard file map of a model.safetensors.index.json."""
    weight_map = _read_json(index).get("weight_map")
    if not isinstance(weight_map, dict) or not all(isinstance(v, str) and v for v in weight_map.values()):
        raise CheckpointError(index, 'has no "weight_map" of tensor names to shard files')
    return weight_map


def _read_json(path: Path) -> dict[str, Any]:
    """A JSON object from `path`; CheckpointError naming the file otherwise."""
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise CheckpointError(path, f"invalid JSON ({exc.msg} at line {exc.lineno} column {exc.colno})") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise CheckpointError(path, f"cannot be read ({exc})") from None
    if not isinstance(value, dict):
        raise CheckpointError(path, f"must hold a JSON object, not {type(value).__name__}")
    return value


def read_model_config(path: str | Path) -> dict[str, Any]:
    """PATH/config.json as a dict ({} for a bare safetensors file or a directory without one).

    Raises:
        CheckpointError: config.json is not a JSON object.
    """
    config = Path(path) / "config.json"
    return _read_json(config) if Path(path).is_dir() and config.exists() else {}


def _safetensors_problem(error: Exception) -> str:
    """A safetensors error as what it means for the file."""
    text = str(error).removeprefix("Error while deserializing header: ").splitlines()[0]
    if "header too large" in text or "header too small" in text:
        return f"not a safetensors file ({text}); give a .safetensors checkpoint"
    if "not fully covered" in text or "incomplete metadata" in text:
        return "truncated: its header describes more bytes than the file holds; re-download or re-save it"
    if "unknown variant" in text:
        dtype = text.split("`")[1] if text.count("`") >= 2 else "?"
        return f"corrupt header: unknown dtype {dtype}; re-download or re-save it"
    return f"corrupt safetensors file ({text}); re-download or re-save it"


def read_checkpoint(path: str | Path) -> dict[str, torch.Tensor]:
    """All tensors of a safetensors checkpoint, by name.

    Raises:
        CheckpointError: a file is not a readable safetensors file.
    """
    tensors: dict[str, torch.Tensor] = {}
    for f in checkpoint_files(path):
        try:
            tensors.update(load_file(str(f)))
        except (SafetensorError, OSError) as exc:
            raise CheckpointError(f, _safetensors_problem(exc)) from None
    return tensors


def checkpoint_layout(path: str | Path) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
    """Names, shapes and dtypes of a checkpoint's tensors, read from headers only.

    Raises:
        CheckpointError: a file is not a readable safetensors file or holds a dtype peerload cannot load.
    """
    layout = {}
    for f in checkpoint_files(path):
        try:
            with safe_open(str(f), framework="pt") as fh:
                for name in fh.keys():
                    sl = fh.get_slice(name)
                    layout[name] = (tuple(sl.get_shape()), _safetensors_dtype(f, name, sl.get_dtype()))
        except (SafetensorError, OSError) as exc:
            raise CheckpointError(f, _safetensors_problem(exc)) from None
    return layout


_DTYPES = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
}


def _safetensors_dtype(file: Path, name: str, code: str) -> torch.dtype:
    if code not in _DTYPES:
        raise CheckpointError(
            file, f"tensor {name!r} has dtype {code}, which peerload cannot load ({', '.join(_DTYPES)})"
        )
    return _DTYPES[code]


def has_model_config(path: str | Path) -> bool:
    return Path(path).is_dir() and (Path(path) / "config.json").exists()


def _transformers():
    try:
        import transformers
    except ImportError:
        raise MissingExtraError("loading Hugging Face models", "transformers", "hf") from None
    return transformers


def auto_config(path: str | Path) -> Any:
    """The transformers config of `path/config.json`.

    Raises:
        CheckpointError: config.json is invalid or names an architecture transformers does not know.
        MissingExtraError: transformers is not installed.
    """
    transformers = _transformers()
    try:
        return transformers.AutoConfig.from_pretrained(str(path))
    except (ValueError, TypeError, KeyError, OSError) as exc:
        problem = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise CheckpointError(Path(path) / "config.json", f"not a usable model config: {problem}") from None


def _meta_model(path: str | Path) -> torch.nn.Module:
    """The model of `path/config.json` on the meta device (no memory)."""
    config = auto_config(path)
    with torch.device("meta"):
        return _transformers().AutoModelForCausalLM.from_config(config)


def build_empty_model(path: str | Path, *, quantize: str | None = None) -> torch.nn.Module:
    """The model of `path/config.json` with allocated but uninitialised tensors, post-processed."""
    model = _meta_model(path)
    _post_process(model, quantize)
    materialize(model)
    return model.eval()


def load_model(path: str | Path, *, quantize: str | None = None) -> torch.nn.Module:
    """The model of `path` loaded from its safetensors files, post-processed."""
    model = _transformers().AutoModelForCausalLM.from_pretrained(str(path), config=auto_config(path))
    _post_process(model, quantize)
    return model.eval()


def materialize(model: torch.nn.Module, device: str = "cpu") -> None:
    """Allocate a meta model's tensors (uninitialised), keeping tied weights and tensor aliases."""
    aliases = []
    for mod in model.modules():
        owned = {id(t): n for n, t in [*mod.named_parameters(recurse=False), *mod.named_buffers(recurse=False)]}
        for attr, value in vars(mod).items():
            if isinstance(value, torch.Tensor) and id(value) in owned:
                aliases.append((mod, attr, owned[id(value)]))
    model.to_empty(device=device)
    for mod, attr, name in aliases:
        setattr(mod, attr, getattr(mod, name))
    if hasattr(model, "tie_weights"):
        model.tie_weights()


def _post_process(model: torch.nn.Module, quantize: str | None) -> None:
    if quantize is None:
        return
    if quantize != "int8":
        raise ConfigError(f"--quantize {quantize!r} is not supported; the only choice is int8")
    quantize_int8(model, skip=("lm_head",))


# -- tensor parallel shards ----------------------------------------------------------------------


def shard_dim(name: str) -> int | None:
    """The dimension a tensor is split on across tp ranks, or None if every rank holds it whole."""
    parts = name.split(".")
    module = parts[-2] if len(parts) >= 2 else ""
    leaf = parts[-1]
    if module in _COLUMN_PARALLEL and leaf in ("weight", "bias", "weight_scale"):
        return 0
    if module in _ROW_PARALLEL and leaf == "weight":
        return 1
    return None


def shard(tensors: Mapping[str, torch.Tensor], tp_size: int, tp_rank: int) -> dict[str, torch.Tensor]:
    """Rank `tp_rank`'s contiguous shard of every tensor (a copy; replicated tensors cloned)."""
    out: dict[str, torch.Tensor] = {}
    for name, t in tensors.items():
        dim = shard_dim(name)
        if tp_size == 1 or dim is None:
            out[name] = t.detach().clone()
            continue
        if t.shape[dim] % tp_size:
            raise ConfigError(f"{name}: dimension {dim} ({t.shape[dim]}) is not divisible by tp_size {tp_size}")
        out[name] = t.detach().chunk(tp_size, dim=dim)[tp_rank].contiguous().clone()
    return out


def unshard(shards: list[Mapping[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Reassemble full tensors from every rank's shard (inverse of `shard`)."""
    out = {}
    for name in shards[0]:
        dim = shard_dim(name)
        out[name] = (
            shards[0][name] if dim is None or len(shards) == 1 else torch.cat([s[name] for s in shards], dim=dim)
        )
    return out


def empty_like_shard(tensors: Mapping[str, torch.Tensor], tp_size: int, tp_rank: int) -> dict[str, torch.Tensor]:
    """Uninitialised tensors shaped like `shard(tensors, ...)` (works on meta tensors)."""
    out = {}
    for name, t in tensors.items():
        shape = list(t.shape)
        dim = shard_dim(name)
        if tp_size > 1 and dim is not None:
            if shape[dim] % tp_size:
                raise ConfigError(f"{name}: dimension {dim} ({shape[dim]}) is not divisible by tp_size {tp_size}")
            shape[dim] //= tp_size
        out[name] = torch.empty(shape, dtype=t.dtype, device="cpu")
    return out


# -- what the CLI uses: destination + fallback for a checkpoint path ------------------------------


def seed_tensors(
    path: str | Path, *, quantize: str | None, tp_size: int, tp_rank: int
) -> tuple[dict[str, torch.Tensor] | torch.nn.Module, torch.nn.Module | None]:
    """What a seed publishes for `path`: (tensors or model, the model if one was built)."""
    if has_model_config(path):
        model = load_model(path, quantize=quantize)
        if tp_size == 1:
            return model, model
        return shard(module_tensors(model, attributes=False), tp_size, tp_rank), model
    if quantize:
        raise ConfigError("--quantize needs a model directory with config.json, not a bare safetensors file")
    return shard(read_checkpoint(path), tp_size, tp_rank), None


def target_tensors(
    path: str | Path, *, quantize: str | None, tp_size: int, tp_rank: int
) -> tuple[dict[str, torch.Tensor] | torch.nn.Module, Callable[[], Mapping[str, torch.Tensor]]]:
    """What a target allocates for `path` (empty, final layout) and how storage would fill it."""
    if has_model_config(path):
        if tp_size == 1:
            destination: dict[str, torch.Tensor] | torch.nn.Module = build_empty_model(path, quantize=quantize)
        else:
            meta = _meta_model(path)
            _post_process(meta, quantize)
            destination = empty_like_shard(module_tensors(meta, attributes=False), tp_size, tp_rank)

        def from_storage() -> Mapping[str, torch.Tensor]:
            model = load_model(path, quantize=quantize)
            if tp_size > 1:
                return shard(module_tensors(model, attributes=False), tp_size, tp_rank)
            return module_tensors(model)

        return destination, from_storage
    if quantize:
        raise ConfigError("--quantize needs a model directory with config.json, not a bare safetensors file")
    layout = checkpoint_layout(path)
    metas = {n: torch.empty(shape, dtype=dt, device="meta") for n, (shape, dt) in layout.items()}
    return empty_like_shard(metas, tp_size, tp_rank), lambda: shard(read_checkpoint(path), tp_size, tp_rank)


def greedy_tokens(model: torch.nn.Module, n: int = 32) -> list[int]:
    """`n` greedily generated token ids after a fixed prompt (comparing two loads of a model)."""
    prompt = torch.tensor([[1, 42, 7, 99, 3]])
    with torch.no_grad():
        out = model.generate(prompt, max_new_tokens=n, min_new_tokens=n, do_sample=False)
    return out[0, prompt.shape[1] :].tolist()
