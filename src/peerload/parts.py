"""The part plan: a model's regions cut into parts of about `part_bytes` (pure, no torch).

Seed and target compute the same plan from the manifest (regions in manifest order, the seed's
`part_bytes`), so the seed can publish one checksum per part and a target can verify, re-read
and stripe parts independently of each other.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from peerload.errors import ConfigError

# Cuts inside a region fall on page boundaries, so two parts never share a page.
PART_ALIGN = 4096


@dataclass(frozen=True)
class Piece:
    """`size` bytes of region `region` starting at byte `offset`."""

    region: str
    offset: int
    size: int


@dataclass(frozen=True)
class Part:
    """One unit that is read from one source and verified on its own."""

    index: int
    pieces: tuple[Piece, ...]

    @property
    def nbytes(self) -> int:
        return sum(p.size for p in self.pieces)

    @property
    def regions(self) -> list[str]:
        return list(dict.fromkeys(p.region for p in self.pieces))


def plan_parts(regions: Iterable[tuple[str, int]], part_bytes: int) -> list[Part]:
    """Cut (name, size) regions, in order, into parts of about `part_bytes`.

    A region larger than `part_bytes` is cut into near-equal page-aligned parts; consecutive
    smaller regions are grouped into one part until it would exceed `part_bytes`. Zero-byte
    regions belong to no part.

    Raises:
        ConfigError: part_bytes < PART_ALIGN.
    """
    if part_bytes < PART_ALIGN:
        raise ConfigError(f"part_bytes must be >= {PART_ALIGN}, got {part_bytes}")
    parts: list[tuple[Piece, ...]] = []
    group: list[Piece] = []
    group_bytes = 0
    for name, size in regions:
        if size <= 0:
            continue
        if size > part_bytes:
            if group:
                parts.append(tuple(group))
                group, group_bytes = [], 0
            parts.extend((piece,) for piece in _cut(name, size, part_bytes))
            continue
        if group and group_bytes + size > part_bytes:
            parts.append(tuple(group))
            group, group_bytes = [], 0
        group.append(Piece(name, 0, size))
        group_bytes += size
    if group:
        parts.append(tuple(group))
    return [Part(i, pieces) for i, pieces in enumerate(parts)]


def count_parts(regions: Iterable[tuple[str, int]], part_bytes: int) -> int:
    """len(plan_parts(regions, part_bytes)), computed without making the parts (sizes may be hostile).

    Raises:
        ConfigError: part_bytes < PART_ALIGN.
    """
    if part_bytes < PART_ALIGN:
        raise ConfigError(f"part_bytes must be >= {PART_ALIGN}, got {part_bytes}")
    count = group_bytes = 0
    for _, size in regions:
        if size <= 0:
            continue
        if size > part_bytes:
            count += (group_bytes > 0) + -(-size // _step(size, part_bytes))
            group_bytes = 0
            continue
        if group_bytes and group_bytes + size > part_bytes:
            count += 1
            group_bytes = 0
        group_bytes += size
    return count + (group_bytes > 0)


def _step(size: int, part_bytes: int) -> int:
    """Bytes per piece of a region cut into near-equal parts: ceil(size / count), page-aligned."""
    count = -(-size // part_bytes)
    per_part = -(-size // count)
    return -(-per_part // PART_ALIGN) * PART_ALIGN


def _cut(name: str, size: int, part_bytes: int) -> list[Piece]:
    step = _step(size, part_bytes)
    return [Piece(name, off, min(step, size - off)) for off in range(0, size, step)]


def encode_held(held: Iterable[int], count: int) -> bytes:
    """A bitmap of `count` parts: bit i (byte i // 8, least significant bit first) set when i is held."""
    bits = bytearray(-(-count // 8))
    for i in held:
        if not 0 <= i < count:
            raise ValueError(f"part {i} is outside a plan of {count} parts")
        bits[i // 8] |= 1 << (i % 8)
    return bytes(bits)


def decode_held(bitmap: bytes, count: int) -> set[int]:
    """The parts a bitmap from `encode_held` marks as held (bits past `count` are ignored)."""
    return {i for i in range(min(count, len(bitmap) * 8)) if bitmap[i // 8] >> (i % 8) & 1}
