"""manifest_problem: each malformed field of a manifest is named; a well-formed one passes."""

from __future__ import annotations

import dataclasses

import pytest

from peerload.manifest import Manifest, RegionEntry, TensorEntry, manifest_problem

GOOD = Manifest(
    tensors=[
        TensorEntry("a", (2, 3), (3, 1), "torch.float32", 24, 0, "a"),
        TensorEntry("a_t", (3, 2), (1, 3), "torch.float32", 24, 0, "a"),
    ],
    regions=[RegionEntry("a", 24, 0x1000), RegionEntry("empty", 0, 0)],
    worker_id="w",
)


def tensor(**change: object) -> Manifest:
    return dataclasses.replace(GOOD, tensors=[dataclasses.replace(GOOD.tensors[0], **change), GOOD.tensors[1]])


def region(**change: object) -> Manifest:
    return dataclasses.replace(GOOD, regions=[dataclasses.replace(GOOD.regions[0], **change), GOOD.regions[1]])


def parts(part_bytes: int, sums: list[str]) -> Manifest:
    return dataclasses.replace(GOOD, part_bytes=part_bytes, part_checksums=sums)


def test_well_formed_manifest_passes():
    assert manifest_problem(GOOD) is None
    assert manifest_problem(parts(4096, ["0123456789abcdef"])) is None  # 24 bytes: one part
    assert manifest_problem(parts(4096, [])) is None  # no checksums published: the loader decides


@pytest.mark.parametrize(
    ("manifest", "field", "words"),
    [
        (region(name=""), "regions[0].name", "empty"),
        (dataclasses.replace(GOOD, regions=[GOOD.regions[0], GOOD.regions[0]]), "regions[1].name", "repeats"),
        (region(addr=0), "regions[0].addr", "is 0"),
        (region(addr=2**64 - 8), "regions[0].size", "address space"),
        (tensor(name=""), "tensors[0].name", "empty"),
        (tensor(name="a_t"), "tensors[1].name", "repeats"),
        (tensor(region="nowhere"), "tensors[0].region", "'nowhere'"),
        (tensor(shape=(2, -3)), "tensors[0].shape", "negative"),
        (tensor(stride=(3,)), "tensors[0].stride", "does not fit"),
        (tensor(storage_offset=-1), "tensors[0].storage_offset", "negative"),
        # the part plan and its checksums (one per part of `part_bytes`)
        (parts(0, ["00"]), "part_checksums", "part_bytes is 0"),
        (parts(100, []), "part_bytes", "at least 4096"),
        (parts(4096, ["aa", "bb"]), "part_checksums", "2 checksums for 1 parts"),
        (parts(4096, [""]), "part_checksums[0]", "empty"),
    ],
)
def test_each_malformed_field_is_named(manifest, field, words):
    problem = manifest_problem(manifest)
    assert problem is not None and problem[0] == field and words in problem[1], problem
