"""Where each local tensor sits in the full checkpoint tensors: boxes (pure, no torch).

A box is the part of one checkpoint tensor (its name and full shape) that a worker holds:
`start`/`stop` per dimension, stored row-major (C order) at byte `offset` inside the local
tensor's buffer. An unsharded or replicated tensor holds one box, the full tensor; a rank of a
tensor-parallel layout holds its slice; a fused tensor (Phi-3's `qkv_proj` and `gate_up_proj`,
vLLM's `qkv_proj`) holds several boxes one after the other in one buffer.

Tensor-parallel boxes come from intervals of units (attention heads, or rows/columns): rank r of
`tp` holds the units [r * n / tp, (r + 1) * n / tp), rounded outward to whole units. With fewer
units than ranks (grouped-query attention with kv_heads < tp) that is one unit, replicated across
tp / n ranks, never `n // tp` (which is 0 there).

A box whose `tensor` is `PADDING` ("") holds bytes of no checkpoint tensor that the engine fills
itself (vLLM pads vocabulary rows): it occupies its place in the buffer, and no plan reads it.
A layout maps each tensor name to its boxes, or to a string saying why it has none.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from math import prod

from peerload.errors import ConfigError

PADDING = ""  # the `tensor` of a padding box (bytes the engine fills itself)

# Bytes per element of the dtypes a manifest names ("torch.bfloat16" or "bfloat16").
ITEMSIZE = {
    "float64": 8,
    "float32": 4,
    "float16": 2,
    "bfloat16": 2,
    "int64": 8,
    "int32": 4,
    "int16": 2,
    "int8": 1,
    "uint8": 1,
    "bool": 1,
    "float8_e4m3fn": 1,
    "float8_e5m2": 1,
}


def itemsize(dtype: str) -> int:
    """Bytes per element of `dtype`; ConfigError for a dtype boxes cannot describe."""
    size = ITEMSIZE.get(dtype.removeprefix("torch."))
    if size is None:
        raise ConfigError(f"dtype {dtype} has no known element size: its tensors cannot be resharded")
    return size


@dataclass(frozen=True)
class Box:
    """Elements [start, stop) of checkpoint tensor `tensor` (full shape `full_shape`), row-major at byte `offset`."""

    tensor: str
    full_shape: tuple[int, ...]
    start: tuple[int, ...]
    stop: tuple[int, ...]
    offset: int = 0

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(b - a for a, b in zip(self.start, self.stop, strict=True))

    @property
    def numel(self) -> int:
        return prod(self.shape)

    @property
    def is_padding(self) -> bool:
        return self.tensor == PADDING

    def is_full(self) -> bool:
        return all(a == 0 for a in self.start) and tuple(self.stop) == tuple(self.full_shape)

    def problem(self) -> str:
        """What is wrong with this box ("" when it is well-formed)."""
        n = len(self.full_shape)
        if len(self.start) != n or len(self.stop) != n:
            return f"box of {self.tensor} has {len(self.start)}/{len(self.stop)} bounds for {n} dimensions"
        for d, (a, b, full) in enumerate(zip(self.start, self.stop, self.full_shape, strict=True)):
            if not 0 <= a <= b <= full:
                return f"box of {self.tensor} spans [{a}, {b}) in dimension {d} of {full}"
        if self.offset < 0:
            return f"box of {self.tensor} starts at byte {self.offset}"
        return ""


def full_box(name: str, shape: Sequence[int]) -> Box:
    """The whole of tensor `name`: what an unsharded or replicated tensor holds."""
    return Box(name, tuple(shape), (0,) * len(shape), tuple(shape))


def padding_box(shape: Sequence[int], offset: int) -> Box:
    """`shape` elements at byte `offset` that belong to no checkpoint tensor (the engine fills them)."""
    return Box(PADDING, tuple(shape), (0,) * len(shape), tuple(shape), offset)


# name -> the boxes the tensor holds, or why it publishes none (a plan needing it fails naming that).
Layout = Mapping[str, "tuple[Box, ...] | str"]


def intersect(a: Box, b: Box) -> tuple[tuple[int, ...], tuple[int, ...]] | None:
    """The (start, stop) shared by two boxes of one tensor, None when they share no element."""
    start = tuple(max(x, y) for x, y in zip(a.start, b.start, strict=True))
    stop = tuple(min(x, y) for x, y in zip(a.stop, b.stop, strict=True))
    if any(lo >= hi for lo, hi in zip(start, stop, strict=True)) and start:
        return None
    return start, stop


def unit_interval(units: int, tp_size: int, tp_rank: int, what: str) -> tuple[int, int]:
    """The units [lo, hi) rank `tp_rank` of `tp_size` holds (whole units, replicated when units < tp_size).

    Raises:
        ConfigError: the units do not divide among the ranks (or the ranks among the units).
    """
    if units >= tp_size:
        if units % tp_size:
            raise ConfigError(f"{what}: {units} units, not divisible by tp_size {tp_size}")
        return units * tp_rank // tp_size, units * (tp_rank + 1) // tp_size
    if tp_size % units:
        raise ConfigError(f"{what}: {units} cannot be replicated evenly across tp_size {tp_size}")
    lo = tp_rank * units // tp_size
    return lo, lo + 1


@dataclass(frozen=True)
class Heads:
    """Attention geometry: what q/k/v/o projections are cut by (whole heads)."""

    q_heads: int
    kv_heads: int
    head_dim: int

    @classmethod
    def from_config(cls, config: Mapping[str, object]) -> Heads | None:
        """From a transformers config.json (None when it does not name its heads)."""
        q = config.get("num_attention_heads")
        hidden = config.get("hidden_size")
        if not isinstance(q, int) or q <= 0:
            return None
        kv = config.get("num_key_value_heads") or q
        head_dim = config.get("head_dim") or (hidden // q if isinstance(hidden, int) else None)
        if not isinstance(kv, int) or not isinstance(head_dim, int) or kv <= 0 or head_dim <= 0:
            return None
        return cls(q, kv, head_dim)


# Tensor-parallel rules by module name: column-parallel on dim 0, row-parallel on dim 1.
COLUMN_PARALLEL = ("q_proj", "k_proj", "v_proj", "gate_proj", "up_proj", "embed_tokens", "lm_head")
ROW_PARALLEL = ("o_proj", "down_proj")
FUSED = ("qkv_proj", "gate_up_proj")  # column-parallel, several segments along dim 0
_SHARDED_LEAVES = ("weight", "bias")


def _module(name: str) -> tuple[str, str]:
    parts = name.split(".")
    return (parts[-2] if len(parts) >= 2 else ""), parts[-1]


def shard_dim(name: str) -> int | None:
    """The dimension tensor `name` is split on across tp ranks, or None if every rank holds it whole."""
    module, leaf = _module(name)
    if (module in COLUMN_PARALLEL or module in FUSED) and leaf in (*_SHARDED_LEAVES, "weight_scale"):
        return 0
    if module in ROW_PARALLEL and leaf == "weight":
        return 1
    return None


def _segments(name: str, rows: int, heads: Heads | None) -> list[tuple[int, int, int]]:
    """(first row, rows, unit rows) of each segment the split dim of `name` is cut in."""
    module, _ = _module(name)
    if module == "qkv_proj":
        if heads is None:
            raise ConfigError(f"{name}: a fused qkv_proj needs the attention heads (config.json) to be sharded")
        q, kv = heads.q_heads * heads.head_dim, heads.kv_heads * heads.head_dim
        if q + 2 * kv != rows:
            raise ConfigError(f"{name}: {rows} rows, but {heads} gives {q} + 2 x {kv}")
        return [(0, q, heads.head_dim), (q, kv, heads.head_dim), (q + kv, kv, heads.head_dim)]
    if module == "gate_up_proj":
        if rows % 2:
            raise ConfigError(f"{name}: a fused gate_up_proj needs an even number of rows, not {rows}")
        return [(0, rows // 2, 1), (rows // 2, rows // 2, 1)]
    unit = 1
    if heads is not None and module in ("q_proj", "o_proj") and rows == heads.q_heads * heads.head_dim:
        unit = heads.head_dim
    if heads is not None and module in ("k_proj", "v_proj") and rows == heads.kv_heads * heads.head_dim:
        unit = heads.head_dim
    return [(0, rows, unit)]


def tp_boxes(
    name: str, full_shape: Sequence[int], tp_size: int, tp_rank: int, heads: Heads | None = None, item: int = 1
) -> tuple[Box, ...]:
    """The boxes rank `tp_rank` of `tp_size` holds of tensor `name`, in buffer order (`item`: bytes per element).

    Raises:
        ConfigError: the tensor cannot be split evenly (naming it).
    """
    shape = tuple(full_shape)
    dim = shard_dim(name)
    if tp_size == 1 or dim is None or dim >= len(shape):
        return (full_box(name, shape),)
    boxes = []
    offset = 0
    for first, rows, unit in _segments(name, shape[dim], heads):
        if rows % unit:
            raise ConfigError(f"{name}: {rows} rows of dimension {dim} are not whole units of {unit}")
        lo, hi = unit_interval(rows // unit, tp_size, tp_rank, f"{name} (dimension {dim}, {rows // unit} units)")
        start = [0] * len(shape)
        stop = list(shape)
        start[dim], stop[dim] = first + lo * unit, first + hi * unit
        box = Box(name, shape, tuple(start), tuple(stop), offset)
        offset += box.numel * item
        boxes.append(box)
    return tuple(boxes)


def local_shape(boxes: Sequence[Box]) -> tuple[int, ...]:
    """The shape of a local tensor holding `boxes` one after the other (concatenated along dim 0)."""
    first = boxes[0].shape
    if len(boxes) == 1:
        return first
    if any(b.shape[1:] != first[1:] for b in boxes):
        raise ConfigError(f"boxes of {boxes[0].tensor} differ beyond dimension 0: they cannot share one buffer")
    return (sum(b.shape[0] for b in boxes), *first[1:])


def tile_problem(name: str, boxes: Iterable[Box], nbytes: int, item: int) -> str:
    """Whether `boxes` fill a local tensor of `nbytes` exactly, back to back ("" when they do)."""
    at = 0
    for box in sorted(boxes, key=lambda b: b.offset):
        problem = box.problem()
        if problem:
            return f"{name}: {problem}"
        if box.offset != at:
            what = "overlap" if box.offset < at else "leave a gap"
            return f"{name}: its boxes {what} in its buffer (a box at byte {box.offset}, the previous ends at {at})"
        at += box.numel * item
    if at != nbytes:
        return f"{name}: its boxes hold {at} bytes, the tensor {nbytes}"
    return ""
