"""Regions (storages), checksums and layout comparison: what makes a transfer safe to accept."""

from __future__ import annotations

import pytest
import torch

from peerload.errors import ConfigError, LayoutMismatch
from peerload.tensors import check_layout, checksums, collect, module_tensors, sha256_of


def test_tied_and_view_tensors_share_one_region():
    base = torch.randn(8, 8)
    tensors = {"a.weight": base, "b.weight": base, "c.view": base[2:4], "d": torch.zeros(3)}
    ts = collect(tensors)
    assert len(ts.regions) == 2
    by_name = {e.name: e for e in ts.entries}
    assert by_name["a.weight"].region == by_name["b.weight"].region == by_name["c.view"].region == "a.weight"
    assert by_name["c.view"].storage_offset == 16
    assert ts.total_bytes == 8 * 8 * 4 + 3 * 4


def test_non_contiguous_travels_as_its_storage():
    t = torch.arange(12.0).reshape(3, 4).t()
    ts = collect({"t": t})
    (entry,) = ts.entries
    assert entry.stride == (1, 4) and ts.regions["t"].numel() == 48


def test_meta_and_non_tensor_refused():
    with pytest.raises(ConfigError, match="meta"):
        collect({"x": torch.empty(2, device="meta")})
    with pytest.raises(ConfigError, match="not a torch.Tensor"):
        collect({"x": [1, 2]})
    with pytest.raises(ConfigError, match="no tensors"):
        collect({})


def test_module_tensors_include_buffers_and_attached_tensors():
    lin = torch.nn.Linear(4, 4)
    lin.register_buffer("scale", torch.ones(4))
    lin.packed = torch.zeros(2)  # what post-processing may attach
    names = set(module_tensors(lin))
    assert names == {"weight", "bias", "scale", "packed"}


def test_checksums_detect_one_flipped_bit_and_agree_across_thread_counts():
    big = torch.randn(300 << 18)  # 300 MiB: several hash slices
    regions = collect({"big": big, "small": torch.arange(5)}).regions
    sums = checksums(regions)
    assert sums == checksums(regions, workers=1)
    regions["big"][123_456_789] ^= 1
    assert checksums(regions)["big"] != sums["big"]


def test_layout_mismatch_names_each_difference():
    ours = collect({"w": torch.empty(4, 4), "b": torch.empty(4), "only_here": torch.empty(1)})
    theirs = collect({"w": torch.empty(4, 4, dtype=torch.int8), "b": torch.empty(5), "only_there": torch.empty(1)})
    with pytest.raises(LayoutMismatch) as err:
        check_layout(ours, theirs.manifest(), source="peer-1")
    text = str(err.value)
    for fragment in ("peer-1", "w: dtype", "b: shape", "only_here", "only_there"):
        assert fragment in text
    check_layout(ours, collect({"w": torch.ones(4, 4), "b": torch.ones(4), "only_here": torch.ones(1)}).manifest())


def test_sha256_of_uses_contiguous_bytes():
    t = torch.arange(6, dtype=torch.int16).reshape(2, 3)
    assert sha256_of(t.t()) == sha256_of(t.t().contiguous())
    assert sha256_of(t) != sha256_of(t.t())


def test_manifest_missing_a_region_is_a_mismatch():
    ours = collect({"w": torch.empty(4)})
    theirs = collect({"w": torch.ones(4)}).manifest()
    theirs.regions.clear()
    with pytest.raises(LayoutMismatch, match="no storage region w"):
        check_layout(ours, theirs)
