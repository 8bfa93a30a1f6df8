"""Chunk planning, tensor regions and prefaulting (no data plane involved)."""

from __future__ import annotations

import pytest
import torch

from peerload.errors import ConfigError
from peerload.transport import ReadOp, prefault, tensor_region
from peerload.transport._plan import plan_batches

MiB = 1 << 20


def test_large_op_is_split_and_small_ops_are_grouped():
    ops = [ReadOp(1000, 5000, 10 * MiB), ReadOp(0, 0, 0), *[ReadOp(i, i, MiB) for i in range(6)]]
    batches = plan_batches(ops, 4 * MiB)
    assert [b.nbytes for b in batches] == [4 * MiB, 4 * MiB, 2 * MiB + 2 * MiB, 4 * MiB]
    first = batches[0].ops[0]
    second = batches[1].ops[0]
    assert (first.remote_addr, first.local_addr, first.size) == (1000, 5000, 4 * MiB)
    assert (second.remote_addr, second.local_addr) == (1000 + 4 * MiB, 5000 + 4 * MiB)
    assert sum(b.nbytes for b in batches) == 16 * MiB


@pytest.mark.parametrize("chunk", [0, -1])
def test_no_chunking_gives_one_batch(chunk):
    ops = [ReadOp(0, 0, 100 * MiB), ReadOp(0, 0, 3)]
    assert [b.nbytes for b in plan_batches(ops, chunk)] == [100 * MiB + 3]


def test_key_change_starts_a_new_batch_and_empty_plan():
    ops = [ReadOp(0, 0, 1, remote_memory="cpu"), ReadOp(0, 0, 1, remote_memory="cuda"), ReadOp(0, 0, 1)]
    assert [len(b.ops) for b in plan_batches(ops, MiB, key=lambda op: op.remote_memory)] == [1, 1, 1]
    assert plan_batches([ReadOp(0, 0, 0)], MiB) == []
    with pytest.raises(ConfigError):
        plan_batches([ReadOp(0, 0, -1)], MiB)


def test_tensor_region_refuses_non_contiguous():
    t = torch.arange(12, dtype=torch.bfloat16).reshape(3, 4)
    r = tensor_region("w", t)
    assert (r.addr, r.size, r.device_id, r.dtype) == (t.data_ptr(), 24, 0, "torch.bfloat16")
    with pytest.raises(ConfigError, match="'w' is not contiguous"):
        tensor_region("w", t.t())


def test_prefault_keeps_contents_and_counts_bytes():
    ts = [torch.arange(5 * MiB, dtype=torch.int32), torch.empty(0), torch.ones(7, dtype=torch.int8)]
    before = [t.clone() for t in ts]
    assert prefault(ts, threads=2) >= 20 * MiB
    assert all(torch.equal(a, b) for a, b in zip(ts, before, strict=True))
