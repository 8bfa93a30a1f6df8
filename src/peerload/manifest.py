"""What a seed serves and a target checks: tensor layouts, the storages behind them, checksums.

Pure data, no torch: the local side of it is `peerload.tensors.TensorSet`.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from peerload.parts import Part, plan_parts

CHECKSUM_ALGORITHM = "xxh3_64"


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


@dataclass(frozen=True)
class RegionEntry:
    """One storage: the unit that is registered, transferred and checksummed."""

    name: str
    size: int
    addr: int = 0
    device_id: int = 0
    checksum: str = ""


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
