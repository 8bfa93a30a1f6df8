"""Storage fallback: a full copy checks the layout; a partial fill copies only the missing parts."""

from __future__ import annotations

import pytest
import torch

from peerload.errors import LayoutMismatch
from peerload.loader.storage import copy_into, fill_parts
from peerload.parts import plan_parts
from peerload.tensors import collect


def _model() -> dict[str, torch.Tensor]:
    base = torch.zeros(6, 1024)
    return {
        "big": torch.zeros(4096, dtype=torch.float32),  # 16 KiB: cut into parts
        "small": torch.zeros(10, dtype=torch.int64),
        "view": base[1:3],  # a slice of a larger storage
        "transposed": torch.zeros(64, 32).t(),  # non-contiguous: copied whole when touched
    }


def _storage() -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    return {
        "big": torch.randn(4096, generator=gen),
        "small": torch.arange(10),
        "view": torch.randn(2, 1024, generator=gen),
        "transposed": torch.randn(32, 64, generator=gen),
    }


def test_copy_into_refuses_other_shapes_naming_them():
    tensors = collect(_model())
    bad = {**_storage(), "small": torch.arange(11)}
    with pytest.raises(LayoutMismatch, match="small: storage has"):
        copy_into(tensors, bad)


def test_fill_parts_copies_only_missing_ranges():
    model = _model()
    tensors = collect(model)
    storage = _storage()
    parts = plan_parts(((n, r.numel()) for n, r in tensors.regions.items()), 8192)
    big_parts = [p for p in parts if p.regions == ["big"]]
    assert len(big_parts) == 2
    # peers delivered the first half of "big" (here: a marker), storage must fill the rest
    tensors.regions["big"][:8192].fill_(7)
    copied = fill_parts(tensors, storage, [big_parts[1]])
    assert copied == 8192
    first = tensors.regions["big"][:8192]
    assert bool((first == 7).all()), "a delivered part was overwritten"
    assert torch.equal(model["big"][2048:], storage["big"][2048:])
    assert not model["small"].any(), "a part that was not missing was copied"


def test_fill_parts_handles_views_and_non_contiguous_tensors():
    model = _model()
    tensors = collect(model)
    storage = _storage()
    parts = plan_parts(((n, r.numel()) for n, r in tensors.regions.items()), 1 << 20)
    assert fill_parts(tensors, storage, parts) > 0
    for name, tensor in model.items():
        assert torch.equal(tensor, storage[name].reshape(tensor.shape) if name != "transposed" else storage[name]), name
