"""Matching an official seed's per-name descriptors to our tensors (pure): by name, byte size and
dtype, refusing with every offending tensor named; aliases read once; zero-byte tensors skipped."""

from __future__ import annotations

import pytest
import torch

from peerload.errors import LayoutMismatch
from peerload.loader.mx_source import match
from peerload.tensors import collect
from peerload.wire import TensorInfo


def destination() -> dict[str, torch.Tensor]:
    embed = torch.zeros(4, 4)
    packed = torch.zeros(8, dtype=torch.bfloat16)
    return {
        "embed": embed,
        "lm_head": embed,  # tied
        "a": packed[:4],
        "b": packed[4:],  # view into a's storage
        "empty": torch.zeros(0),
        "flag": torch.zeros(3, dtype=torch.bool),
    }


def descriptors(tensors: dict[str, torch.Tensor], base: int = 1 << 40) -> list[TensorInfo]:
    """What an official seed with the same model would publish (addresses made up)."""
    return [
        TensorInfo(name, base + 4096 * i, t.numel() * t.element_size(), 0, str(t.dtype))
        for i, (name, t) in enumerate(sorted(tensors.items()))
    ]


def test_every_tensor_read_once_into_its_region():
    tensors = destination()
    tensor_set = collect(tensors)
    theirs = descriptors(tensors) + [TensorInfo("rotary.inv_freq", 1, 16, 0, "torch.float32")]  # extra: fine
    reads = match(tensor_set, theirs, "cpu", source="mx-1")
    ops = [op for region in reads.values() for op in region]
    by_local = {op.local_addr: op for op in ops}
    # embed/lm_head share one range: one READ; a and b are two ranges of one region.
    assert len(ops) == 4 and set(reads) == {"a", "embed", "flag"}
    assert by_local[tensors["b"].data_ptr()].size == 8 and len(reads["a"]) == 2
    assert all(op.remote_memory == "cpu" for op in ops)
    remote = {d.name: d.addr for d in theirs}
    assert by_local[tensors["flag"].data_ptr()].remote_addr == remote["flag"]
    assert sum(op.size for op in ops) == 64 + 16 + 3


@pytest.mark.parametrize(
    "change, named",
    [
        (lambda d: [x for x in d if x.name != "b"], ["source lacks 1 tensor(s): b"]),
        (lambda d: [x._replace(size=x.size * 2) if x.name == "embed" else x for x in d], ["embed: 128 bytes"]),
        (
            lambda d: [x._replace(dtype="torch.float16") if x.name == "a" else x for x in d],
            ["a: dtype is torch.float16 at the source, torch.bfloat16 here"],
        ),
        (
            lambda d: [x._replace(dtype="torch.uint8") if x.name in ("flag", "lm_head") else x for x in d],
            ["flag: dtype", "lm_head: dtype"],
        ),
        (lambda d: [], ["source lacks 5 tensor(s)"]),
    ],
)
def test_refused_naming_every_tensor_that_differs(change, named):
    tensors = destination()
    with pytest.raises(LayoutMismatch) as info:
        match(collect(tensors), change(descriptors(tensors)), "cuda", source="mx-1")
    assert info.value.source == "mx-1"
    for fragment in named:
        assert any(fragment in problem for problem in info.value.problems), info.value.problems


def test_non_contiguous_destination_is_refused():
    tensors = {"t": torch.zeros(2, 3).t()}
    theirs = [TensorInfo("t", 1 << 40, 24, 0, "torch.float32")]
    with pytest.raises(LayoutMismatch, match="t: not contiguous here"):
        match(collect(tensors), theirs, "cpu")
