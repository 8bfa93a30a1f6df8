"""The part digest that runs where the bytes are: torch operations on the tensor's own device.

xxh3 needs host memory, so verifying a part in GPU memory with it means copying the part to the
host. This digest is integer arithmetic in torch instead (as ModelExpress's refit digest is), so
it runs on a CUDA tensor without leaving the device and on a CPU tensor alike, and both give the
same value for the same bytes: integer sums are exact, and int64 arithmetic wraps the same way
on both (mod 2**64), in any reduction order.

A piece's bytes are read as int32 words in rows of `ROW_WORDS`. Each row is reduced to one
weighted sum `inner[r] = sum_c v[c] * x[r, c]` (int64), and the rows to `sum_r inner[r]` and
`sum_r u[r] * inner[r]`. The weights are fixed pseudo-random odd numbers whose low 33 bits differ
from each other, so that (mod 2**64, for pieces under 32 GiB):
- one flipped bit changes `sum_r inner[r]` by 2**b * (odd), never 0;
- two different words swapped in one row change `inner[r]` by (p - q) * (v[a] - v[b]), never 0;
- rows swapped, or any change spread over several rows, is caught unless the product of random
  weight differences and data cancels, which random weights make as unlikely as a 64-bit
  collision.
Per piece the byte count and both sums go to the host (24 bytes), and a part's digest is blake2b
over those of its pieces in order: swapped pieces change it too.
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Sequence

import numpy as np
import torch

ROW_WORDS = 1024  # int32 words per row (4 KiB)
# Rows reduced per step: bounds the int64 temporary (8 bytes per word) to 8 MiB on CPU (cache
# sized) and 256 MiB on a GPU, where a step must be large enough that launching its few kernels
# (~5-10 us each from Python) costs less than running them (128 MiB of input: ~0.1 ms on an H200).
_STEP_ROWS = {"cpu": 1024, "cuda": 32768}
_LOW_BITS = 33  # the low bits of weights that are distinct (2*i + 1): see the module docstring
_MASK64 = (1 << 64) - 1


def _weights(count: int, salt: int) -> np.ndarray:
    """`count` int64 weights: splitmix64 of (index, salt) in the high bits, 2*index + 1 in the low."""
    i = np.arange(count, dtype=np.uint64)
    with np.errstate(over="ignore"):
        z = i * np.uint64(0x9E3779B97F4A7C15) + np.uint64(salt)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z ^= z >> np.uint64(31)
    low = np.uint64((1 << _LOW_BITS) - 1)
    w = (z & ~low) | (i * np.uint64(2) + np.uint64(1))
    return w.view(np.int64)


class _WeightCache:
    """Column weights and a growing vector of row weights, per device (built once, reused)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._columns: dict[torch.device, torch.Tensor] = {}
        self._rows: dict[torch.device, torch.Tensor] = {}

    def columns(self, device: torch.device) -> torch.Tensor:
        with self._lock:
            w = self._columns.get(device)
            if w is None:
                w = self._columns[device] = torch.from_numpy(_weights(ROW_WORDS, 0x5EED)).to(device)
            return w

    def rows(self, count: int, device: torch.device) -> torch.Tensor:
        with self._lock:
            w = self._rows.get(device)
            if w is None or w.numel() < count:
                size = max(count, 2 * (w.numel() if w is not None else 0), 1 << 14)
                w = self._rows[device] = torch.from_numpy(_weights(size, 0xD16E57)).to(device)
            return w[:count]


_WEIGHTS = _WeightCache()


def _inner(block: torch.Tensor, columns: torch.Tensor) -> torch.Tensor:
    """Each row's weighted sum (int64) of an int32 [rows, n] block; n <= ROW_WORDS."""
    w = columns[: block.shape[1]]
    if block.is_cuda:
        return torch.mul(block, w).sum(dim=1)  # one kernel reads int32, writes the int64 product
    return block.to(torch.int64).mul_(w).sum(dim=1)  # faster on CPU than the mixed-dtype multiply


def piece_sums(raw: torch.Tensor) -> torch.Tensor:
    """(byte count, sum of row sums, row-weighted sum) of a flat uint8 tensor, as int64 on its device."""
    device = raw.device
    n = raw.numel()
    if raw.data_ptr() % 4:  # int32 loads need an aligned start; the copy stays on the device
        raw = raw.clone()
    body = n - n % 4
    words = raw[:body].view(torch.int32)
    rows, tail = divmod(words.numel(), ROW_WORDS)
    columns = _WEIGHTS.columns(device)
    total = torch.zeros((), dtype=torch.int64, device=device)
    weighted = torch.zeros((), dtype=torch.int64, device=device)
    row_weights = _WEIGHTS.rows(rows + 1, device)
    step = _STEP_ROWS.get(device.type, _STEP_ROWS["cuda"])
    for start in range(0, rows, step):
        stop = min(rows, start + step)
        inner = _inner(words[start * ROW_WORDS : stop * ROW_WORDS].view(stop - start, ROW_WORDS), columns)
        total += inner.sum()
        weighted += (inner * row_weights[start:stop]).sum()
    last = words[rows * ROW_WORDS :]
    if n % 4:  # the ragged bytes, zero-padded into one more word (the byte count tells them apart)
        pad = torch.zeros(4, dtype=torch.uint8, device=device)
        pad[: n % 4] = raw[body:]
        last = torch.cat([last, pad.view(torch.int32)])
    if tail or n % 4:
        inner = _inner(last.view(1, -1), columns)
        total += inner.sum()
        weighted += (inner * row_weights[rows:]).sum()
    return torch.stack([torch.tensor(n, dtype=torch.int64, device=device), total, weighted])


def digest_pieces(pieces: Sequence[torch.Tensor]) -> str:
    """The hex digest of flat uint8 tensors taken in order as one part (any mix of devices)."""
    sums = [piece_sums(p) for p in pieces]
    by_device: dict[torch.device, list[int]] = {}
    for i, s in enumerate(sums):
        by_device.setdefault(s.device, []).append(i)
    host: list[list[int]] = [[] for _ in sums]
    for indices in by_device.values():  # one device-to-host copy of 24 bytes per piece, per device
        values = torch.stack([sums[i] for i in indices]).cpu().tolist()
        for i, row in zip(indices, values, strict=True):
            host[i] = row
    h = hashlib.blake2b(digest_size=16)
    for row in host:
        for value in row:
            h.update((value & _MASK64).to_bytes(8, "little"))
    return h.hexdigest()
