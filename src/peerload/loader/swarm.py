"""Fan-out: which sources a load may read (READY, then still loading) and serving while loading.

A target that is loading publishes itself INITIALIZING (readers that list only READY sources,
like the official ModelExpress loaders, never pick it) and serves only the parts whose checksum
matched here; it turns READY when every part is verified.
"""

from __future__ import annotations

import zlib

from peerload.client import CoordinatorClient, SourceRef, SourceStatus
from peerload.identity import SourceIdentity
from peerload.loader.selection import order_sources
from peerload.manifest import Manifest
from peerload.seed.availability import PartAvailability
from peerload.seed.publisher import Publisher
from peerload.settings import Settings
from peerload.tensors import TensorSet
from peerload.transport.base import Transport


def list_candidates(
    client: CoordinatorClient, identity: SourceIdentity, rank: int, exclude: set[str], loading: bool
) -> tuple[list[SourceRef], list[SourceRef]]:
    """(READY sources, sources still loading), each least loaded first; the second is empty without `loading`."""
    ready = order_sources(client.list_sources(identity, status=SourceStatus.READY, worker_rank=rank), exclude=exclude)
    if not loading:
        return ready, []
    partial = client.list_sources(identity, status=SourceStatus.INITIALIZING, worker_rank=rank)
    return ready, order_sources(partial, exclude=exclude | {r.worker_id for r in ready})


def part_order_seed(worker_id: str) -> int:
    """This load's own part order (by worker id), so targets that start together ask for different parts."""
    return zlib.crc32(worker_id.encode())


def serve_while_loading(
    tensor_set: TensorSet,
    identity: SourceIdentity,
    settings: Settings,
    *,
    rank: int,
    worker_id: str,
    transport: Transport,
    plan_of: Manifest,
) -> Publisher:
    """Publish this loading target INITIALIZING with `plan_of`'s part plan and checksums, serving nothing yet.

    Raises:
        PeerloadError: the coordinator refused the publication or the server could not start.
    """
    availability = PartAvailability(len(plan_of.parts()))
    return Publisher(
        tensor_set,
        identity,
        rank=rank,
        settings=settings,
        worker_id=worker_id,
        transport=transport,
        part_sums=(plan_of.part_bytes, list(plan_of.part_checksums)),
        availability=availability,
    )
