"""Filling the destination from storage-loaded tensors (the fallback when no peer works)."""

from __future__ import annotations

from collections.abc import Mapping

import torch

from peerload.errors import LayoutMismatch
from peerload.tensors import TensorSet


def copy_into(tensor_set: TensorSet, loaded: Mapping[str, torch.Tensor]) -> None:
    """Copy storage-loaded tensors into the destination, checking names, shapes and dtypes."""
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
    with torch.no_grad():
        for name, dst in tensor_set.tensors.items():
            dst.copy_(loaded[name])
