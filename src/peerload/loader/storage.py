"""Filling the destination from storage-loaded tensors (the fallback when no peer works).

When peers delivered some parts, storage fills only the byte ranges they did not: the
fallback returns whole tensors by name, and only their bytes inside the missing ranges are copied.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch

from peerload.errors import LayoutMismatch
from peerload.parts import Part
from peerload.tensors import TensorSet


def check_storage(tensor_set: TensorSet, loaded: Mapping[str, torch.Tensor]) -> None:
    """Raise LayoutMismatch if storage lacks a tensor or has another shape or dtype."""
    problems = []
    missing = sorted(set(tensor_set.tensors) - set(loaded))
    if missing:
        problems.append(f"storage lacks {len(missing)} tensor(s): {', '.join(missing[:5])}")
    for name, dst in tensor_set.tensors.items():
        src = loaded.get(name)
        if src is None:
            continue
        if tuple(src.shape) != tuple(dst.shape) or src.dtype != dst.dtype:
            problems.append(
                f"{name}: storage has {tuple(src.shape)} {src.dtype}, model expects {tuple(dst.shape)} {dst.dtype}"
            )
    if problems:
        raise LayoutMismatch(problems, source="storage")


def copy_into(tensor_set: TensorSet, loaded: Mapping[str, torch.Tensor]) -> None:
    """Copy storage-loaded tensors into the destination, checking names, shapes and dtypes."""
    check_storage(tensor_set, loaded)
    with torch.no_grad():
        for name, dst in tensor_set.tensors.items():
            dst.copy_(loaded[name])


def fill_parts(tensor_set: TensorSet, loaded: Mapping[str, torch.Tensor], parts: Sequence[Part]) -> int:
    """Copy from storage only the bytes of `parts` (what no peer delivered); returns bytes copied.

    A non-contiguous tensor touching a missing range is copied whole (its bytes are not one span).
    """
    check_storage(tensor_set, loaded)
    missing: dict[str, list[tuple[int, int]]] = {}
    for part in parts:
        for piece in part.pieces:
            missing.setdefault(piece.region, []).append((piece.offset, piece.offset + piece.size))
    region_of = {e.name: e.region for e in tensor_set.entries}
    copied = 0
    with torch.no_grad():
        for name, dst in tensor_set.tensors.items():
            spans = missing.get(region_of[name])
            if not spans or dst.numel() == 0:
                continue
            start = dst.storage_offset() * dst.element_size()
            end = start + dst.numel() * dst.element_size()
            hits = [(max(a, start), min(b, end)) for a, b in spans if a < end and b > start]
            if not hits:
                continue
            if not dst.is_contiguous():
                dst.copy_(loaded[name])
                copied += dst.numel() * dst.element_size()
                continue
            src = loaded[name].contiguous().reshape(-1).view(torch.uint8)
            region = tensor_set.regions[region_of[name]]
            for a, b in hits:
                region[a:b].copy_(src[a - start : b - start])
                copied += int(b - a)
    return copied
