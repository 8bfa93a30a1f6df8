"""Reading an official ModelExpress seed: its descriptors matched to our tensors by name.

Such a seed publishes one descriptor per parameter name (address, bytes, dtype) and no shapes,
strides or checksums. Every local tensor must find its name with the same byte size and dtype,
or the source is refused naming the tensors; the load is then not content-verified.
In P2P metadata mode the descriptors come with a read lease from the seed's WorkerService and
the NIXL agent's metadata from its listen thread; in centralized mode both are in the record.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from peerload._grpc import PLAINTEXT, ChannelSecurity
from peerload.errors import LayoutMismatch, SeedServiceError
from peerload.tensors import TensorSet
from peerload.transport.base import EndpointInfo, ReadOp
from peerload.wire import TensorInfo, WorkerRecord
from peerload.worker_client import WorkerClient

log = logging.getLogger(__name__)

UNVERIFIED = "modelexpress seeds publish no checksums (names, byte sizes and dtypes were checked)"


@dataclass
class MxRead:
    """What to read from an official seed: per local region, the READs that fill it."""

    peer: EndpointInfo
    reads: dict[str, list[ReadOp]]
    release: Callable[[], None]  # ends the read lease (a no-op in centralized mode)

    @property
    def total_bytes(self) -> int:
        return sum(op.size for ops in self.reads.values() for op in ops)


def prepare(
    record: WorkerRecord, tensor_set: TensorSet, timeout_s: float, security: ChannelSecurity = PLAINTEXT
) -> MxRead:
    """Descriptors (and a lease, in P2P mode) from the official seed of `record`, matched to ours.

    Raises:
        SeedServiceError: its WorkerService refused or failed (no lease is left behind).
        LayoutMismatch: a tensor of ours is missing there or differs in byte size or dtype.
    """
    if record.mode == "centralized":
        peer = EndpointInfo(
            record.agent_name,
            nixl_metadata=record.nixl_metadata,
            transfer_engine_session_id=record.transfer_engine_session_id,
        )
        reads = match(tensor_set, record.tensors, _memory(record.accelerator), source=record.worker_id)
        return MxRead(peer, reads, release=lambda: None)
    client = WorkerClient(record.worker_grpc_endpoint, record.mx_source_id, record.worker_id, timeout_s, security)
    try:
        lease_id, manifest = client.prepare_read()
    except BaseException:
        client.close()
        raise

    def release() -> None:
        try:
            client.release_read(lease_id)
        except SeedServiceError as exc:  # it lapses on its own; the bytes are already ours or rolled back
            log.warning("could not release read lease %s at %s: %s", lease_id, client.endpoint, exc)
        finally:
            client.close()

    try:
        memory = _memory(manifest.accelerator or record.accelerator)
        reads = match(tensor_set, manifest.tensors, memory, source=record.worker_id)
    except BaseException:
        release()
        raise
    return MxRead(EndpointInfo(manifest.agent_name, metadata_endpoint=manifest.metadata_endpoint), reads, release)


def match(
    tensor_set: TensorSet, descriptors: Sequence[TensorInfo], remote_memory: str, source: str = ""
) -> dict[str, list[ReadOp]]:
    """One READ per local tensor, grouped by the region it fills; aliases of one range read once.

    Raises:
        LayoutMismatch: naming every local tensor that is missing at the source, differs in byte
            size or dtype, or cannot be filled as one range (not contiguous here).
    """
    theirs = {d.name: d for d in descriptors}
    missing: list[str] = []
    problems: list[str] = []
    reads: dict[str, list[ReadOp]] = {}
    done: set[tuple[int, int]] = set()
    for entry in tensor_set.entries:
        if entry.nbytes == 0:
            continue
        d = theirs.get(entry.name)
        if d is None:
            missing.append(entry.name)
            continue
        if d.size != entry.nbytes:
            problems.append(f"{entry.name}: {d.size} bytes at the source, {entry.nbytes} here")
        if d.dtype != entry.dtype:
            problems.append(f"{entry.name}: dtype is {d.dtype or '(none)'} at the source, {entry.dtype} here")
        local = tensor_set.tensors[entry.name]
        if not local.is_contiguous():
            problems.append(f"{entry.name}: not contiguous here, so one source range cannot fill it")
        key = (local.data_ptr(), entry.nbytes)
        if problems or key in done:
            continue
        done.add(key)
        local_device = (local.device.index or 0) if local.device.type != "cpu" else 0
        op = ReadOp(d.addr, local.data_ptr(), d.size, d.device_id, local_device, remote_memory)
        reads.setdefault(entry.region, []).append(op)
    if missing:
        problems.insert(0, f"source lacks {len(missing)} tensor(s): {', '.join(missing[:5])}")
    if problems:
        raise LayoutMismatch(problems, source=source)
    extra = set(theirs) - {e.name for e in tensor_set.entries}
    if extra:
        log.info("source %s offers %d tensor(s) we do not have, e.g. %s", source, len(extra), sorted(extra)[0])
    return reads


def _memory(accelerator: str) -> str:
    """Where an official seed's bytes live: its descriptors carry no memory kind, its record does."""
    return "cpu" if accelerator == "cpu" else "cuda"
