"""Local tensors grouped by storage (what peerload moves), and their checksums.

Bytes move per *storage region*, not per tensor: tied weights and views that share one storage
are registered and transferred once, and a non-contiguous tensor travels as its whole storage.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import torch
import xxhash

from peerload.boxes import Layout
from peerload.devices import device_id_of, memory_of
from peerload.digest import digest_pieces
from peerload.errors import ConfigError, LayoutMismatch
from peerload.manifest import (
    CHECKSUM_ALGORITHM,
    DEVICE_DIGEST,
    PART_ALGORITHMS,
    Manifest,
    RegionEntry,
    TensorEntry,
    compare_layout,
    part_algorithm,
    tag_checksum,
)
from peerload.parts import Part

log = logging.getLogger(__name__)

# Hashing runs at ~16 GB/s per core, so large regions are split to use every core.
_HASH_SLICE = 256 << 20


@dataclass
class TensorSet:
    """Local tensors grouped by storage: the view of a model that peerload moves."""

    tensors: dict[str, torch.Tensor]
    entries: list[TensorEntry]
    # Region name -> a flat uint8 tensor over the whole storage (what gets registered).
    regions: dict[str, torch.Tensor] = field(default_factory=dict)

    @property
    def total_bytes(self) -> int:
        return sum(r.numel() for r in self.regions.values())

    def manifest(self, checksums: Mapping[str, str] | None = None, **meta: object) -> Manifest:
        regions = [
            RegionEntry(
                name=n,
                size=r.numel(),
                addr=r.data_ptr() if r.numel() else 0,
                device_id=device_id_of(r.device),
                checksum=(checksums or {}).get(n, ""),
                memory=memory_of(r.device),
            )
            for n, r in self.regions.items()
        ]
        return Manifest(tensors=list(self.entries), regions=regions, **meta)  # type: ignore[arg-type]


def module_tensors(module: torch.nn.Module, *, attributes: bool = True) -> dict[str, torch.Tensor]:
    """Every tensor a forward pass may read: parameters, buffers, and tensor attributes of modules.

    Aliases (tied weights) keep all their names; `collect` folds them onto one region.
    With `attributes=False`, parameters and buffers only (what tp shards are cut from).
    """
    out: dict[str, torch.Tensor] = {}
    for name, p in module.named_parameters(remove_duplicate=False):
        out[name] = p.data
    for name, b in module.named_buffers(remove_duplicate=False):
        out[name] = b
    if not attributes:
        return out
    # Post-processing (quantization, repacking) may attach plain tensors to modules.
    for mod_name, mod in module.named_modules(remove_duplicate=False):
        for attr, value in vars(mod).items():
            if attr.startswith("_") or not isinstance(value, torch.Tensor) or value.is_meta:
                continue
            name = f"{mod_name}.{attr}" if mod_name else attr
            out.setdefault(name, value)
    return out


def collect(tensors: Mapping[str, torch.Tensor] | torch.nn.Module, layout: Layout | None = None) -> TensorSet:
    """Group tensors by the storage they live in; refuse what cannot be moved.

    `layout` (name -> boxes, `peerload.boxes`) says where each tensor sits in the full checkpoint
    tensors; the manifest publishes it, so targets of another layout can reshard from it. A
    string in place of boxes says why the tensor has none (published as `no_layout`).
    """
    boxes_of = layout or {}
    named = module_tensors(tensors) if isinstance(tensors, torch.nn.Module) else dict(tensors)
    if not named:
        raise ConfigError("no tensors to publish or load: the model has no parameters or buffers")
    regions: dict[str, torch.Tensor] = {}
    region_of_storage: dict[tuple[str, int], str] = {}
    entries: list[TensorEntry] = []
    for name in sorted(named):
        t = named[name]
        if not isinstance(t, torch.Tensor):
            raise ConfigError(f"{name!r} is a {type(t).__name__}, not a torch.Tensor")
        if t.is_meta:
            raise ConfigError(
                f"tensor {name!r} is on the meta device: materialise the model "
                "(e.g. model.to_empty(device='cpu')) before publishing or loading"
            )
        if t.is_sparse or t.layout != torch.strided:
            raise ConfigError(f"tensor {name!r} has layout {t.layout}; only strided tensors can be moved")
        try:
            memory_of(t.device)
        except ConfigError as exc:
            raise ConfigError(f"tensor {name!r}: {exc}") from None
        held = boxes_of.get(name, ())
        storage = t.untyped_storage()
        key = (str(t.device), storage.data_ptr())
        if key not in region_of_storage or storage.nbytes() == 0:
            region = name
            region_of_storage[key] = region
            regions[region] = _storage_bytes(storage, t.device)
        entries.append(
            TensorEntry(
                name=name,
                shape=tuple(t.shape),
                stride=tuple(t.stride()),
                dtype=str(t.dtype),
                nbytes=t.numel() * t.element_size(),
                storage_offset=int(t.storage_offset()),
                region=region_of_storage[key] if storage.nbytes() else name,
                boxes=() if isinstance(held, str) else tuple(held),
                no_layout=held if isinstance(held, str) else "",
            )
        )
    return TensorSet(tensors=named, entries=entries, regions=regions)


def _storage_bytes(storage: torch.UntypedStorage, device: torch.device) -> torch.Tensor:
    flat = torch.empty(0, dtype=torch.uint8, device=device)
    flat.set_(storage, 0, (storage.nbytes(),), (1,))
    return flat


def host_bytes(flat: torch.Tensor) -> memoryview:
    """A flat uint8 region's bytes as a buffer (a host copy first for device memory)."""
    return _as_buffer(flat)


def _as_buffer(flat: torch.Tensor) -> memoryview:
    if flat.device.type != "cpu":
        # xxh3 of device memory needs a host copy: seeds of GPU targets should publish wsum64.
        _warn_host_copy(flat.device)
        flat = flat.cpu()
    return flat.numpy().data


_warned_devices: set[str] = set()


def _warn_host_copy(device: torch.device) -> None:
    if str(device) not in _warned_devices:
        _warned_devices.add(str(device))
        log.warning(
            "xxh3_64 of memory on %s copies it to the host first; a seed that sets checksum=wsum64 "
            "(PEERLOAD_CHECKSUM) lets targets verify on the device",
            device,
        )


def checksums(regions: Mapping[str, torch.Tensor], workers: int | None = None) -> dict[str, str]:
    """Checksum every region, spreading slices of large regions over a thread pool."""
    jobs = [(name, i, s) for name, flat in regions.items() for i, s in enumerate(_slices(flat))]
    with ThreadPoolExecutor(max_workers=workers or torch.get_num_threads() or 2) as pool:
        digests = list(pool.map(lambda job: xxhash.xxh3_64_hexdigest(job[2]), jobs))
    parts: dict[str, list[str]] = {name: [] for name in regions}
    for (name, _, _), digest in zip(jobs, digests, strict=True):
        parts[name].append(digest)
    return {name: _fold(p) for name, p in parts.items()}


def part_algorithm_for(regions: Mapping[str, torch.Tensor], part: Part, choice: str = "auto") -> str:
    """The algorithm a seed checksums `part` with: `choice`, where "auto" is xxh3_64 for a part all in
    host memory (faster there) and the on-device digest for a part with bytes on an accelerator."""
    if choice != "auto":
        return choice
    on_host = all(regions[p.region].device.type == "cpu" for p in part.pieces)
    return CHECKSUM_ALGORITHM if on_host else DEVICE_DIGEST


def part_checksum(regions: Mapping[str, torch.Tensor], part: Part, algorithm: str = CHECKSUM_ALGORITHM) -> str:
    """A part's checksum as published ("<algorithm>:<hex>", bare hex for xxh3_64): its pieces in order.

    Raises:
        ValueError: an unknown algorithm.
    """
    if algorithm == DEVICE_DIGEST:
        pieces = [regions[p.region][p.offset : p.offset + p.size] for p in part.pieces]
        return tag_checksum(DEVICE_DIGEST, digest_pieces(pieces))
    if algorithm != CHECKSUM_ALGORITHM:
        raise ValueError(f"unknown part checksum algorithm {algorithm!r}; known: {', '.join(PART_ALGORITHMS)}")
    digest = xxhash.xxh3_64()
    buffers: dict[str, memoryview] = {}  # one buffer per region (a part may have thousands of pieces)
    for piece in part.pieces:
        buf = buffers.get(piece.region)
        if buf is None:
            buf = buffers[piece.region] = _as_buffer(regions[piece.region])
        digest.update(buf[piece.offset : piece.offset + piece.size])
    return digest.hexdigest()


def part_matches(regions: Mapping[str, torch.Tensor], part: Part, expected: str) -> bool:
    """Whether a part's bytes have the checksum `expected`, computed with the algorithm it names."""
    algorithm = part_algorithm(expected)
    return algorithm in PART_ALGORITHMS and part_checksum(regions, part, algorithm) == expected


def part_checksums(
    regions: Mapping[str, torch.Tensor], parts: Sequence[Part], workers: int | None = None, choice: str = "auto"
) -> list[str]:
    """One checksum per part, in plan order, over a thread pool (`choice`: see `part_algorithm_for`)."""

    def one(part: Part) -> str:
        return part_checksum(regions, part, part_algorithm_for(regions, part, choice))

    with ThreadPoolExecutor(max_workers=workers or torch.get_num_threads() or 2) as pool:
        return list(pool.map(one, parts))


def _slices(flat: torch.Tensor) -> list[memoryview]:
    buf = _as_buffer(flat)
    if len(buf) <= _HASH_SLICE:
        return [buf]
    return [buf[i : i + _HASH_SLICE] for i in range(0, len(buf), _HASH_SLICE)]


def _fold(digests: Sequence[str]) -> str:
    return digests[0] if len(digests) == 1 else xxhash.xxh3_64_hexdigest("".join(digests).encode())


def sha256_of(tensor: torch.Tensor) -> str:
    """sha256 of a tensor's raw bytes in contiguous layout (what `--report` shows)."""
    t = tensor.detach()
    if t.device.type != "cpu":
        t = t.cpu()
    return hashlib.sha256(t.contiguous().reshape(-1).view(torch.uint8).numpy().data).hexdigest()


def check_layout(local: TensorSet, remote: Manifest, source: str = "") -> None:
    """Raise LayoutMismatch naming every tensor whose layout differs from the source's."""
    ours = local.manifest()
    problems = compare_layout(ours.tensors, ours.regions, remote)
    if problems:
        raise LayoutMismatch(problems, source=source)
