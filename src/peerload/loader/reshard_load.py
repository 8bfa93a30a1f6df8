"""Resharding loads: a target of one tensor-parallel layout reads from the ranks of a seed of another.

When no READY source of the load's own identity exists, sources of the same model whose identity
differs only in tensor/pipeline-parallel sizes are candidates. Every READY rank of one such
layout is handshaken (record, manifest with boxes, lease), the plan (`peerload.reshard`) is made
and checked before any byte moves, and its parts are read striped across the ranks that hold
them: each part from one rank, a part of replicated boxes from any rank holding it. A part is
verified by the digest its source computes over exactly the ranges read (docs/resharding.md).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import torch

from peerload._grpc import ChannelSecurity
from peerload.client import CoordinatorClient, SourceRef, SourceStatus
from peerload.devices import device_id_of
from peerload.errors import ChecksumMismatch, CoordinatorError, LayoutMismatch, NoSourceAvailable, TransportError
from peerload.identity import SourceIdentity
from peerload.loader.near_miss import LAYOUT_FIELDS, differences
from peerload.loader.network import describe_path
from peerload.loader.phases import PhaseTimer
from peerload.loader.selection import order_sources
from peerload.loader.striping import SOURCE_FAILURES, PeerPlan, SourceStats
from peerload.manifest import TensorEntry
from peerload.parts import Part, Piece
from peerload.reshard import Read, ReshardPlan, plan, reads_of
from peerload.seed_client import SeedClient
from peerload.settings import Settings, split_host_port
from peerload.tensors import TensorSet, part_checksum
from peerload.transport.base import EndpointInfo, ReadOp, Transport
from peerload.wire import MODELEXPRESS

log = logging.getLogger(__name__)

MAX_LAYOUTS = 4  # other layouts tried, best first
MAX_PIECES_PER_PART = 8192  # keeps a part's READs and its digest request small


@dataclass(frozen=True)
class Layout:
    """Another layout of the load's model: its identity and READY workers per rank (least loaded first)."""

    identity: SourceIdentity
    source_id: str
    ranks: dict[int, list[SourceRef]]

    @property
    def world(self) -> int:
        return self.identity.tensor_parallel_size * self.identity.pipeline_parallel_size

    def describe(self) -> str:
        i = self.identity
        return f"tp={i.tensor_parallel_size} pp={i.pipeline_parallel_size} (source {self.source_id})"


def reshardable(theirs: SourceIdentity, ours: SourceIdentity) -> bool:
    """Whether two identities differ in their parallel layout only."""
    fields = {d.field for d in differences(theirs, ours)}
    return bool(fields) and fields <= LAYOUT_FIELDS


def has_layout(tensor_set: TensorSet) -> bool:
    """Whether every tensor of the load knows its boxes (what resharding plans from)."""
    return all(e.boxes for e in tensor_set.entries)


def find_layouts(client: CoordinatorClient, identity: SourceIdentity) -> list[Layout]:
    """READY sources of the same model in other layouts, those with every rank READY first.

    Raises:
        CoordinatorError, CoordinatorUnavailable: a ListSources or GetMetadata call failed.
    """
    own = identity.source_id()
    grouped: dict[str, list[SourceRef]] = {}
    for ref in client.list_sources(model_name=identity.model_name, status=SourceStatus.READY):
        if ref.mx_source_id != own:
            grouped.setdefault(ref.mx_source_id, []).append(ref)
    layouts = []
    for source_id, refs in grouped.items():
        record = client.get_metadata(source_id, refs[0].worker_id)
        if record is None or record.identity is None or not reshardable(record.identity, identity):
            continue
        ranks: dict[int, list[SourceRef]] = {}
        for ref in order_sources(refs):
            ranks.setdefault(ref.worker_rank, []).append(ref)
        layouts.append(Layout(record.identity, source_id, ranks))

    def rank(layout: Layout) -> tuple[int, int]:
        missing = sum(1 for r in range(layout.world) if r not in layout.ranks)
        return missing, layout.world

    return sorted(layouts, key=rank)[:MAX_LAYOUTS]


@dataclass
class Resharding:
    """A checked plan over handshaken source ranks: what the striped read runs.

    A part's bytes from one source are read with as few READs as their source ranges allow
    (`reshard.reads_of`): a row-parallel box a source holds whole but this target holds strided
    (TP 2 -> 1) is one READ into that source's staging buffer, scattered into place by `after_read`
    before the part is checked, instead of one small READ per row.
    """

    layout: Layout
    plan: ReshardPlan
    parts: list[Part]
    sources: list[PeerPlan]  # each with the parts it can serve (`holds`)
    tensor_set: TensorSet
    transport: Transport | None = None  # registers the staging buffers; None: no staged READs
    staging: dict[str, torch.Tensor] = field(default_factory=dict)  # per source, registered
    _reads: dict[tuple[str, int], list[Read]] = field(default_factory=dict)

    def reads(self, source: str, index: int) -> list[Read]:
        """Part `index`'s READs from `source` (computed once)."""
        key = (source, index)
        found = self._reads.get(key)
        if found is None:
            copies = self.plan.part_copies[index][source]
            found = reads_of(self.parts[index].pieces, copies)
            if self.transport is None:  # no staging: every staged READ one READ per piece
                found = [Read(*copies[i], i, i + 1, False) if r.staged else r for r in found for i in _span(r)]
            self._reads[key] = found
        return found

    def stage(self) -> None:
        """Allocate and register one staging buffer per source whose READs need one (before reading)."""
        if self.transport is None:
            return
        device = next(iter(self.tensor_set.regions.values())).device if self.tensor_set.regions else None
        for source in self.sources:
            need = 0
            for index in sorted(source.holds or ()):
                need = max(need, sum(r.size for r in self.reads(source.worker_id, index) if r.staged))
            if need:
                buffer = torch.empty(need, dtype=torch.uint8, device=device)
                self.transport.register({_staging_name(source.worker_id): buffer})
                self.staging[source.worker_id] = buffer

    def ops_for(self, source: PeerPlan, part: Part) -> list[ReadOp]:
        """The READs of `part` from `source`: its ranges into our pieces (or its staging buffer)."""
        remote = source.manifest.region_map()
        staging = self.staging.get(source.worker_id)
        at = 0
        ops = []
        for read in self.reads(source.worker_id, part.index):
            if read.staged:
                assert staging is not None
                local, device = staging.data_ptr() + at, staging.device
                at += read.size
            else:
                piece = part.pieces[read.first]
                flat = self.tensor_set.regions[piece.region]
                local, device = flat.data_ptr() + piece.offset, flat.device
            r = remote[read.region]
            ops.append(
                ReadOp(
                    remote_addr=r.addr + read.offset,
                    local_addr=local,
                    size=read.size,
                    remote_device=r.device_id,
                    local_device=device_id_of(device),
                    remote_memory=r.memory,
                )
            )
        return ops

    def after_read(self, source: PeerPlan, part: Part) -> None:
        """Scatter what `part`'s staged READs from `source` brought into place."""
        staging = self.staging.get(source.worker_id)
        at = 0
        for read in self.reads(source.worker_id, part.index):
            if read.staged:
                assert staging is not None
                scatter(self.tensor_set.regions, part.pieces[read.first : read.last], staging[at : at + read.size])
                at += read.size

    def check(self, source: PeerPlan, index: int) -> bool:
        """Whether our bytes of part `index` equal the source's digest of the ranges they came from."""
        part = self.parts[index]
        try:
            ranges = [(r.region, r.offset, r.size) for r in self.reads(source.worker_id, index)]
            theirs = source.seed.digest_ranges(merge_ranges(ranges), check_parts=True, lease=source.lease)
        except SOURCE_FAILURES as exc:
            log.warning("source %s could not vouch for part %d: %s", source.worker_id, index, exc)
            return False
        return part_checksum(self.tensor_set.regions, part) == theirs

    def release(self) -> None:
        for source in self.sources:
            source.release()
        if self.transport is not None and self.staging:
            names = [_staging_name(w) for w in self.staging]
            self.staging = {}
            try:
                self.transport.deregister(names)
            except TransportError as exc:  # e.g. the transport closed first: the memory goes with it
                log.debug("deregistering the staging buffers failed: %s", exc)


def _span(read: Read) -> range:
    return range(read.first, read.last)


def _staging_name(worker_id: str) -> str:
    return f"peerload-reshard-staging/{worker_id}"


def scatter(regions: Mapping[str, torch.Tensor], pieces: Sequence[Piece], data: torch.Tensor) -> None:
    """Copy `data` (a flat uint8 buffer) into `pieces`, one after another.

    Pieces of one region, of one size, at a constant stride (the rows of a strided box) are one
    strided copy; anything else a copy per piece.
    """
    first = pieces[0]
    size = first.size
    stride = pieces[1].offset - first.offset if len(pieces) > 1 else size
    uniform = stride >= size and all(
        p.region == first.region and p.size == size and p.offset == first.offset + i * stride
        for i, p in enumerate(pieces)
    )
    if uniform:
        flat = regions[first.region]
        view = flat.as_strided((len(pieces), size), (stride, 1), flat.storage_offset() + first.offset)
        view.copy_(data.view(len(pieces), size))
        return
    at = 0
    for p in pieces:
        regions[p.region][p.offset : p.offset + p.size].copy_(data[at : at + p.size])
        at += p.size


class ReshardHandshake:
    """Handshakes the ranks of another layout for one load of `tensor_set` and plans the read."""

    def __init__(
        self,
        client: CoordinatorClient,
        transport: Transport,
        tensor_set: TensorSet,
        settings: Settings,
        security: ChannelSecurity,
        worker_id: str,
        seconds: dict[str, float],
        record: Callable[[str], None],
    ) -> None:
        self.client = client
        self.transport = transport
        self.tensor_set = tensor_set
        self.settings = settings
        self.security = security
        self.worker_id = worker_id
        self.seconds = seconds
        self.record = record

    def first_usable(self, identity: SourceIdentity) -> Resharding | None:
        """The first other layout whose ranks can serve this load, planned; None when none can."""
        try:
            with PhaseTimer(self.seconds, "discover"):
                layouts = find_layouts(self.client, identity)
        except CoordinatorError as exc:
            self.record(f"looking for sources of other layouts failed: {exc}")
            return None
        for layout in layouts:
            try:
                return self._try(layout)
            except SOURCE_FAILURES as exc:
                self.record(f"resharding from {layout.describe()}: {type(exc).__name__}: {exc}")
                log.warning("cannot reshard from %s: %s", layout.describe(), exc)
        return None

    def _try(self, layout: Layout) -> Resharding:
        sources: list[PeerPlan] = []
        try:
            for rank in sorted(layout.ranks):
                source = self._first_of(layout.ranks[rank])
                if source is not None:
                    sources.append(source)
            if not sources:
                raise NoSourceAvailable(f"no rank of {layout.describe()} could be handshaken")
            with PhaseTimer(self.seconds, "handshake"):
                checked = plan(_target_entries(self.tensor_set), {s.worker_id: s.manifest.tensors for s in sources})
                parts = checked.parts(self.settings.chunk_bytes, MAX_PIECES_PER_PART)
        except BaseException:
            for source in sources:
                source.release()
            raise
        used = []
        for source in sources:
            source.holds = checked.holds(source.worker_id)
            if source.holds:
                used.append(source)
            else:
                source.release()  # holds nothing this load needs
        self.record(
            f"resharding from {layout.describe()}: {len(parts)} parts from {len(used)} of its ranks "
            f"({checked.nbytes} bytes planned)"
        )
        log.info("resharding from %s: %d parts from %d ranks", layout.describe(), len(parts), len(used))
        found = Resharding(layout, checked, parts, used, self.tensor_set, self.transport)
        try:
            with PhaseTimer(self.seconds, "handshake"):
                found.stage()
        except BaseException:
            found.release()
            raise
        return found

    def _first_of(self, refs: list[SourceRef]) -> PeerPlan | None:
        for ref in refs:
            if ref.worker_id == self.worker_id:
                continue
            try:
                return self._handshake(ref)
            except SOURCE_FAILURES as exc:
                self.record(f"source {ref.worker_id}: {type(exc).__name__}: {exc}")
        return None

    def _handshake(self, ref: SourceRef) -> PeerPlan:
        worker_id = ref.worker_id
        with PhaseTimer(self.seconds, "handshake"):
            record = self.client.get_metadata(ref.mx_source_id, worker_id)
            if record is None:
                raise NoSourceAvailable(f"source {worker_id} vanished before the transfer")
            if record.kind == MODELEXPRESS:
                raise LayoutMismatch(["a ModelExpress seed publishes no layout: it cannot be resharded"], worker_id)
            seed = SeedClient(record.manifest_endpoint, worker_id, self.settings.rpc_timeout_s, self.security)
            try:
                manifest = seed.manifest()
                peer = EndpointInfo(
                    agent_name=record.agent_name,
                    nixl_metadata=record.nixl_metadata,
                    transfer_engine_session_id=record.transfer_engine_session_id,
                )
                if peer.transport != self.transport.kind:
                    raise LayoutMismatch([f"source uses transport {peer.transport}, we use {self.transport.kind}"])
                if self.settings.verify_checksums and not manifest.verifiable():
                    raise ChecksumMismatch(["(source published no usable part checksums)"], source=worker_id)
                lease = seed.acquire_lease(self.worker_id)
            except BaseException:
                seed.close()
                raise
        host = split_host_port(record.manifest_endpoint)[0]
        stats = SourceStats(worker_id, peer.transport, describe_path(peer.transport, host))
        return PeerPlan(worker_id=worker_id, peer=peer, manifest=manifest, seed=seed, lease=lease, stats=stats)


def _target_entries(tensor_set: TensorSet) -> list[TensorEntry]:
    """The load's tensors, aliases (tied weights: one region span under two names) once."""
    seen: set[tuple[str, int, int]] = set()
    out = []
    for entry in tensor_set.entries:
        key = (entry.region, entry.storage_offset, entry.nbytes)
        if key not in seen:
            seen.add(key)
            out.append(entry)
    return out


def merge_ranges(ranges: list[tuple[str, int, int]]) -> list[tuple[str, int, int]]:
    """(region, offset, size) ranges with each one adjacent to the previous merged into it.

    A digest of ranges in order is a digest of their bytes one after another, so the merged list
    digests to the same value; a row-parallel box read out of contiguous source memory is then
    one range instead of one per row (a small DigestRanges request, a short loop at the seed).
    """
    out: list[tuple[str, int, int]] = []
    for region, offset, size in ranges:
        if out and out[-1][0] == region and out[-1][1] + out[-1][2] == offset:
            out[-1] = (region, out[-1][1], out[-1][2] + size)
        else:
            out.append((region, offset, size))
    return out
