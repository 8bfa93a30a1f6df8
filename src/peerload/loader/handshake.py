"""The handshake with one listed source: its record and manifest, checked against this load, and a lease.

A peerload seed becomes a `PeerPlan` (read by parts, verified); an official ModelExpress seed an
`MxPlan` (read whole, by name, unverified). A source that cannot serve this load raises one of
`SOURCE_FAILURES`, naming why.
"""

from __future__ import annotations

from dataclasses import dataclass

from peerload._grpc import ChannelSecurity
from peerload.client import CoordinatorClient, SourceRef, SourceStatus, WorkerRecord
from peerload.errors import ChecksumMismatch, ConfigError, LayoutMismatch, NoSourceAvailable, TransportMismatch
from peerload.loader import mx_source
from peerload.loader.network import describe_path
from peerload.loader.phases import PhaseTimer
from peerload.loader.striping import PeerPlan, SourceStats
from peerload.manifest import Manifest
from peerload.seed_client import Holdings, SeedClient
from peerload.settings import Settings, split_host_port
from peerload.tensors import TensorSet, check_layout
from peerload.transport.base import EndpointInfo, Transport
from peerload.wire import MODELEXPRESS


@dataclass
class MxPlan:
    """An official ModelExpress seed, handshaken: read by name, whole, without checksums."""

    worker_id: str
    read: mx_source.MxRead
    stats: SourceStats

    def release(self) -> None:
        self.read.release()


Plan = PeerPlan | MxPlan


class Handshake:
    """Handshakes listed sources for one load of `tensor_set`; thread-safe (it keeps no state but timings)."""

    def __init__(
        self,
        client: CoordinatorClient,
        transport: Transport,
        tensor_set: TensorSet,
        settings: Settings,
        security: ChannelSecurity,
        worker_id: str,
        seconds: dict[str, float],
    ) -> None:
        self.client = client
        self.transport = transport
        self.tensor_set = tensor_set
        self.settings = settings
        self.security = security
        self.worker_id = worker_id  # this load's: the one that holds the leases
        self.seconds = seconds

    def __call__(self, ref: SourceRef, parts_of: PeerPlan | None) -> Plan:
        """Fetch the source's record and manifest, refuse it if it differs, then take a read lease.

        With `parts_of` (a striped load under way) only peerload seeds that cut the same parts can join.
        """
        worker_id = ref.worker_id
        with PhaseTimer(self.seconds, "handshake"):
            record = self.client.get_metadata(ref.mx_source_id, worker_id)
            if record is None:
                raise NoSourceAvailable(f"source {worker_id} vanished before the transfer")
            if record.kind == MODELEXPRESS:
                if record.status != SourceStatus.READY:
                    raise NoSourceAvailable(f"source {worker_id} is a ModelExpress seed that is not READY yet")
                if parts_of is not None:
                    raise NoSourceAvailable(f"source {worker_id} is a ModelExpress seed: it cannot join a striped load")
                return self._modelexpress_plan(record)
            seed = SeedClient(record.manifest_endpoint, worker_id, self.settings.rpc_timeout_s, self.security)
            try:
                manifest = seed.manifest()
                peer = EndpointInfo(
                    agent_name=record.agent_name,
                    nixl_metadata=record.nixl_metadata,
                    transfer_engine_session_id=record.transfer_engine_session_id,
                )
                self._check_source(manifest, peer, worker_id, parts_of)
                held = seed.availability(len(manifest.parts())) if manifest.part_bytes else Holdings(0, None)
                if held.parts is not None and parts_of is not None:
                    _check_loading_source(manifest, parts_of, worker_id)
                lease = seed.acquire_lease(self.worker_id)
            except BaseException:
                seed.close()
                raise
        host = split_host_port(record.manifest_endpoint)[0]
        stats = SourceStats(worker_id, peer.transport, describe_path(peer.transport, host))
        return PeerPlan(
            worker_id=worker_id,
            peer=peer,
            manifest=manifest,
            seed=seed,
            lease=lease,
            stats=stats,
            holds=held.parts,
            version=held.version,
        )

    def _check_source(self, manifest: Manifest, peer: EndpointInfo, worker_id: str, parts_of: PeerPlan | None) -> None:
        """Raise unless the source has our transport, our layout and usable part checksums."""
        if peer.transport != self.transport.kind:  # first: the layout does not matter if we cannot read it
            raise TransportMismatch(worker_id, peer.transport, self.transport.kind)
        check_layout(self.tensor_set, manifest, source=worker_id)
        if parts_of is not None and manifest.part_bytes != parts_of.manifest.part_bytes:
            raise LayoutMismatch(
                [
                    f"source cuts parts of {manifest.part_bytes} bytes, this load reads parts of "
                    f"{parts_of.manifest.part_bytes} (give every seed the same chunk_bytes)"
                ],
                worker_id,
            )
        if self.settings.verify_checksums and not manifest.verifiable():
            raise ChecksumMismatch(["(source published no usable part checksums)"], source=worker_id)

    def _modelexpress_plan(self, record: WorkerRecord) -> MxPlan:
        """An official ModelExpress seed: descriptors by name (and a lease), no checksums."""
        read = mx_source.prepare(record, self.tensor_set, self.settings.rpc_timeout_s, self.security)
        try:
            if read.peer.transport != self.transport.kind:
                raise TransportMismatch(record.worker_id, read.peer.transport, self.transport.kind)
            self.transport.connect(read.peer)  # P2P mode: fetches its metadata from the listen thread
        except BaseException:
            read.release()
            raise
        host = _host_of(read.peer.metadata_endpoint or record.worker_grpc_endpoint)
        stats = SourceStats(record.worker_id, read.peer.transport, describe_path(read.peer.transport, host))
        return MxPlan(record.worker_id, read, stats)


def _check_loading_source(manifest: Manifest, parts_of: PeerPlan, worker_id: str) -> None:
    """A source still loading must expect the very part checksums this load expects."""
    if list(manifest.part_checksums) != list(parts_of.manifest.part_checksums):
        raise LayoutMismatch(["source is loading other bytes (its part checksums differ from ours)"], worker_id)


def _host_of(endpoint: str) -> str:
    """The host part of HOST:PORT ("" when there is none)."""
    try:
        return split_host_port(endpoint)[0]
    except ConfigError:
        return ""
