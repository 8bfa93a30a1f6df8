"""A seed's digests of the exact ranges a resharding reader read (`SeedService.DigestRanges`)."""

from __future__ import annotations

import pytest
import torch
import xxhash

from peerload.errors import InvalidRequest, PreconditionFailed
from peerload.parts import plan_parts
from peerload.seed.range_digests import RangeDigests
from peerload.tensors import collect, part_checksums


def seed(n: int = 3) -> tuple[dict[str, torch.Tensor], RangeDigests]:
    tensors = {f"w{i}": torch.arange(4096 * (i + 1), dtype=torch.int32) * (i + 7) for i in range(n)}
    ts = collect(tensors)
    parts = plan_parts(((name, r.numel()) for name, r in ts.regions.items()), 8192)
    manifest = ts.manifest(part_bytes=8192, part_checksums=part_checksums(ts.regions, parts))
    return ts.regions, RangeDigests(ts.regions, manifest)


def test_digest_is_of_the_ranges_in_order_and_parts_are_checked_once_per_lease():
    regions, digests = seed()
    ranges = [("w1", 100, 50), ("w0", 0, 10), ("w1", 9000, 4000)]
    expected = xxhash.xxh3_64()
    for name, offset, size in ranges:
        expected.update(regions[name].numpy().tobytes()[offset : offset + size])
    digest, checked = digests.digest(ranges, check_parts=True, lease="L")
    assert digest == expected.hexdigest() and checked == 3  # w0's first part, w1's first two
    assert digests.digest(ranges, check_parts=True, lease="L") == (digest, 0)
    assert digests.digest(ranges, check_parts=True, lease="M")[1] == 3
    assert digests.digest(ranges, check_parts=False)[1] == 0


def test_changed_memory_and_bad_ranges_are_refused():
    regions, digests = seed()
    regions["w2"][5] ^= 0xFF  # the seed's memory no longer holds what it published
    with pytest.raises(PreconditionFailed, match="no longer matches its published checksum"):
        digests.digest([("w2", 0, 16)], check_parts=True)
    assert digests.digest([("w2", 0, 16)], check_parts=False)[0]  # unchecked: the bytes as they are
    with pytest.raises(InvalidRequest, match="names no region"):
        digests.digest([("nope", 0, 1)], check_parts=False)
    with pytest.raises(InvalidRequest, match="runs past w0"):
        digests.digest([("w0", 16380, 8)], check_parts=False)
