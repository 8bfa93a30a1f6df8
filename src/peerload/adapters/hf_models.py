"""`transformers` models of a model directory: built empty (meta, then allocated) or loaded strictly.

A directory with a config.json becomes the model its config names (see `hf_classes`);
non-persistent buffers such as rotary tables travel too. Each function takes a path or an opened
`Checkpoint` (whose config is then not read again).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import torch

from peerload.adapters import hf_classes
from peerload.adapters.hf_config import Checkpoint, auto_config
from peerload.adapters.quantize import quantize_int8
from peerload.errors import CheckpointMismatch, ConfigError


def _config(source: str | Path | Checkpoint) -> Any:
    """transformers' config of `source`: a fresh copy of an opened checkpoint's, else read now."""
    return source.model_config() if isinstance(source, Checkpoint) else auto_config(source)


def _path(source: str | Path | Checkpoint) -> str:
    return str(source.path if isinstance(source, Checkpoint) else source)


def build_empty_model(
    path: str | Path | Checkpoint, *, quantize: str | None = None, model_class: str | None = None, device: str = "cpu"
) -> torch.nn.Module:
    """The model of `path/config.json` with allocated but uninitialised tensors, post-processed.

    Args:
        path: a model directory with config.json (or its `Checkpoint`).
        quantize: post-processing ("int8") or None.
        model_class: a transformers class name; default: config.json's `architectures` (see hf_classes).
        device: where its tensors are allocated ("cpu", "cuda:N"); nothing touches them there.

    Raises:
        ConfigError: `model_class` is not a transformers model class, or none fits the config.
        MissingExtraError: transformers is not installed.
    """
    meta = meta_model(path, model_class)
    post_process(meta, quantize)
    materialize(meta, device)
    return meta.eval()


def load_model(
    path: str | Path | Checkpoint,
    *,
    quantize: str | None = None,
    model_class: str | None = None,
    allow_missing: bool = False,
    allow_unused: bool = False,
    device: str = "cpu",
) -> torch.nn.Module:
    """The model of `path` loaded from its safetensors files, checked strictly, post-processed.

    Args:
        path, quantize, model_class, device: as for `build_empty_model`.
        allow_missing: accept model tensors the checkpoint lacks (transformers initialises them).
        allow_unused: accept checkpoint tensors the model does not use (they are dropped).

    Raises:
        CheckpointMismatch: tensors missing or unused, as transformers reports them, and not allowed.
        ConfigError, MissingExtraError: as for `build_empty_model`.
    """
    config = _config(path)
    cls = hf_classes.model_class(config, model_class)
    model, info = cls.from_pretrained(_path(path), config=config, output_loading_info=True)
    # Non-persistent buffers (rotary tables, position_ids) and tied weights are never reported.
    missing = [] if allow_missing else info.get("missing_keys", ())
    unused = [] if allow_unused else info.get("unexpected_keys", ())
    if missing or unused:
        raise CheckpointMismatch(_path(path), type(model).__name__, missing, unused)
    model.to(device)  # post-processing then runs where the model serves
    post_process(model, quantize)
    return model.eval()


def meta_model(path: str | Path | Checkpoint, model_class: str | None) -> torch.nn.Module:
    """The model of `path/config.json` on the meta device (shapes and names, no memory)."""
    config = _config(path)
    cls = hf_classes.model_class(config, model_class)
    with torch.device("meta"):
        return hf_classes.build(cls, config)


def model_names(model: torch.nn.Module, checkpoint_names: Iterable[str]) -> dict[str, str]:
    """Checkpoint tensor name -> the model's name for it, renamed as transformers renames on loading.

    Covers transformers' key renames and the base-model prefix (`bert.`, `model.`); a name that
    transformers merges with others (e.g. fused experts) or drops has no entry.
    """
    own = dict(model.state_dict(keep_vars=True))
    rename = _renamer(model, own)
    out = {}
    for name in checkpoint_names:
        renamed, merged = rename(name)
        if not merged and renamed in own:
            out[name] = renamed
    return out


def _renamer(model: torch.nn.Module, own: Mapping[str, object]) -> Callable[[str], tuple[str, bool]]:
    """transformers' own renaming of checkpoint keys: name -> (model name, merged with others)."""
    prefix = getattr(model, "base_model_prefix", "") or None
    try:
        from transformers.conversion_mapping import get_model_conversion_mapping
        from transformers.core_model_loading import WeightConverter, WeightRenaming, rename_source_key
    except ImportError:  # transformers 4.x has no conversion mapping to ask: only the base-model prefix moves
        return lambda name: (_with_prefix(name, prefix, own), False)
    conversions = get_model_conversion_mapping(model)  # type: ignore[arg-type]  # a PreTrainedModel
    renamings = [c for c in conversions if isinstance(c, WeightRenaming)]
    converters = [c for c in conversions if isinstance(c, WeightConverter)]

    def rename(name: str) -> tuple[str, bool]:
        renamed, converter = rename_source_key(name, renamings, converters, prefix, own)  # type: ignore[arg-type]
        return renamed, converter is not None

    return rename


def _with_prefix(name: str, prefix: str | None, own: Mapping[str, object]) -> str:
    if prefix and name not in own:
        if f"{prefix}.{name}" in own:
            return f"{prefix}.{name}"
        if name.startswith(f"{prefix}.") and name[len(prefix) + 1 :] in own:
            return name[len(prefix) + 1 :]
    return name


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
        model.tie_weights()  # type: ignore[operator]  # transformers models have it


def post_process(model: torch.nn.Module, quantize: str | None) -> None:
    """The runtime post-processing `quantize` names (None: none), in place."""
    if quantize is None:
        return
    if quantize != "int8":
        raise ConfigError(f"--quantize {quantize!r} is not supported; the only choice is int8")
    quantize_int8(model, skip=("lm_head",))


def greedy_tokens(model: torch.nn.Module, n: int = 32) -> list[int]:
    """`n` greedily generated token ids after a fixed prompt (comparing two loads of a model)."""
    prompt = torch.tensor([[1, 42, 7, 99, 3]])
    with torch.no_grad():
        out = model.generate(  # type: ignore[operator]  # a transformers model
            prompt, max_new_tokens=n, min_new_tokens=n, do_sample=False
        )
    return out[0, prompt.shape[1] :].tolist()
