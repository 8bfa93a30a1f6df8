"""What a seed serves and a target checks: tensor layouts, the storages behind them, checksums.

Pure data, no torch: the local side of it is `peerload.tensors.TensorSet`.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from peerload.boxes import Box
from peerload.parts import PART_ALIGN, Part, count_parts, plan_parts

# A part checksum is "<algorithm>:<hex digest>", or bare hex for xxh3_64 (what manifests held
# before parts could differ). The manifest-wide `checksum_algorithm` stays "xxh3_64" when every
# part is xxh3_64, so older readers keep working; otherwise it is PER_PART, which they refuse
# cleanly as "no usable checksums" instead of taking other digests for corrupt bytes.
CHECKSUM_ALGORITHM = "xxh3_64"
DEVICE_DIGEST = "wsum64"  # `peerload.digest`: torch operations on the part's own device
PER_PART = "per_part"
PART_ALGORITHMS = (CHECKSUM_ALGORITHM, DEVICE_DIGEST)
MEMORY_KINDS = ("cpu", "cuda")


def part_algorithm(checksum: str) -> str:
    """The algorithm a part checksum names ("xxh3_64" for bare hex)."""
    algorithm, sep, _ = checksum.partition(":")
    return algorithm if sep else CHECKSUM_ALGORITHM


def tag_checksum(algorithm: str, digest: str) -> str:
    """A part checksum as published: bare hex for xxh3_64, "<algorithm>:<hex>" otherwise."""
    return digest if algorithm == CHECKSUM_ALGORITHM else f"{algorithm}:{digest}"


def manifest_algorithm(part_checksums: Iterable[str]) -> str:
    """The manifest-wide `checksum_algorithm` for these part checksums."""
    bare = all(part_algorithm(c) == CHECKSUM_ALGORITHM for c in part_checksums)
    return CHECKSUM_ALGORITHM if bare else PER_PART


@dataclass(frozen=True)
class TensorEntry:
    """One named tensor: its layout and where it lives inside a region."""

    name: str
    shape: tuple[int, ...]
    stride: tuple[int, ...]
    dtype: str
    nbytes: int  # numel * element size (what the tensor itself spans when contiguous)
    storage_offset: int  # in elements, inside the region's storage
    region: str  # name of the region (storage) holding it
    # Where it sits in the full checkpoint tensors (`peerload.boxes`); empty: not published.
    boxes: tuple[Box, ...] = ()
    no_layout: str = ""  # why it has no boxes, when its seed knows (named by a plan that needs it)


@dataclass(frozen=True)
class RegionEntry:
    """One storage: the unit that is registered, transferred and checksummed."""

    name: str
    size: int
    addr: int = 0
    device_id: int = 0
    checksum: str = ""
    memory: str = "cpu"  # "cpu" | "cuda": where the seed's bytes live (NIXL DRAM or VRAM)


@dataclass
class Manifest:
    """Everything a target needs to check layout and verify content."""

    tensors: list[TensorEntry]
    regions: list[RegionEntry]
    worker_id: str = ""
    source_id: str = ""
    worker_rank: int = 0
    checksum_algorithm: str = CHECKSUM_ALGORITHM
    # The part plan's size and one checksum per part (see `peerload.parts`); 0 / empty: none.
    part_bytes: int = 0
    part_checksums: list[str] = field(default_factory=list)

    @property
    def total_bytes(self) -> int:
        return sum(r.size for r in self.regions)

    def parts(self) -> list[Part]:
        """The part plan this manifest's checksums refer to (empty when it publishes none)."""
        if not self.part_bytes:
            return []
        return plan_parts(((r.name, r.size) for r in self.regions), self.part_bytes)

    def region_map(self) -> dict[str, RegionEntry]:
        return {r.name: r for r in self.regions}

    @property
    def part_algorithms(self) -> list[str]:
        """The algorithm of each part checksum, in plan order."""
        return [part_algorithm(c) for c in self.part_checksums]

    def verifiable(self) -> bool:
        """Whether a target can verify every part: one known checksum per part, named consistently."""
        return (
            self.part_bytes > 0
            and len(self.part_checksums) == len(self.parts())
            and all(self.part_checksums)
            and self.checksum_algorithm == manifest_algorithm(self.part_checksums)
            and all(a in PART_ALGORITHMS for a in self.part_algorithms)
        )


def compare_layout(
    expected: Iterable[TensorEntry], expected_regions: Iterable[RegionEntry], actual: Manifest
) -> list[str]:
    """Differences between our layout and a source's, one readable line each (empty = equal)."""
    problems: list[str] = []
    ours = {e.name: e for e in expected}
    theirs = {e.name: e for e in actual.tensors}
    missing = sorted(set(ours) - set(theirs))
    extra = sorted(set(theirs) - set(ours))
    if missing:
        problems.append(f"source lacks {len(missing)} tensor(s): {', '.join(missing[:5])}")
    if extra:
        problems.append(f"source has {len(extra)} unexpected tensor(s): {', '.join(extra[:5])}")
    for name in sorted(set(ours) & set(theirs)):
        a, b = ours[name], theirs[name]
        for attr in ("shape", "stride", "dtype", "nbytes", "storage_offset", "region"):
            if getattr(a, attr) != getattr(b, attr):
                problems.append(f"{name}: {attr} is {getattr(b, attr)} at the source, {getattr(a, attr)} here")
    our_regions = {r.name: r.size for r in expected_regions}
    their_regions = {r.name: r.size for r in actual.regions}
    for name, size in our_regions.items():
        if name not in their_regions:
            problems.append(f"source describes no storage region {name}")
        elif their_regions[name] != size:
            problems.append(f"storage of {name}: {their_regions[name]} bytes at the source, {size} here")
    return problems


_ADDRESS_LIMIT = 1 << 64  # addr + size of a region must fit the 64-bit address space


def _name_problem(where: str, name: str, seen: set[str], what: str) -> tuple[str, str] | None:
    if not name:
        return f"{where}.name", "is empty"
    if name in seen:
        return f"{where}.name", f"repeats {what} {name!r}"
    seen.add(name)
    return None


def manifest_problem(m: Manifest) -> tuple[str, str] | None:
    """The first malformed field of a manifest as (field, problem); None if it is well-formed."""
    regions: set[str] = set()
    for i, r in enumerate(m.regions):
        where = f"regions[{i}]"
        problem = _name_problem(where, r.name, regions, "region")
        if problem:
            return problem
        if r.size and not r.addr:
            return f"{where}.addr", f"is 0 for a region of {r.size} bytes"
        if r.memory not in MEMORY_KINDS:
            return f"{where}.memory", f"is {r.memory!r}; known: {', '.join(MEMORY_KINDS)}"
        if r.addr + r.size > _ADDRESS_LIMIT:
            return f"{where}.size", f"{r.size} bytes at 0x{r.addr:x} run past the 64-bit address space"
    names: set[str] = set()
    for i, t in enumerate(m.tensors):
        where = f"tensors[{i}]"
        problem = _name_problem(where, t.name, names, "tensor")
        if problem:
            return problem
        if t.region not in regions:
            return f"{where}.region", f"names no region of this manifest ({t.region!r})"
        if any(n < 0 for n in t.shape):
            return f"{where}.shape", f"has a negative size: {list(t.shape)}"
        if len(t.stride) != len(t.shape) or any(s < 0 for s in t.stride):
            return f"{where}.stride", f"{list(t.stride)} does not fit shape {list(t.shape)}"
        if t.storage_offset < 0:
            return f"{where}.storage_offset", f"is negative ({t.storage_offset})"
        for j, box in enumerate(t.boxes):
            if box.problem():
                return f"{where}.boxes[{j}]", box.problem()
    return _parts_problem(m)


def _parts_problem(m: Manifest) -> tuple[str, str] | None:
    """A part plan that cannot be computed, or checksums that do not fit it (one per part)."""
    if not m.part_bytes:
        if m.part_checksums:
            return "part_checksums", f"has {len(m.part_checksums)} checksums but part_bytes is 0 (no part plan)"
        return None
    if m.part_bytes < PART_ALIGN:
        return "part_bytes", f"is {m.part_bytes}; parts are at least {PART_ALIGN} bytes"
    if not m.part_checksums:
        return None  # a seed that publishes no checksums: a verifying target refuses it later
    parts = count_parts(((r.name, r.size) for r in m.regions), m.part_bytes)
    if len(m.part_checksums) != parts:
        return "part_checksums", f"has {len(m.part_checksums)} checksums for {parts} parts of {m.part_bytes} bytes"
    for i, digest in enumerate(m.part_checksums):
        if not digest:
            return f"part_checksums[{i}]", "is empty"
    return None
