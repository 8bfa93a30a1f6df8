"""Hugging Face glue: read safetensors checkpoints, build models (empty or loaded), tp shards.

A directory with a config.json becomes the `transformers` model its config names (see
`hf_classes`; non-persistent buffers such as rotary tables travel too); a bare .safetensors file
is moved as its tensors.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file

from peerload.adapters import hf_classes
from peerload.adapters.hf_classes import transformers_module
from peerload.adapters.quantize import quantize_int8
from peerload.errors import CheckpointError, CheckpointMismatch, ConfigError
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


def has_weights(path: str | Path) -> bool:
    """Whether `path` holds weights: a file, or a directory with *.safetensors or a shard index.

    A model directory without weights (config.json only) is a valid target: its weights come from
    a peer, and there is no storage fallback.
    """
    p = Path(path)
    return not p.is_dir() or (p / "model.safetensors.index.json").exists() or any(p.glob("*.safetensors"))


def build_empty_model(
    path: str | Path, *, quantize: str | None = None, model_class: str | None = None, device: str = "cpu"
) -> torch.nn.Module:
    """The model of `path/config.json` with allocated but uninitialised tensors, post-processed.

    Args:
        path: a model directory with config.json.
        quantize: post-processing ("int8") or None.
        model_class: a transformers class name; default: config.json's `architectures` (see hf_classes).
        device: where its tensors are allocated ("cpu", "cuda:N"); nothing touches them there.

    Raises:
        ConfigError: `model_class` is not a transformers model class, or none fits the config.
        MissingExtraError: transformers is not installed.
    """
    meta = _meta_model(path, model_class)
    _post_process(meta, quantize)
    materialize(meta, device)
    return meta.eval()


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


def load_model(
    path: str | Path,
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
    config = auto_config(path)
    cls = hf_classes.model_class(config, model_class)
    model, info = cls.from_pretrained(str(path), config=config, output_loading_info=True)
    # Non-persistent buffers (rotary tables, position_ids) and tied weights are never reported.
    missing = [] if allow_missing else info.get("missing_keys", ())
    unused = [] if allow_unused else info.get("unexpected_keys", ())
    if missing or unused:
        raise CheckpointMismatch(str(path), type(model).__name__, missing, unused)
    model.to(device)  # post-processing then runs where the model serves
    _post_process(model, quantize)
    return model.eval()


def _meta_model(path: str | Path, model_class: str | None) -> torch.nn.Module:
    """The model of `path/config.json` on the meta device (shapes and names, no memory)."""
    config = auto_config(path)
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
    conversions = get_model_conversion_mapping(model)
    renamings = [c for c in conversions if isinstance(c, WeightRenaming)]
    converters = [c for c in conversions if isinstance(c, WeightConverter)]

    def rename(name: str) -> tuple[str, bool]:
        renamed, converter = rename_source_key(name, renamings, converters, prefix, own)
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


def check_shardable(model: torch.nn.Module | Mapping[str, torch.Tensor], tp_size: int, what: str = "") -> None:
    """Refuse `tp_size` > 1 when a matrix matches no sharding rule (rather than a half-sharded model).

    Raises:
        ConfigError: naming the architecture (or `what`) and some of the uncovered tensors.
    """
    if tp_size == 1:
        return
    is_model = isinstance(model, torch.nn.Module)
    tensors = module_tensors(model, attributes=False) if is_model else model
    uncovered = sorted(n for n, t in tensors.items() if t.dim() >= 2 and shard_dim(n) is None)
    if uncovered:
        what = what or (type(model).__name__ if is_model else "these tensors")
        raise ConfigError(
            f"--tp-size {tp_size}: peerload has no tensor-parallel sharding rules for {what}: "
            f"{len(uncovered)} matrix tensor(s) match none, such as {', '.join(uncovered[:3])}. peerload shards "
            "Llama-style models (q/k/v/o_proj, gate/up/down_proj, embed_tokens, lm_head); use --tp-size 1"
        )


def unshard(shards: list[Mapping[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Reassemble full tensors from every rank's shard (inverse of `shard`)."""
    out = {}
    for name in shards[0]:
        dim = shard_dim(name)
        out[name] = (
            shards[0][name] if dim is None or len(shards) == 1 else torch.cat([s[name] for s in shards], dim=dim)
        )
    return out


def empty_like_shard(
    tensors: Mapping[str, torch.Tensor], tp_size: int, tp_rank: int, device: str = "cpu"
) -> dict[str, torch.Tensor]:
    """Uninitialised tensors shaped like `shard(tensors, ...)` (works on meta tensors)."""
    out = {}
    for name, t in tensors.items():
        shape = list(t.shape)
        dim = shard_dim(name)
        if tp_size > 1 and dim is not None:
            if shape[dim] % tp_size:
                raise ConfigError(f"{name}: dimension {dim} ({shape[dim]}) is not divisible by tp_size {tp_size}")
            shape[dim] //= tp_size
        out[name] = torch.empty(shape, dtype=t.dtype, device=device)
    return out


# -- what the CLI uses: destination + fallback for a checkpoint path ------------------------------


def seed_tensors(
    path: str | Path,
    *,
    quantize: str | None,
    tp_size: int,
    tp_rank: int,
    model_class: str | None = None,
    allow_missing: bool = False,
    allow_unused: bool = False,
    device: str = "cpu",
) -> tuple[dict[str, torch.Tensor] | torch.nn.Module, torch.nn.Module | None]:
    """What a seed publishes for `path`: (tensors or model, the model if one was built).

    `model_class`, `allow_missing`, `allow_unused` and `device` are as for `load_model`.
    """
    if has_model_config(path):
        if tp_size > 1:  # refuse before reading the weights
            check_shardable(_meta_model(path, model_class), tp_size)
        model = load_model(
            path,
            quantize=quantize,
            model_class=model_class,
            allow_missing=allow_missing,
            allow_unused=allow_unused,
            device=device,
        )
        if tp_size == 1:
            return model, model
        return shard(module_tensors(model, attributes=False), tp_size, tp_rank), model
    if quantize:
        raise ConfigError("--quantize needs a model directory with config.json, not a bare safetensors file")
    tensors = read_checkpoint(path)
    check_shardable(tensors, tp_size, what=f"the bare checkpoint {path}")
    return {n: t.to(device) for n, t in shard(tensors, tp_size, tp_rank).items()}, None


def target_tensors(
    path: str | Path,
    *,
    quantize: str | None,
    tp_size: int,
    tp_rank: int,
    model_class: str | None = None,
    allow_missing: bool = False,
    allow_unused: bool = False,
    device: str = "cpu",
) -> tuple[dict[str, torch.Tensor] | torch.nn.Module, Callable[[], Mapping[str, torch.Tensor]] | None]:
    """What a target allocates for `path` (empty, final layout, on `device`) and how storage would fill it.

    The fallback is None for a model directory without weights. `model_class`, `allow_missing` and
    `allow_unused` are as for `load_model` (the storage fallback, which reads into host memory and
    is copied into the destination).
    """
    if has_model_config(path):
        if tp_size == 1:
            destination: dict[str, torch.Tensor] | torch.nn.Module = build_empty_model(
                path, quantize=quantize, model_class=model_class, device=device
            )
        else:
            meta = _meta_model(path, model_class)
            check_shardable(meta, tp_size)
            _post_process(meta, quantize)
            destination = empty_like_shard(module_tensors(meta, attributes=False), tp_size, tp_rank, device)

        def from_storage() -> Mapping[str, torch.Tensor]:
            model = load_model(
                path, quantize=quantize, model_class=model_class, allow_missing=allow_missing, allow_unused=allow_unused
            )
            if tp_size > 1:
                return shard(module_tensors(model, attributes=False), tp_size, tp_rank)
            return module_tensors(model)

        return destination, from_storage if has_weights(path) else None
    if quantize:
        raise ConfigError("--quantize needs a model directory with config.json, not a bare safetensors file")
    layout = checkpoint_layout(path)
    metas = {n: torch.empty(shape, dtype=dt, device="meta") for n, (shape, dt) in layout.items()}
    check_shardable(metas, tp_size, what=f"the bare checkpoint {path}")
    return empty_like_shard(metas, tp_size, tp_rank, device), lambda: shard(read_checkpoint(path), tp_size, tp_rank)


def greedy_tokens(model: torch.nn.Module, n: int = 32) -> list[int]:
    """`n` greedily generated token ids after a fixed prompt (comparing two loads of a model)."""
    prompt = torch.tensor([[1, 42, 7, 99, 3]])
    with torch.no_grad():
        out = model.generate(prompt, max_new_tokens=n, min_new_tokens=n, do_sample=False)
    return out[0, prompt.shape[1] :].tolist()
