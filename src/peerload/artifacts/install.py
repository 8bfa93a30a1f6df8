"""Fetching an artifact from a peer and installing it into a cache directory, atomically and checked.

Order, so a cache is never half-written and never holds unchecked bytes: (1) the destination
must be absent or an empty directory, else the engine's own cache is kept (skipped); (2) a READY
source of the same identity (stamp included) is found, and near misses are reported with the
stamp field that differs and both values; (3) its manifest tables are checked against each other
and the published artifact id; (4) every chunk is read into memory and its CRC32C checked, then
every file's; (5) the archive's members are checked, then unpacked into a hidden staging
directory beside the destination; (6) that directory is renamed onto the destination in one step.
Any failure removes the staging directory; the outcome (installed, skipped, failed, and why) is
logged and returned for the load report.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path, PurePosixPath
from typing import Any

import torch

from peerload._gen.model_express import p2p_pb2 as pb
from peerload._grpc import ChannelSecurity
from peerload.artifacts import archive
from peerload.artifacts.client import ArtifactClient
from peerload.artifacts.kinds import kind_name
from peerload.artifacts.manifest import check_served, crc32c_combine, crc32c_extend
from peerload.artifacts.source import BUNDLE_FILE
from peerload.artifacts.stamp import STAMP_EXTRA_PREFIX, STAMP_FIELDS, describe, mismatches, stamp_of
from peerload.client import CoordinatorClient, SourceStatus
from peerload.errors import (
    ArtifactRejected,
    CoordinatorError,
    PeerloadError,
    ServiceError,
    TransferTimeout,
    TransportError,
)
from peerload.identity import SourceIdentity
from peerload.settings import Settings
from peerload.transport import make_transport, prefault
from peerload.transport.base import EndpointInfo, ReadOp, Transport
from peerload.wire import WorkerRecord

log = logging.getLogger(__name__)

INSTALLED, SKIPPED, FAILED = "installed", "skipped", "failed"
_BATCH = 4  # chunk leases held at once (requested together)
_PIECE = 16 << 20  # bytes per READ: a piece is checksummed while the next one is read
_MAX_CANDIDATES = 32  # records looked at per discovery


@dataclass
class ArtifactOutcome:
    """What happened to one artifact (a load report's `artifacts` entry)."""

    kind: str
    status: str  # installed | skipped | failed
    reason: str
    destination: str
    source: str = ""  # worker id of the peer it came from
    artifact_id: str = ""
    bytes: int = 0
    files: int = 0
    seconds: float = 0.0
    gbps: float = 0.0
    transfer_seconds: float = 0.0
    mismatches: list[dict[str, str]] = field(default_factory=list)  # field, source, here
    attempts: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def fetch_artifact(
    identity: SourceIdentity,
    destination: str | Path,
    *,
    settings: Settings,
    limits: archive.ArchiveLimits = archive.DEFAULT_LIMITS,
    client: CoordinatorClient | None = None,
) -> ArtifactOutcome:
    """Install the artifact of `identity` (kind and stamp included) from a READY peer into `destination`.

    Never raises for a peer's fault: a missing, mismatched, tampered or unreachable source gives
    an outcome with status "skipped" or "failed" and the reason, and `destination` is untouched.

    Args:
        identity: the wanted artifact (see `artifact_identity`).
        destination: the cache directory to create; installed only if absent or empty.
        settings: coordinator, TLS and tokens, timeouts.
        limits: how large the unpacked artifact may be.
    """
    started = time.perf_counter()
    kind = kind_name(identity.mx_source_type)
    dest = Path(destination)
    outcome = ArtifactOutcome(kind, SKIPPED, "", str(dest))
    if _holds_cache(dest):
        outcome.reason = f"{dest} already holds a cache; peerload never replaces an existing one"
        return _done(outcome, started)
    own = client is None
    client = client or CoordinatorClient.from_settings(settings)
    try:
        exact, near = _discover(client, identity)
    except CoordinatorError as exc:
        outcome.status, outcome.reason = FAILED, f"cannot list artifact sources: {exc}"
        return _done(outcome, started)
    finally:
        if own:
            client.close()
    if not exact:
        if near:
            record, differences = near[0]
            outcome.reason = f"environment mismatch with {record.worker_id}: {describe(differences)}"
            outcome.mismatches = [{"field": f, "source": s, "here": h} for f, s, h in differences]
        else:
            outcome.reason = f"no READY {kind} source of {identity.model_name} ({identity.source_id()})"
        return _done(outcome, started)
    security = ChannelSecurity.from_settings(settings)
    for record in exact[: settings.max_source_attempts]:
        try:
            bundle, transfer_s = _transfer(record, settings, security, limits)
            outcome.source, outcome.artifact_id = record.worker_id, record.artifact.artifact_id  # type: ignore[union-attr]
            outcome.bytes, outcome.transfer_seconds = len(bundle), transfer_s
            outcome.gbps = len(bundle) / transfer_s / 1e9 if transfer_s > 0 else 0.0
            outcome.files = _install(bundle, dest, record.worker_id, limits)
            outcome.status, outcome.reason = INSTALLED, f"from {record.worker_id}"
            return _done(outcome, started)
        except _Occupied as exc:
            outcome.status, outcome.reason = SKIPPED, str(exc)
            return _done(outcome, started)
        except (ArtifactRejected, ServiceError, TransportError, OSError) as exc:
            outcome.attempts.append(f"{record.worker_id}: {exc}")
            log.warning("artifact from %s not installed: %s", record.worker_id, exc)
    outcome.status = FAILED
    outcome.reason = f"every source failed ({len(outcome.attempts)}); last: {outcome.attempts[-1]}"
    return _done(outcome, started)


def _done(outcome: ArtifactOutcome, started: float) -> ArtifactOutcome:
    outcome.seconds = time.perf_counter() - started
    level = logging.INFO if outcome.status != FAILED else logging.WARNING
    log.log(level, "%s artifact %s -> %s: %s", outcome.kind, outcome.status, outcome.destination, outcome.reason)
    return outcome


class _Occupied(PeerloadError):
    """The destination gained a cache while we were fetching (the engine's own wins)."""


def _holds_cache(dest: Path) -> bool:
    if dest.is_symlink() or (dest.exists() and not dest.is_dir()):
        return True
    return dest.is_dir() and any(dest.iterdir())


# -- discovery ------------------------------------------------------------------------------------


def _same_but_stamp(a: SourceIdentity, b: SourceIdentity) -> bool:
    """Equal identities when the environment stamp is left out (case-insensitive, as hashed)."""

    def strip(i: SourceIdentity) -> SourceIdentity:
        extra = {k.lower(): v.lower() for k, v in i.extra_parameters.items() if not k.startswith(STAMP_EXTRA_PREFIX)}
        blank: dict[str, Any] = {k: "" for k in STAMP_FIELDS}
        return replace(i, extra_parameters=extra, model_name=i.model_name.lower(), **blank)

    return strip(a).source_id() == strip(b).source_id()


def _discover(
    client: CoordinatorClient, identity: SourceIdentity
) -> tuple[list[WorkerRecord], list[tuple[WorkerRecord, list[tuple[str, str, str]]]]]:
    """READY artifact sources of exactly `identity`, and those differing only in their stamp."""
    wanted = identity.source_id()
    exact: list[WorkerRecord] = []
    near: list[tuple[WorkerRecord, list[tuple[str, str, str]]]] = []
    refs = client.list_sources(model_name=identity.model_name, status=SourceStatus.READY)
    refs.sort(key=lambda r: (r.mx_source_id != wanted, r.source_load or 0.0))
    for ref in refs[:_MAX_CANDIDATES]:
        if exact and ref.mx_source_id != wanted:
            break  # the exact ones come first; near misses are only reported when there is none
        record = client.get_metadata(ref.mx_source_id, ref.worker_id)
        if record is None or record.artifact is None or not record.worker_grpc_endpoint:
            continue
        if record.mx_source_id == wanted:
            exact.append(record)
        elif record.identity is not None and _same_but_stamp(record.identity, identity):
            near.append((record, mismatches(stamp_of(record.identity), stamp_of(identity))))
    return exact, near


# -- transfer -------------------------------------------------------------------------------------


def _transfer(
    record: WorkerRecord, settings: Settings, security: ChannelSecurity, limits: archive.ArchiveLimits
) -> tuple[memoryview, float]:
    """The artifact's one archive from `record`'s source, every chunk and the file checksummed;
    (its bytes, seconds of the transfer phase: from holding the first batch of chunk leases to the
    last check, the phase the weights path times after its handshake took its lease)."""
    assert record.artifact is not None
    name = record.artifact.artifact_id[:12]
    with ArtifactClient(
        record.worker_grpc_endpoint, record.mx_source_id, record.artifact.artifact_id, settings.rpc_timeout_s, security
    ) as rpc:
        header = rpc.header()
        if header.total_size > limits.max_total_bytes:
            raise ArtifactRejected(
                name, f"is {header.total_size} bytes (limit max_total_bytes={limits.max_total_bytes})"
            )
        chunks = rpc.chunks(header.chunk_count)
        manifest = check_served(header, chunks, record.artifact.artifact_id)
        archive_file = _primary_file(manifest.files, name)
        mine = [c for c in chunks if c.file_index == archive_file.file_index]
        return _read_chunks(rpc, header, mine, archive_file, settings, name)


def _primary_file(files: Sequence[pb.ArtifactManifestFile], name: str) -> pb.ArtifactManifestFile:
    """The bundle's `artifact.tar` (the one file peerload and ModelExpress cache artifacts carry)."""
    wanted = PurePosixPath(BUNDLE_FILE).name
    found = [f for f in files if PurePosixPath(f.path).name == wanted]
    if len(found) != 1 or len(files) != 1:
        raise ArtifactRejected(name, f"holds files {[f.path for f in files]}; expected exactly one {wanted}")
    return found[0]


def _read_chunks(
    rpc: ArtifactClient,
    header: pb.GetArtifactManifestHeaderResponse,
    chunks: Sequence[pb.ArtifactManifestChunk],
    file: pb.ArtifactManifestFile,
    settings: Settings,
    name: str,
) -> tuple[memoryview, float]:
    """READ every chunk into one registered buffer, `_BATCH` leases requested at once, piece by
    piece; a thread computes each piece's CRC32C while the next piece is read. Every chunk is
    checked, then the file (its CRC32C combined from the chunks', so the bytes are read once)."""
    buffer = torch.empty(max(file.size, 1), dtype=torch.uint8)
    prefault([buffer])  # a cold page costs more than its bytes on the wire (docs/transport.md)
    transport = make_transport(settings, "peerload-artifact-reader")
    releases: list[Callable[[], object]] = []
    try:
        base = transport.register({"artifact": buffer})[0].addr
        view = buffer.numpy().data
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="peerload-artifact-crc") as hashing:
            started = 0.0
            deadline = time.monotonic() + settings.transfer_timeout_s
            sums: list[list[Future[int]]] = []  # per chunk, its pieces' CRC32C
            for start in range(0, len(chunks), _BATCH):
                batch = chunks[start : start + _BATCH]
                leases = _take_leases(rpc, batch, name)
                started = started or time.perf_counter()
                try:
                    peer = EndpointInfo(header.agent_name, nixl_metadata=leases[0].source_metadata)
                    for lease, chunk in zip(leases, batch, strict=True):
                        final = chunk is chunks[-1]
                        sums.append(_read_chunk(transport, peer, lease, chunk, base, view, hashing, deadline, final))
                finally:
                    releases.extend(rpc.release_async(lease.lease_id) for lease in leases)
            whole = 0
            for chunk, pieces in zip(chunks, sums, strict=True):
                crc = 0
                for offset, piece in zip(range(0, chunk.length, _PIECE), pieces, strict=True):
                    crc = crc32c_combine(crc, piece.result(), min(_PIECE, chunk.length - offset))
                if f"{crc:08x}" != chunk.checksum:
                    raise ArtifactRejected(
                        name, f"chunk {chunk.chunk_index} crc32c {crc:08x}, manifest says {chunk.checksum}"
                    )
                whole = crc32c_combine(whole, crc, chunk.length)
            if f"{whole:08x}" != file.checksum:
                raise ArtifactRejected(name, f"file {file.path} crc32c {whole:08x}, manifest says {file.checksum}")
            seconds = time.perf_counter() - started
    finally:
        for release in releases:
            try:
                release()
            except ServiceError as exc:  # it lapses on the source by itself
                log.debug("releasing a chunk lease: %s", exc)
        transport.close()
    return view[: file.size], seconds


def _take_leases(
    rpc: ArtifactClient, batch: Sequence[pb.ArtifactManifestChunk], name: str
) -> list[pb.PrepareArtifactChunkResponse]:
    """One lease per chunk of `batch`, all requested at once; if one is refused, the others are
    given back and the refusal raised."""
    answers = [rpc.prepare_async(chunk.chunk_index) for chunk in batch]
    leases: list[pb.PrepareArtifactChunkResponse] = []
    failure: PeerloadError | None = None
    for answer, chunk in zip(answers, batch, strict=True):
        try:
            lease = answer()
        except ServiceError as exc:
            failure = failure or exc
            continue
        leases.append(lease)
        if failure is None and (lease.chunk != chunk or lease.source.length != chunk.length):
            failure = ArtifactRejected(name, f"lease for chunk {chunk.chunk_index} describes another chunk")
    if failure is not None:
        for lease in leases:
            try:
                rpc.release(lease.lease_id)
            except ServiceError as exc:
                log.debug("releasing chunk lease %s: %s", lease.lease_id, exc)
        raise failure
    return leases


def _read_chunk(
    transport: Transport,
    peer: EndpointInfo,
    lease: pb.PrepareArtifactChunkResponse,
    chunk: pb.ArtifactManifestChunk,
    base: int,
    view: memoryview,
    hashing: ThreadPoolExecutor,
    deadline: float,
    final: bool,
) -> list[Future[int]]:
    """READ one leased chunk in pieces of `_PIECE` bytes; each piece's CRC32C is computed on
    `hashing` while the next one is read. `final`: this is the artifact's last chunk."""
    pieces: list[Future[int]] = []
    for offset in range(0, chunk.length, _PIECE):
        size = min(_PIECE, chunk.length - offset)
        left = deadline - time.monotonic()
        if left <= 0:
            raise TransferTimeout("the artifact's transfer timeout (transfer_timeout_s) passed", peer.agent_name)
        local = chunk.file_offset + offset
        op = ReadOp(lease.source.addr + offset, base + local, size, lease.source.device_id)
        transport.read(peer, [op], timeout_s=left, last=final and offset + size >= chunk.length)
        pieces.append(hashing.submit(crc32c_extend, 0, view[local : local + size]))
    return pieces


# -- install --------------------------------------------------------------------------------------


def _install(bundle: memoryview, dest: Path, source: str, limits: archive.ArchiveLimits) -> int:
    """Unpack into a staging directory beside `dest`, then rename it onto `dest`; the files written."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{dest.name}.peerload-", dir=dest.parent))
    try:
        files = archive.unpack(bundle, staging, f"from {source}", limits)
        os.chmod(staging, 0o755)
        if dest.is_dir() and not any(dest.iterdir()):
            try:
                dest.rmdir()
            except OSError:
                pass
        try:
            os.rename(staging, dest)  # atomic: the cache appears whole or not at all
        except OSError as exc:
            raise _Occupied(f"{dest} gained a cache while the artifact was fetched ({exc.strerror}); kept it") from None
        return files
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
