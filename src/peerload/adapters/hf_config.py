"""A checkpoint path read once: its config.json (as JSON and as transformers' config) and tensor headers.

`open_checkpoint` checks every file up front, so a bad one fails, named, before any work; what it
read is handed on (identity, model building, sharding) instead of being read again.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from peerload.adapters.checkpoint import Layout, checkpoint_layout, has_weights, read_json_object
from peerload.adapters.hf_classes import transformers_module
from peerload.errors import CheckpointError, ConfigError


@dataclass(frozen=True)
class Checkpoint:
    """What `open_checkpoint` read of a .safetensors file or a model directory."""

    path: Path
    config: Mapping[str, Any]  # config.json as JSON; {} for a bare file or a directory without one
    layout: Layout  # tensor headers; {} for a model directory without weights
    has_weights: bool  # False only for a model directory without weights (a target loading from peers)
    hf_config: Any = field(default=None, repr=False)  # transformers' config of config.json, if any
    # The dtype the model is built in (model directories; see `model_dtype`), "" for a bare file.
    dtype: str = ""

    @property
    def has_config(self) -> bool:
        return self.hf_config is not None

    def model_config(self) -> Any:
        """A fresh copy of transformers' config (building a model sets fields on the config it is given)."""
        if self.hf_config is None:
            raise ConfigError(f"{self.path} has no config.json: a bare safetensors file is moved as its tensors")
        return copy.deepcopy(self.hf_config)


def open_checkpoint(path: str | Path, dtype: str | None = None) -> Checkpoint:
    """Read and check a checkpoint's headers and config.json, once.

    `dtype` (e.g. "bfloat16") overrides the dtype a model directory's model is built in; see
    `model_dtype` for the rule without it.

    Raises:
        ConfigError: `path` does not exist, or `dtype` is not a floating torch dtype or is given
            for a bare safetensors file.
        CheckpointError: a file is not readable safetensors, config.json is invalid or names an
            architecture transformers does not know.
        MissingExtraError: config.json exists and transformers is not installed.
    """
    p = Path(path)
    check_exists(p)
    weights = has_weights(p)
    with_config = has_model_config(p)
    # A model directory without weights is a target that can only load from peers.
    layout = checkpoint_layout(p) if weights or not with_config else {}
    config = read_model_config(p)
    hf_config = auto_config(p) if with_config else None
    if hf_config is None:
        if dtype is not None:
            raise ConfigError(
                f"--dtype applies to a model directory with config.json; {p} is a bare safetensors file, whose "
                "tensors are moved as stored"
            )
        return Checkpoint(path=p, config=config, layout=layout, has_weights=weights)
    built = model_dtype(config, dtype)
    hf_config.dtype = built  # transformers builds (and loads) the model in this dtype
    return Checkpoint(path=p, config=config, layout=layout, has_weights=weights, hf_config=hf_config, dtype=built)


# What transformers builds a model in when config.json names no dtype (torch's default dtype).
DEFAULT_MODEL_DTYPE = "float32"


def model_dtype(config: Mapping[str, Any], override: str | None = None) -> str:
    """The dtype a model directory's model is built in, the same on a seed and on a target.

    `override` (--dtype) wins; else config.json's `dtype` / `torch_dtype`; else float32, which is
    what transformers builds from such a config. A target of a config-only directory cannot see
    the seed's weights, so the rule never looks at them (a seed of bfloat16 weights whose config
    names no dtype loads them as float32, as its targets build; give both --dtype bfloat16).
    """
    value = override if override is not None else (config.get("dtype") or config.get("torch_dtype"))
    name = str(value).replace("torch.", "") if value else DEFAULT_MODEL_DTYPE
    candidate = getattr(torch, name, None)
    if not isinstance(candidate, torch.dtype) or not candidate.is_floating_point:
        where = "--dtype" if override is not None else "config.json's torch_dtype"
        raise ConfigError(f"{where} {value!r} is not a floating torch dtype (e.g. float32, bfloat16, float16)")
    return name


def check_exists(path: Path) -> None:
    """Refuse a checkpoint path that does not exist (ConfigError naming it)."""
    if not path.exists():
        raise ConfigError(f"{path} does not exist: give a .safetensors file or a model directory")


def as_checkpoint(path: str | Path | Checkpoint) -> Checkpoint:
    """`path` opened (see `open_checkpoint`), or the `Checkpoint` given."""
    return path if isinstance(path, Checkpoint) else open_checkpoint(path)


def has_model_config(path: str | Path) -> bool:
    return Path(path).is_dir() and (Path(path) / "config.json").exists()


def read_model_config(path: str | Path) -> dict[str, Any]:
    """PATH/config.json as a dict ({} for a bare safetensors file or a directory without one).

    Raises:
        CheckpointError: config.json is not a JSON object.
    """
    config = Path(path) / "config.json"
    return read_json_object(config) if Path(path).is_dir() and config.exists() else {}


def auto_config(path: str | Path) -> Any:
    """The transformers config of `path/config.json`.

    Raises:
        CheckpointError: config.json is invalid or names an architecture transformers does not know.
        MissingExtraError: transformers is not installed.
    """
    transformers = transformers_module()
    try:
        return transformers.AutoConfig.from_pretrained(str(path))
    except (ValueError, TypeError, KeyError, OSError) as exc:
        problem = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise CheckpointError(Path(path) / "config.json", f"not a usable model config: {problem}") from None
