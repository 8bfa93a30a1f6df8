"""The on-device part digest (wsum64), run here on CPU tensors: what it catches and what it equals.

CUDA is not available on this machine, so its CUDA branch (one mixed-dtype multiply) is checked
for the same arithmetic on CPU, and `scripts/gpu_check.py` compares a GPU's digests with these
on the device itself.
"""

from __future__ import annotations

import random

import pytest
import torch

from peerload.digest import ROW_WORDS, digest_pieces, piece_sums
from peerload.manifest import DEVICE_DIGEST, Manifest, manifest_algorithm, part_algorithm
from peerload.parts import plan_parts
from peerload.tensors import collect, part_algorithm_for, part_checksum, part_checksums, part_matches

TRIALS = 1000


def _bytes(n: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n,), dtype=torch.uint8, generator=g)


def _reference(data: bytes) -> list[int]:
    """The digest's definition in plain integers (mod 2**64), one word at a time."""
    from peerload.digest import _weights

    padded = data + bytes(-len(data) % 4)
    words = [int.from_bytes(padded[i : i + 4], "little", signed=True) for i in range(0, len(padded), 4)]
    cols = [int(v) for v in _weights(ROW_WORDS, 0x5EED)]
    rows = [int(v) for v in _weights(len(words) // ROW_WORDS + 1, 0xD16E57)]
    inner = [0] * len(rows)
    for j, x in enumerate(words):
        inner[j // ROW_WORDS] += cols[j % ROW_WORDS] * x
    wrap = [(v + (1 << 63)) % (1 << 64) - (1 << 63) for v in inner]  # int64 inner sums
    mask = (1 << 64) - 1
    return [len(data), sum(wrap) & mask, sum(u * v for u, v in zip(rows, wrap, strict=True)) & mask]


@pytest.mark.parametrize("size", [0, 3, 4, 4097, ROW_WORDS * 4, ROW_WORDS * 4 * 2 + 5])
def test_torch_sums_equal_the_definition(size: int):
    data = _bytes(size, size)
    mask = (1 << 64) - 1
    assert [v & mask for v in piece_sums(data).tolist()] == _reference(bytes(data.numpy()))


def test_known_answer_pins_the_algorithm():
    # Seeds and targets of different versions must agree: changing the arithmetic changes this.
    data = torch.arange(3 * ROW_WORDS * 4 + 7, dtype=torch.int64).remainder(251).to(torch.uint8)
    assert digest_pieces([data]) == "8dd260a7da56e1271f42444e3a008712"


def test_same_bytes_same_digest_whatever_their_alignment_or_storage():
    data = _bytes(ROW_WORDS * 4 * 5 + 3, 1)
    shifted = torch.empty(data.numel() + 1, dtype=torch.uint8)
    shifted[1:] = data
    assert digest_pieces([data]) == digest_pieces([shifted[1:]])  # an unaligned start
    assert digest_pieces([data]) == digest_pieces([data.clone()])


def test_the_cuda_branch_computes_the_same_inner_sums():
    """On a GPU a row's weighted sum is one int32 x int64 multiply; it must equal the CPU form."""
    from peerload.digest import _WEIGHTS

    words = _bytes(ROW_WORDS * 4 * 8, 2).view(torch.int32).view(8, ROW_WORDS)
    w = _WEIGHTS.columns(torch.device("cpu"))
    assert torch.equal(torch.mul(words, w).sum(dim=1), words.to(torch.int64).mul_(w).sum(dim=1))


def test_empty_and_tiny_pieces():
    assert piece_sums(torch.empty(0, dtype=torch.uint8)).tolist() == [0, 0, 0]
    one = digest_pieces([torch.tensor([1], dtype=torch.uint8)])
    # zero padding of the ragged bytes never hides a length difference
    assert one != digest_pieces([torch.tensor([1, 0], dtype=torch.uint8)])


@pytest.mark.parametrize("size", [5, 4096, ROW_WORDS * 4 * 3 + 2, 1 << 16])
def test_a_flipped_bit_is_caught_every_time(size: int):
    rng = random.Random(size)
    data = _bytes(size, size)
    expected = digest_pieces([data])
    for _ in range(TRIALS):
        i, bit = rng.randrange(size), rng.randrange(8)
        data[i] ^= 1 << bit
        assert digest_pieces([data]) != expected
        data[i] ^= 1 << bit
    assert digest_pieces([data]) == expected


def test_a_swapped_pair_of_rows_is_caught_every_time():
    """Rows of a weight matrix (of any width, dtype and position) exchanged in place."""
    rng = random.Random(7)
    caught = 0
    for trial in range(TRIALS):
        dtype = rng.choice([torch.float32, torch.bfloat16, torch.int8, torch.float16])
        rows, cols = rng.randint(2, 24), rng.choice([1, 3, 16, 100, 1024, 1500])
        w = torch.randn(rows, cols, generator=torch.Generator().manual_seed(trial)).to(dtype)
        a, b = rng.sample(range(rows), 2)
        if torch.equal(w[a], w[b]):  # an exchange of equal rows changes no byte
            w[b] += 1
        flat = w.view(-1).view(torch.uint8)
        expected = digest_pieces([flat])
        w[[a, b]] = w[[b, a]]
        caught += digest_pieces([flat]) != expected
    assert caught == TRIALS


def test_rows_with_equal_sums_swapped_are_caught():
    """Exchanged rows that hold the same values in other columns: every plain or per-axis sum agrees."""
    w = torch.zeros(4, ROW_WORDS, dtype=torch.int32)
    w[1, 3] = w[2, 10] = 5
    expected = digest_pieces([w.view(-1).view(torch.uint8)])
    w[[1, 2]] = w[[2, 1]]
    assert digest_pieces([w.view(-1).view(torch.uint8)]) != expected
    w = torch.tensor([1.0, -1.0] * ROW_WORDS)  # words that differ only in the sign bit, one row
    expected = digest_pieces([w.view(torch.uint8)])
    w[[0, 1]] = w[[1, 0]]
    assert digest_pieces([w.view(torch.uint8)]) != expected


def test_a_swapped_pair_of_parts_is_caught_every_time():
    """Two parts' bytes exchanged (a plan that reads one part into another's place): both fail."""
    rng = random.Random(11)
    for trial in range(TRIALS):
        part_bytes = 4096 * rng.randint(1, 4)
        n_parts = rng.randint(2, 6)
        flat = _bytes(part_bytes * n_parts, trial)
        regions = {"w": flat}
        parts = plan_parts([("w", flat.numel())], part_bytes)
        sums = part_checksums(regions, parts, choice=DEVICE_DIGEST, workers=1)
        i, j = rng.sample(range(len(parts)), 2)
        pi, pj = parts[i].pieces[0], parts[j].pieces[0]
        a = flat[pi.offset : pi.offset + pi.size].clone()
        flat[pi.offset : pi.offset + pi.size] = flat[pj.offset : pj.offset + pj.size]
        flat[pj.offset : pj.offset + pj.size] = a
        assert not part_matches(regions, parts[i], sums[i])
        assert not part_matches(regions, parts[j], sums[j])


def test_swapped_pieces_inside_one_part_are_caught():
    a, b = _bytes(100, 1), _bytes(100, 2)
    assert digest_pieces([a, b]) != digest_pieces([b, a])


def test_checksums_name_their_algorithm_and_the_manifest_says_per_part():
    regions = collect({"w": torch.randn(64, 64), "b": torch.randn(64)}).regions
    parts = plan_parts(((n, r.numel()) for n, r in regions.items()), 4096)
    host = part_checksums(regions, parts)  # auto, all in host memory: xxh3_64, bare hex as before
    device = part_checksums(regions, parts, choice=DEVICE_DIGEST)
    assert all(part_algorithm(c) == "xxh3_64" and ":" not in c for c in host)
    assert all(c.startswith("wsum64:") for c in device)
    assert manifest_algorithm(host) == "xxh3_64" and manifest_algorithm(device) == "per_part"
    assert all(part_matches(regions, p, c) for p, c in zip(parts, host + device[len(host) :], strict=False))
    assert all(part_matches(regions, p, c) for p, c in zip(parts, device, strict=True))
    assert not part_matches(regions, parts[0], "md5:00")


def test_auto_picks_the_device_digest_for_parts_off_the_host():
    """Device selection only reads where a region lives; a meta tensor stands in for a GPU one here."""
    parts = plan_parts([("cpu", 8), ("gpu", 8)], 4096)  # one part with a piece of each
    regions = {"cpu": torch.empty(8, dtype=torch.uint8), "gpu": torch.empty(8, dtype=torch.uint8, device="meta")}
    assert part_algorithm_for(regions, parts[0]) == DEVICE_DIGEST
    assert part_algorithm_for({"cpu": regions["cpu"], "gpu": regions["cpu"]}, parts[0]) == "xxh3_64"
    assert part_algorithm_for(regions, parts[0], "xxh3_64") == "xxh3_64"


def test_manifest_verifiable_only_with_known_consistently_named_checksums():
    regions = collect({"w": torch.randn(2048)}).regions
    ts = collect({"w": torch.randn(2048)})
    parts = plan_parts([("w", 8192)], 4096)
    sums = part_checksums(regions, parts, choice=DEVICE_DIGEST)

    def manifest(algorithm: str, part_sums: list[str]) -> Manifest:
        return ts.manifest(checksum_algorithm=algorithm, part_bytes=4096, part_checksums=part_sums)

    assert manifest("per_part", sums).verifiable()
    assert not manifest("xxh3_64", sums).verifiable()  # an old reader would take these for xxh3
    assert not manifest("per_part", ["md5:" + s.split(":")[1] for s in sums]).verifiable()
    assert not manifest("per_part", sums[:1]).verifiable()
    plain = part_checksums(regions, parts)
    assert manifest("xxh3_64", plain).verifiable() and not manifest("per_part", plain).verifiable()
    assert part_checksum(regions, parts[0]) == plain[0]
