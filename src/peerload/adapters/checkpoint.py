"""Safetensors checkpoints on disk: which files, their headers (names, shapes, dtypes), their tensors."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file

from peerload.errors import CheckpointError

Layout = dict[str, tuple[tuple[int, ...], torch.dtype]]


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
    weight_map = read_json_object(index).get("weight_map")
    if not isinstance(weight_map, dict) or not all(isinstance(v, str) and v for v in weight_map.values()):
        raise CheckpointError(index, 'has no "weight_map" of tensor names to shard files')
    return weight_map


def read_json_object(path: Path) -> dict[str, Any]:
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


def has_weights(path: str | Path) -> bool:
    """Whether `path` holds weights: a file, or a directory with *.safetensors or a shard index.

    A model directory without weights (config.json only) is a valid target: its weights come from
    a peer, and there is no storage fallback.
    """
    p = Path(path)
    return not p.is_dir() or (p / "model.safetensors.index.json").exists() or any(p.glob("*.safetensors"))


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


def checkpoint_layout(path: str | Path) -> Layout:
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
