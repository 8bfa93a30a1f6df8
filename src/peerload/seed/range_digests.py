"""Digests of byte ranges a resharding reader read (`SeedService.DigestRanges`).

A target of another tensor-parallel layout reads sub-ranges of this seed's regions, which no
published part checksum covers. It asks for the xxh3_64 of exactly the ranges it read, in its
order, and compares it with the bytes it holds; with `check_parts` the seed first checks every
part of its own plan those ranges touch against the checksum it published, so the digest vouches
for bytes that are still what was published (docs/resharding.md#verification); each part once
per reader's lease.
"""

from __future__ import annotations

import threading
from bisect import bisect_right
from collections.abc import Mapping, Sequence

import torch
import xxhash

from peerload.errors import InvalidRequest, PreconditionFailed
from peerload.manifest import Manifest
from peerload.tensors import host_bytes, part_matches

Range = tuple[str, int, int]  # (region, offset, size)
MAX_LEASES = 256  # leases whose checked parts are remembered


class RangeDigests:
    """Digests over one worker's regions (those its manifest describes)."""

    def __init__(self, regions: Mapping[str, torch.Tensor], manifest: Manifest) -> None:
        self._regions = regions
        self._manifest = manifest
        self._parts = manifest.parts()
        self._sizes = {r.name: r.size for r in manifest.regions}
        self._lock = threading.Lock()
        self._checked: dict[str, set[int]] = {}  # lease -> parts checked under it
        # region -> [(first byte, last byte + 1, part index)] of the seed's own plan
        self._spans: dict[str, list[tuple[int, int, int]]] = {}
        for part in self._parts:
            for piece in part.pieces:
                self._spans.setdefault(piece.region, []).append((piece.offset, piece.offset + piece.size, part.index))
        for spans in self._spans.values():
            spans.sort()  # a plan's pieces of one region are disjoint: their ends sort with their starts
        self._ends = {region: [b for _, b, _ in spans] for region, spans in self._spans.items()}

    def digest(self, ranges: Sequence[Range], check_parts: bool, lease: str = "") -> tuple[str, int]:
        """(xxh3_64 hex of the ranges' bytes in order, parts checked).

        Raises:
            InvalidRequest: a range names no region or runs past its end.
            PreconditionFailed: a touched part no longer matches its published checksum (or none was published).
        """
        for i, (region, offset, size) in enumerate(ranges):
            if region not in self._sizes:
                raise InvalidRequest(f"ranges[{i}].region", f"names no region of this worker ({region!r})")
            if offset + size > self._sizes[region]:
                raise InvalidRequest(
                    f"ranges[{i}]", f"[{offset}, {offset + size}) runs past {region} ({self._sizes[region]} bytes)"
                )
        checked = self._check(ranges, lease) if check_parts else 0
        digest = xxhash.xxh3_64()
        buffers = {name: host_bytes(self._regions[name]) for name in {r for r, _, _ in ranges}}
        for region, offset, size in ranges:
            digest.update(buffers[region][offset : offset + size])
        return digest.hexdigest(), checked

    def _check(self, ranges: Sequence[Range], lease: str) -> int:
        touched: set[int] = set()
        for region, offset, size in ranges:
            spans = self._spans.get(region, [])
            at = bisect_right(self._ends.get(region, []), offset)  # the first piece ending after `offset`
            while at < len(spans) and spans[at][0] < offset + size:
                touched.add(spans[at][2])
                at += 1
        if lease:
            with self._lock:
                touched -= self._checked.get(lease, set())
        sums = self._manifest.part_checksums
        for i in sorted(touched):
            if i >= len(sums) or not sums[i]:
                raise PreconditionFailed(f"part {i} has no published checksum: the ranges cannot be vouched for")
            if not part_matches(self._regions, self._parts[i], sums[i]):
                raise PreconditionFailed(
                    f"part {i} ({', '.join(self._parts[i].regions[:3])}) no longer matches its published checksum"
                )
        if lease:
            with self._lock:
                self._checked.setdefault(lease, set()).update(touched)
                while len(self._checked) > MAX_LEASES:  # the oldest lease's record goes first
                    del self._checked[next(iter(self._checked))]
        return len(touched)
