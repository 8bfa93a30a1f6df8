"""Hypothesis-driven fuzzing of every peerload service over real gRPC, and of manifests a target reads.

Each run sends a fixed number of messages (well-formed requests with hostile values, undecodable
bytes) and counts the status codes; a code outside the allowed set, a server that stops answering,
or a stored record that changed is a failure, recorded in `FuzzReport.unexpected`.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from concurrent import futures
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import grpc

from peerload._gen.model_express import p2p_pb2 as pb
from peerload._gen.peerload.v1 import seed_pb2, seed_pb2_grpc
from peerload.client import CoordinatorClient, SourceStatus, WorkerInfo
from peerload.errors import InvalidManifest, MissingExtraError, PeerloadError, SeedServiceError
from peerload.identity import SourceIdentity, new_worker_id
from peerload.limits import SEED_MAX_REQUEST_BYTES
from peerload.manifest import Manifest
from peerload.seed_client import SeedClient, fetch_manifest

_RPC_TIMEOUT_S = 10.0
_ACTIVE_WAIT_S = 10.0  # open leases reach the coordinator with the seed's next heartbeat
# A code outside these is a failure: INTERNAL means a bug; UNAVAILABLE a server that went away.
ALLOWED_CODES = frozenset({"OK", "INVALID_ARGUMENT", "NOT_FOUND", "RESOURCE_EXHAUSTED"})


@dataclass
class FuzzReport:
    """What one service answered to `messages` fuzzed messages."""

    service: str
    messages: int = 0
    codes: dict[str, int] = field(default_factory=dict)
    unexpected: list[str] = field(default_factory=list)  # must stay empty
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return not self.unexpected


def _hypothesis() -> Any:
    try:
        import hypothesis
    except ImportError as e:
        raise MissingExtraError("fuzzing (peerload chaos)", "hypothesis", "chaos") from e
    return hypothesis


def _draw(strategy: Any, count: int, seed: int) -> Iterator[Any]:
    """`count` examples of `strategy`, reproducible from `seed` (generation only: no shrinking)."""
    hyp = _hypothesis()
    drawn = rounds = 0
    batch: list[Any] = []
    while drawn < count:
        want = count - drawn
        batch.clear()

        @hyp.seed(seed + rounds)
        @hyp.settings(
            max_examples=want,
            database=None,
            deadline=None,
            phases=[hyp.Phase.generate],
            suppress_health_check=list(hyp.HealthCheck),
        )
        @hyp.given(strategy)
        def collect(example: Any) -> None:
            batch.append(example)

        collect()
        rounds += 1
        if not batch:
            return
        examples = batch[:want]
        drawn += len(examples)
        yield from examples


def _texts(st: Any) -> Any:
    """Short strings, empty ones, very long ones and odd code points."""
    return st.one_of(st.text(max_size=24), st.just(""), st.text(min_size=500, max_size=1200), st.just("\x00\ud7ff"))


def coordinator_requests() -> Any:
    """(method, request bytes) for P2pService: hostile field values and undecodable bytes."""
    st = _hypothesis().strategies
    text = _texts(st)
    enum = st.integers(-3, 12)
    u32 = st.integers(0, 2**32 - 1)
    identities = st.builds(
        pb.SourceIdentity,
        model_name=text,
        mx_version=text,
        dtype=text,
        revision=text,
        mx_source_type=enum,
        backend_framework=enum,
        tensor_parallel_size=u32,
        pipeline_parallel_size=u32,
        extra_parameters=st.dictionaries(text, text, max_size=3),
    )
    descriptors = st.builds(
        pb.TensorDescriptor, name=text, addr=st.integers(0, 2**64 - 1), size=st.integers(0, 2**64 - 1), dtype=text
    )
    workers = st.builds(
        pb.WorkerMetadata,
        worker_rank=u32,
        status=enum,
        agent_name=text,
        nixl_metadata=st.binary(max_size=64),
        worker_grpc_endpoint=text,
        topology=st.dictionaries(text, text, max_size=2),
        tensor_source=st.builds(pb.TensorSourceMetadata, tensors=st.lists(descriptors, max_size=4)),
    )
    requests = st.one_of(
        st.tuples(
            st.just("PublishMetadata"),
            st.builds(pb.PublishMetadataRequest, identity=identities, worker=workers, worker_id=text),
        ),
        st.tuples(
            st.just("ListSources"),
            st.builds(
                pb.ListSourcesRequest,
                identity=st.one_of(st.none(), identities),
                status_filter=st.one_of(st.none(), enum),
                model_name_filter=st.one_of(st.none(), text),
                worker_rank_filter=st.one_of(st.none(), u32),
                limit=st.one_of(st.none(), st.integers(0, 2**32 - 1)),
                min_updated_at=st.one_of(st.none(), st.integers(-(2**63), 2**63 - 1)),
                min_training_step=st.one_of(st.none(), st.integers(0, 2**64 - 1)),
            ),
        ),
        st.tuples(st.just("GetMetadata"), st.builds(pb.GetMetadataRequest, mx_source_id=text, worker_id=text)),
        st.tuples(
            st.just("UpdateStatus"),
            st.builds(
                pb.UpdateStatusRequest,
                mx_source_id=text,
                worker_id=text,
                status=enum,
                worker_rank=u32,
                source_load=st.one_of(st.none(), st.floats(allow_nan=True, allow_infinity=True)),
            ),
        ),
    ).map(lambda pair: (pair[0], pair[1].SerializeToString()))
    methods = st.sampled_from(["PublishMetadata", "ListSources", "GetMetadata", "UpdateStatus"])
    garbage = st.tuples(methods, st.binary(max_size=512))
    return st.one_of(requests, requests, garbage)


def seed_requests() -> Any:
    """(method, request bytes) for SeedService: odd worker ids, garbage, requests past the limit."""
    st = _hypothesis().strategies
    request = st.builds(seed_pb2.GetManifestRequest, worker_id=_texts(st)).map(lambda r: r.SerializeToString())
    normal = st.one_of(request, request, st.binary(max_size=512))
    oversized = st.just(b"x" * (SEED_MAX_REQUEST_BYTES + 16))
    # One message in 200 is past the receive limit: enough to see RESOURCE_EXHAUSTED, cheap to send.
    data = st.integers(0, 199).flatmap(lambda n: oversized if n == 0 else normal)
    return st.tuples(st.just("GetManifest"), data)


def manifests() -> Any:
    """Manifest messages with hostile layouts (what a broken or hostile seed could answer)."""
    st = _hypothesis().strategies
    text = st.one_of(st.sampled_from(["a", "b", "c", ""]), st.text(max_size=8))
    i64 = st.integers(-(2**63), 2**63 - 1)
    u64 = st.integers(0, 2**64 - 1)
    small = st.lists(st.integers(-4, 2**40), max_size=4)
    tensors = st.builds(
        seed_pb2.TensorEntry,
        name=text,
        shape=small,
        stride=small,
        dtype=st.sampled_from(["torch.float32", "torch.bfloat16", "", "bogus"]),
        nbytes=u64,
        storage_offset=i64,
        region=text,
    )
    regions = st.builds(seed_pb2.RegionEntry, name=text, size=u64, addr=u64, device_id=st.integers(0, 2**32 - 1))
    return st.builds(
        seed_pb2.Manifest,
        worker_id=st.sampled_from(["w", "x", ""]),
        checksum_algorithm=st.sampled_from(["xxh3_64", "", "md5"]),
        tensors=st.lists(tensors, max_size=5),
        regions=st.lists(regions, max_size=5),
        # the part plan: sizes below a page, huge ones, and checksum lists that may not fit it
        part_bytes=st.one_of(st.just(0), st.sampled_from([4096, 1 << 20]), u64),
        part_checksums=st.lists(st.sampled_from(["0123456789abcdef", "", "x"]), max_size=4),
    )


def _send_all(
    service: str,
    address: str,
    examples: Iterator[tuple[str, Any]],
    book: _LeaseBook | None = None,
    allowed: frozenset[str] = ALLOWED_CODES,
) -> FuzzReport:
    """Send each (method, bytes or message); count the codes; `book` tracks the leases granted."""
    report = FuzzReport(service=service)
    codes: Counter[str] = Counter()
    started = time.perf_counter()
    with grpc.insecure_channel(address, options=[("grpc.max_send_message_length", 64 << 20)]) as channel:
        methods: dict[str, Callable[..., Any]] = {}
        for method, payload in examples:
            if method not in methods:
                methods[method] = channel.unary_unary(f"/{service}/{method}")
            data = payload if isinstance(payload, bytes) else (book.outgoing(payload) if book else payload)
            if not isinstance(data, bytes):
                data = data.SerializeToString()
            reply = b""
            try:
                reply = methods[method](data, timeout=_RPC_TIMEOUT_S)
                code = "OK"
            except grpc.RpcError as exc:
                code = exc.code().name
            codes[code] += 1
            report.messages += 1
            if code not in allowed and len(report.unexpected) < 20:
                report.unexpected.append(f"{method}({data[:64]!r}... {len(data)} bytes) -> {code}")
            if book is not None and code == "OK":
                book.answered(method, payload, reply, report)
    report.codes = dict(codes)
    report.seconds = time.perf_counter() - started
    return report


# Stands for "a lease id this run was granted": filled in when the request is sent, so that
# fuzzing also releases real leases (and a release of one it no longer holds is a plain miss).
GRANTED = "\x00granted"
_GRANTS: dict[str, Any] = {
    "AcquireLease": seed_pb2.AcquireLeaseResponse,
    "PrepareTensorRead": pb.PrepareTensorReadResponse,
}
_RELEASES = ("ReleaseLease", "ReleaseTensorRead")


class _LeaseBook:
    """The leases one fuzzing run holds: never more than `max_readers`, each known until released."""

    def __init__(self, max_readers: int) -> None:
        self.max_readers = max_readers
        self.held: list[str] = []

    def outgoing(self, message: Any) -> Any:
        if getattr(message, "lease_id", None) == GRANTED:
            copy = type(message)()
            copy.CopyFrom(message)
            copy.lease_id = self.held[-1] if self.held else "none-held"
            return copy
        return message

    def answered(self, method: str, message: Any, reply: bytes, report: FuzzReport) -> None:
        if method in _GRANTS:
            self.held.append(_GRANTS[method].FromString(reply).lease_id)
            if self.max_readers and len(self.held) > self.max_readers and len(report.unexpected) < 20:
                report.unexpected.append(f"{len(self.held)} leases granted at once; the cap is {self.max_readers}")
        elif method in _RELEASES and getattr(message, "lease_id", None) == GRANTED and self.held:
            released = seed_pb2.ReleaseLeaseResponse.FromString(reply).released if method == "ReleaseLease" else True
            lease = self.held.pop()
            if not released and len(report.unexpected) < 20:
                report.unexpected.append(f"lease {lease} was granted to this run but unknown at its release")


def lease_requests(worker_id: str) -> Any:
    """(method, request) for SeedService AcquireLease/ReleaseLease: the real worker id or odd ones."""
    st = _hypothesis().strategies
    text = _texts(st)
    acquire = st.builds(seed_pb2.AcquireLeaseRequest, worker_id=st.one_of(st.just(worker_id), text), reader=text)
    release = st.builds(seed_pb2.ReleaseLeaseRequest, lease_id=st.one_of(st.just(GRANTED), text))
    garbage = st.tuples(st.sampled_from(["AcquireLease", "ReleaseLease"]), st.binary(max_size=512))
    return st.one_of(st.tuples(st.just("AcquireLease"), acquire), st.tuples(st.just("ReleaseLease"), release), garbage)


WORKER_METHODS = tuple(pb.DESCRIPTOR.services_by_name["WorkerService"].methods_by_name)


def worker_requests(source_id: str, worker_id: str) -> Any:
    """(method, request) for WorkerService: tensor manifest, read leases, artifact RPCs, garbage."""
    st = _hypothesis().strategies
    text = _texts(st)
    u32 = st.integers(0, 2**32 - 1)
    sid = st.one_of(st.just(source_id), text)
    wid = st.one_of(st.none(), st.just(worker_id), text)
    lease = st.one_of(st.just(GRANTED), text)

    def tensor_rpc(method: str, kind: Any, **fields: Any) -> Any:
        return st.tuples(st.just(method), st.builds(kind, mx_source_id=sid, worker_id=wid, **fields))

    def artifact_rpc(method: str, kind: Any, **fields: Any) -> Any:
        return st.tuples(st.just(method), st.builds(kind, mx_source_id=sid, artifact_id=text, **fields))

    tensor_rpcs = st.one_of(
        tensor_rpc("GetTensorManifest", pb.GetTensorManifestRequest),
        tensor_rpc("PrepareTensorRead", pb.PrepareTensorReadRequest),
        tensor_rpc("ReleaseTensorRead", pb.ReleaseTensorReadRequest, lease_id=lease),
    )
    return st.one_of(
        tensor_rpcs,  # twice: the RPCs with state behind them get most of the messages
        tensor_rpcs,
        artifact_rpc("GetArtifactManifestHeader", pb.GetArtifactManifestHeaderRequest),
        artifact_rpc(
            "GetArtifactManifestChunks", pb.GetArtifactManifestChunksRequest, start_chunk_index=u32, max_chunks=u32
        ),
        artifact_rpc("PrepareArtifactChunk", pb.PrepareArtifactChunkRequest, chunk_index=u32),
        artifact_rpc("ReleaseArtifactChunk", pb.ReleaseArtifactChunkRequest, lease_id=text),
        st.tuples(st.sampled_from(WORKER_METHODS), st.binary(max_size=512)),
    )


SENTINEL = SourceIdentity(model_name="peerload-chaos/sentinel", dtype="float32")


def fuzz_coordinator(address: str, messages: int, seed: int = 0) -> FuzzReport:
    """Send `messages` fuzzed P2pService requests; a sentinel worker published first must not change.

    The coordinator's GC timeout must outlast the run, or the reaper itself removes the sentinel.
    """
    with CoordinatorClient(address, timeout_s=_RPC_TIMEOUT_S, retries=2) as client:
        worker_id = new_worker_id(0)
        sid = client.publish(SENTINEL, WorkerInfo(rank=0, agent_name="sentinel", nixl_metadata=b"md"), worker_id)
        before = client.get_metadata(sid, worker_id)
        report = _send_all("model_express.p2p.P2pService", address, _draw(coordinator_requests(), messages, seed))
        try:
            after = client.get_metadata(sid, worker_id)
            if after != before:
                report.unexpected.append(f"the sentinel record changed: {before} -> {after}")
            if not client.health_check():
                report.unexpected.append("the coordinator reports NOT_SERVING after fuzzing")
            probe = new_worker_id(0)
            client.publish(SENTINEL, WorkerInfo(rank=0), probe)
            if not client.update_status(sid, probe, 0, SourceStatus.READY):
                report.unexpected.append("a heartbeat after fuzzing was refused")
        except PeerloadError as exc:
            report.unexpected.append(f"the coordinator no longer answers after fuzzing: {exc}")
    return report


def _check_manifest_kept(report: FuzzReport, endpoint: str, worker_id: str, before: Manifest) -> None:
    """The seed still answers, with the manifest it served before fuzzing."""
    try:
        if fetch_manifest(endpoint, worker_id, _RPC_TIMEOUT_S) != before:
            report.unexpected.append("the seed's manifest changed")
    except PeerloadError as exc:
        report.unexpected.append(f"the seed no longer answers after fuzzing: {exc}")


def fuzz_seed(endpoint: str, worker_id: str, messages: int, seed: int = 0) -> FuzzReport:
    """Send `messages` fuzzed SeedService requests; the manifest it serves must not change."""
    before = fetch_manifest(endpoint, worker_id, _RPC_TIMEOUT_S)
    report = _send_all("peerload.v1.SeedService", endpoint, _draw(seed_requests(), messages, seed))
    _check_manifest_kept(report, endpoint, worker_id, before)
    return report


# WorkerService refuses a request for another source or worker as the official seed does
# (FAILED_PRECONDITION), and the artifact RPCs it does not serve with UNIMPLEMENTED.
WORKER_ALLOWED_CODES = ALLOWED_CODES | {"FAILED_PRECONDITION", "UNIMPLEMENTED"}
_WORKER_SERVICE = "model_express.p2p.WorkerService"
ActiveLeases = Callable[[], int] | None  # the seed's open leases, when the caller can see them


def fuzz_leases(
    endpoint: str, worker_id: str, messages: int, seed: int = 0, *, max_readers: int, active: ActiveLeases = None
) -> FuzzReport:
    """Send `messages` fuzzed AcquireLease/ReleaseLease requests to a seed (cap `max_readers`).

    Fuzzing may take leases, never more than the cap; afterwards each one it still holds is
    released, a real reader gets and ends a lease, the manifest is unchanged, and `active()` (the
    seed's open leases) is back to 0.
    """
    before = fetch_manifest(endpoint, worker_id, _RPC_TIMEOUT_S)
    book = _LeaseBook(max_readers)
    report = _send_all("peerload.v1.SeedService", endpoint, _draw(lease_requests(worker_id), messages, seed), book)
    _check_after_leases(report, endpoint, worker_id, book, active)
    _check_undecodable(report, endpoint, "peerload.v1.SeedService", ("GetManifest", "AcquireLease", "ReleaseLease"))
    _check_manifest_kept(report, endpoint, worker_id, before)
    return report


def fuzz_worker(
    endpoint: str,
    source_id: str,
    worker_id: str,
    messages: int,
    seed: int = 0,
    *,
    max_readers: int,
    active: ActiveLeases = None,
) -> FuzzReport:
    """Send `messages` fuzzed WorkerService requests; the tensor manifest must not change, and leases
    are checked as in `fuzz_leases` (the two services share one lease table)."""
    request = pb.GetTensorManifestRequest(mx_source_id=source_id, worker_id=worker_id).SerializeToString()
    before = _raw(endpoint, f"/{_WORKER_SERVICE}/GetTensorManifest", request)
    book = _LeaseBook(max_readers)
    examples = _aimed(_draw(worker_requests(source_id, worker_id), messages, seed), source_id, worker_id)
    report = _send_all(_WORKER_SERVICE, endpoint, examples, book, allowed=WORKER_ALLOWED_CODES)
    _check_after_leases(report, endpoint, worker_id, book, active)
    _check_undecodable(report, endpoint, _WORKER_SERVICE, WORKER_METHODS)
    try:
        if _raw(endpoint, f"/{_WORKER_SERVICE}/GetTensorManifest", request) != before:
            report.unexpected.append("the seed's tensor manifest (GetTensorManifest) changed")
    except grpc.RpcError as exc:
        report.unexpected.append(f"the seed no longer answers GetTensorManifest after fuzzing: {exc.code().name}")
    return report


def _aimed(examples: Iterator[tuple[str, Any]], source_id: str, worker_id: str) -> Iterator[tuple[str, Any]]:
    """Every other tensor request names the real source and worker: hypothesis rarely draws both,
    and leases are only really taken (and the cap reached) with them."""
    for i, (method, payload) in enumerate(examples):
        if i % 2 and not isinstance(payload, bytes) and "worker_id" in payload.DESCRIPTOR.fields_by_name:
            payload.mx_source_id, payload.worker_id = source_id, worker_id
        yield method, payload


def _raw(endpoint: str, path: str, data: bytes) -> bytes:
    with grpc.insecure_channel(endpoint) as channel:
        reply: bytes = channel.unary_unary(path)(data, timeout=_RPC_TIMEOUT_S)
        return reply


# Field 1, length-delimited, its length varint cut short: no protobuf parser accepts it.
UNDECODABLE = b"\x0a\xff"


def _check_undecodable(report: FuzzReport, endpoint: str, service: str, methods: Iterable[str]) -> None:
    """Bytes no request parses from must be answered INVALID_ARGUMENT on every method."""
    with grpc.insecure_channel(endpoint) as channel:
        for method in methods:
            try:
                channel.unary_unary(f"/{service}/{method}")(UNDECODABLE, timeout=_RPC_TIMEOUT_S)
                code = "OK"
            except grpc.RpcError as exc:
                code = exc.code().name
            if code != "INVALID_ARGUMENT":
                report.unexpected.append(f"{method} answered undecodable bytes with {code}, not INVALID_ARGUMENT")


def _check_after_leases(
    report: FuzzReport, endpoint: str, worker_id: str, book: _LeaseBook, active: ActiveLeases
) -> None:
    """Release what fuzzing still holds; a real reader must then get a lease, and none stay open."""
    try:
        with SeedClient(endpoint, worker_id, _RPC_TIMEOUT_S) as client:
            for lease in book.held:
                if not client.release_lease(lease):
                    report.unexpected.append(f"lease {lease} granted during fuzzing was unknown at its release")
            book.held.clear()
            lease_id = client.acquire_lease("after-fuzzing")
            if not lease_id or not client.release_lease(lease_id):
                report.unexpected.append("a real reader could not take and end a lease after fuzzing")
    except PeerloadError as exc:
        report.unexpected.append(f"a real reader was refused after fuzzing: {exc}")
        return
    if active is not None:
        deadline = time.monotonic() + _ACTIVE_WAIT_S
        while (left := active()) and time.monotonic() < deadline:
            time.sleep(0.1)
        if left:
            report.unexpected.append(f"{left} lease(s) still open after fuzzing released its own")


class _QueueServicer(seed_pb2_grpc.SeedServiceServicer):
    """A SeedService whose GetManifest answers the message set in `reply` (a hostile seed)."""

    def __init__(self) -> None:
        self.reply = seed_pb2.Manifest()

    def GetManifest(self, request: Any, context: Any) -> seed_pb2.Manifest:
        return self.reply


@contextmanager
def _hostile_seed() -> Iterator[tuple[str, _QueueServicer]]:
    servicer = _QueueServicer()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    seed_pb2_grpc.add_SeedServiceServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield f"127.0.0.1:{port}", servicer
    finally:
        server.stop(0)


def fuzz_manifests(messages: int, seed: int = 0) -> FuzzReport:
    """A target reads `messages` fuzzed manifests: each is accepted or refused as InvalidManifest."""
    report = FuzzReport(service="target: manifests read from a seed")
    codes: Counter[str] = Counter()
    started = time.perf_counter()
    with _hostile_seed() as (endpoint, servicer):
        for message in _draw(manifests(), messages, seed):
            servicer.reply = message
            try:
                got = fetch_manifest(endpoint, "w", _RPC_TIMEOUT_S)
                outcome = "accepted" if isinstance(got, Manifest) else type(got).__name__
            except InvalidManifest as exc:
                outcome = f"InvalidManifest:{exc.field.split('.')[-1]}"
            except SeedServiceError as exc:
                outcome = f"SeedServiceError:{exc.code}"
            except Exception as exc:  # anything else is a crash of the target's parsing
                outcome = f"crash:{type(exc).__name__}"
                if len(report.unexpected) < 20:
                    report.unexpected.append(f"{message!r:.200} -> {type(exc).__name__}: {exc}")
            codes[outcome] += 1
            report.messages += 1
    report.codes = dict(codes)
    report.seconds = time.perf_counter() - started
    return report
