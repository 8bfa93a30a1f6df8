"""Mooncake TransferEngine transport: tcp protocol, P2P handshake (no metadata server)."""

from __future__ import annotations

import bisect
import importlib.metadata
import logging
import os
import socket
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import torch

from peerload._address import split_host_port
from peerload.devices import memory_of
from peerload.errors import (
    ConfigError,
    MissingExtraError,
    PeerMetadataError,
    TransferTimeout,
    TransportError,
)
from peerload.transport._plan import plan_batches
from peerload.transport._refcount import RangeUsers
from peerload.transport.base import EndpointInfo, ReadLimits, ReadOp, Region, Transport, tensor_region

log = logging.getLogger(__name__)

_PROBE_TIMEOUT_S = 2.0  # health(): connecting to our own handshake port


def _import_engine() -> Any:
    # Mooncake logs every INFO line (and a benign "Local segment descriptor not found" ERROR) to
    # stderr; keep errors only unless the user chose a level.
    os.environ.setdefault("MC_LOG_LEVEL", "ERROR")
    try:
        from mooncake.engine import TransferEngine
    except ImportError as e:
        # Also raised when Debian's libibverbs1 is missing ("libibverbs.so.1"): say so.
        hint = " (and Debian's libibverbs1)" if "libibverbs" in str(e) else ""
        raise MissingExtraError(
            f"the transfer_engine transport{hint}", "mooncake-transfer-engine-non-cuda", "mooncake"
        ) from e
    return TransferEngine


# Imported when this module is (i.e. when the transport is chosen), so a missing package or
# library fails at configuration time.
TransferEngine = _import_engine()


# Mooncake's wheels that are built with CUDA (the only ones that register GPU memory).
_CUDA_BUILDS = ("mooncake-transfer-engine", "mooncake-transfer-engine-cuda13")


def _cuda_build() -> bool:
    """Whether the installed Mooncake wheel is a CUDA build."""
    for name in _CUDA_BUILDS:
        try:
            importlib.metadata.distribution(name)
        except importlib.metadata.PackageNotFoundError:
            continue
        return True
    return False


def gpu_memory_problem(devices: Iterable[torch.device], cuda_build: bool) -> str | None:
    """Why these tensors cannot be registered with this Mooncake build, or None if they can."""
    gpus = sorted({str(d) for d in devices if memory_of(d) == "cuda"})
    if not gpus or cuda_build:
        return None
    return (
        f"tensors on {', '.join(gpus)}: the installed Mooncake build "
        "(mooncake-transfer-engine-non-cuda) cannot register GPU memory; install the CUDA build "
        "(pip install mooncake-transfer-engine, or mooncake-transfer-engine-cuda13) or use transport nixl"
    )


def _default_host() -> str:
    """This host's outward address (no packet is sent), else its resolved name, else loopback."""
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.connect(("10.255.255.255", 1))
            return s.getsockname()[0]
    except OSError:
        pass
    try:
        return socket.gethostbyname(socket.gethostname())
    except OSError:
        return "127.0.0.1"


# How long close() waits for one batch read in flight before treating it as stalled.
_CLOSE_WAIT_S = 30.0


class MooncakeTransport(Transport):
    """A TransferEngine over tcp; the engine's own threads serve peers (no polling needed).

    Options:
        loopback: advertise 127.0.0.1 (single-host tests).
        host: the address peers use to reach this engine (default: this host's address).
        protocol: Mooncake transport protocol (default "tcp"; "rdma" needs RDMA NICs).
        chunk_bytes: bytes per batch; larger tensors are split (0 = one batch).
    """

    kind = "transfer_engine"

    def __init__(
        self,
        name: str,
        *,
        loopback: bool = False,
        host: str | None = None,
        protocol: str = "tcp",
        chunk_bytes: int = 64 << 20,
    ) -> None:
        self.name = name
        self._host = host or ("127.0.0.1" if loopback else _default_host())
        self._chunk_bytes = chunk_bytes
        self._engine = TransferEngine()
        rc = self._engine.initialize(self._host, "P2PHANDSHAKE", protocol, "")
        if rc != 0:
            raise TransportError(f"TransferEngine.initialize({self._host!r}, {protocol!r}) returned {rc}")
        self.session_id = f"{self._host}:{self._engine.get_rpc_port()}"
        self._users: RangeUsers[int] = RangeUsers(self._unregister)  # keyed by registration address
        self._spans: list[tuple[int, int]] = []  # sorted (start, end) of registrations
        self._protocol = protocol
        # One engine serialises the batches of concurrent reads, so each further peer read at
        # the same time (a striped load) gets an engine of its own, with the same registrations.
        self._readers: dict[str, Any] = {}  # peer session -> the engine that reads from it
        self._readers_lock = threading.Lock()
        # Helper threads of reads that timed out: the engine cannot cancel a batch, so each may
        # still write into local memory until it returns.
        self._stalled: list[threading.Thread] = []
        self._in_flight: set[threading.Thread] = set()  # batch reads running now (see close())
        self._closed = False

    def register(self, tensors: Mapping[str, torch.Tensor]) -> list[Region]:
        self._check_open()
        problem = gpu_memory_problem((t.device for t in tensors.values()), _cuda_build())
        if problem:
            raise ConfigError(problem)
        regions = [tensor_region(n, t) for n, t in tensors.items()]
        # The engine refuses overlapping registrations: a range inside a registered one (a view
        # of a flat buffer) borrows it, so register the largest ranges first.
        owner: dict[str, int] = {}
        fresh: dict[int, int] = {}
        for r in sorted(regions, key=lambda r: -r.size):
            if r.size == 0:
                continue
            i = bisect.bisect_right(self._spans, (r.addr, float("inf"))) - 1
            if i >= 0 and r.addr + r.size <= self._spans[i][1]:
                owner[r.name] = self._spans[i][0]
                continue
            nxt = self._spans[i + 1][0] if i + 1 < len(self._spans) else float("inf")
            if (i >= 0 and self._spans[i][1] > r.addr) or nxt < r.addr + r.size:
                raise TransportError(f"tensor {r.name!r} partly overlaps registered memory")
            bisect.insort(self._spans, (r.addr, r.addr + r.size))
            fresh[r.addr] = r.size
            owner[r.name] = r.addr
        if fresh:
            rc = 0
            for engine in self._engines():
                rc = rc or engine.batch_register_memory(list(fresh), list(fresh.values()))
            if rc != 0:
                self._spans = [s for s in self._spans if s[0] not in fresh]
                raise TransportError(f"TransferEngine.batch_register_memory of {len(fresh)} regions returned {rc}")
        for r in regions:
            self._users.use(r.name, owner.get(r.name))
        return regions

    def deregister(self, names: Sequence[str]) -> None:
        self._check_open()
        for name in names:
            self._users.forget(name)

    def _unregister(self, addr: int) -> None:
        """Unregister the registration starting at `addr` (its last user is gone)."""
        self._spans = [s for s in self._spans if s[0] != addr]
        for engine in self._engines():
            rc = engine.unregister_memory(addr)
            if rc != 0:
                log.warning("TransferEngine.unregister_memory of 0x%x returned %d", addr, rc)

    def _engines(self) -> list[Any]:
        """The serving engine and every extra reading engine."""
        return [self._engine, *(e for e in self._readers.values() if e is not self._engine)]

    def _reader_for(self, session: str) -> Any:
        """The engine that reads from `session`: the main one first, then one per extra peer."""
        with self._readers_lock:
            engine = self._readers.get(session)
            if engine is not None:
                return engine
            if self._engine not in self._readers.values():
                engine = self._engine
            else:
                engine = TransferEngine()
                rc = engine.initialize(self._host, "P2PHANDSHAKE", self._protocol, "")
                spans = [(a, b - a) for a, b in self._spans]
                if rc == 0 and spans:
                    rc = engine.batch_register_memory([a for a, _ in spans], [n for _, n in spans])
                if rc != 0:
                    raise TransportError(f"an extra TransferEngine for reading {session} failed to start ({rc})")
            self._readers[session] = engine
            return engine

    def endpoint_info(self) -> EndpointInfo:
        self._check_open()
        return EndpointInfo(agent_name=self.name, transfer_engine_session_id=self.session_id)

    def connect(self, peer: EndpointInfo) -> None:
        self._session(peer)  # validation only: the engine handshakes on the first transfer

    def _session(self, peer: EndpointInfo) -> str:
        who = peer.agent_name or peer.transfer_engine_session_id or None
        session = peer.transfer_engine_session_id
        if session is None:
            raise PeerMetadataError(f"peer publishes {peer.transport} metadata, not transfer_engine", who)
        try:
            split_host_port(session, what="TransferEngine session id")
        except ConfigError as e:
            raise PeerMetadataError(str(e), who) from e
        return session

    def _read(self, peer: EndpointInfo, ops: Sequence[ReadOp], limits: ReadLimits) -> None:
        self._check_open()
        session = self._session(peer)
        who = f"{peer.agent_name}@{session}" if peer.agent_name else session
        for batch in plan_batches(ops, self._chunk_bytes):
            limits.check(who)
            remaining = limits.deadline - time.monotonic()
            rc = self._read_batch(session, batch.ops, remaining, limits.timeout_s, who)
            if rc < 0:
                raise TransportError(f"TransferEngine read of {batch.nbytes} bytes returned {rc}", who)
            if limits.progress is not None:
                limits.progress(batch.nbytes)

    def _read_batch(self, session: str, ops: list[ReadOp], budget_s: float, timeout_s: float, who: str) -> int:
        """One blocking batch read, in a helper thread so a stalled peer cannot outlast the timeout."""
        result: list[int] = []
        engine = self._reader_for(session)

        def run() -> None:
            try:
                result.append(
                    engine.batch_transfer_sync_read(
                        session,
                        [op.local_addr for op in ops],
                        [op.remote_addr for op in ops],
                        [op.size for op in ops],
                    )
                )
            except Exception as e:
                log.debug("TransferEngine read raised: %s", e)
                result.append(-1)

        worker = threading.Thread(target=run, name="peerload-te-read", daemon=True)
        self._in_flight.add(worker)
        if self._closed:  # checked after the add, so close() either sees this batch or it never starts
            self._in_flight.discard(worker)
            raise TransportError(f"TransferEngine endpoint {self.name!r} is closed", who)
        worker.start()
        try:
            worker.join(budget_s)
        finally:
            self._in_flight.discard(worker)
        if worker.is_alive():
            self._stalled.append(worker)  # see settle(): it may still land later
            raise TransferTimeout(f"read not done within {timeout_s:g} s", who)
        return result[0]

    def settle(self, timeout_s: float) -> bool:
        deadline = time.monotonic() + timeout_s
        if self._stalled and timeout_s > 0:  # says why a load pauses here
            log.info("waiting up to %g s for %d timed-out batch(es) to finish writing", timeout_s, len(self._stalled))
        for worker in list(self._stalled):
            worker.join(max(0.0, deadline - time.monotonic()))
            if not worker.is_alive():
                self._stalled.remove(worker)
        return not self._stalled

    def health(self) -> str | None:
        if self._closed:
            return f"TransferEngine endpoint {self.name!r} is closed"
        # Peers handshake with the engine on this port before every new session: if it refuses
        # connections, no peer can read from us.
        host, port = split_host_port(self.session_id)
        try:
            with socket.create_connection((host, port), timeout=_PROBE_TIMEOUT_S):
                pass
        except OSError as e:
            return f"the TransferEngine of {self.name!r} does not accept connections on {self.session_id}: {e}"
        return None

    def _check_open(self) -> None:
        if self._closed:
            raise TransportError(f"TransferEngine endpoint {self.name!r} is closed")

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        # A load interrupted in the main thread (Ctrl-C) leaves reader threads inside a batch:
        # unregistering under it is undefined, and a process that exits while the engine's
        # threads still run aborts ("terminate called without an active exception"). So the
        # batches in hand finish first (at wire speed; one batch is at most chunk_bytes).
        for worker in list(self._in_flight):
            worker.join(_CLOSE_WAIT_S)
            if worker.is_alive():
                self._stalled.append(worker)
        if not self.settle(0):
            # Unregistering under a batch the engine still runs is undefined: keep memory and
            # engine (the helper thread holds it) until the process exits.
            log.warning(
                "TransferEngine %r closed with a timed-out read still running; memory stays registered", self.name
            )
            self._engine = None
            return
        addrs = self._users.keys()
        self._users = RangeUsers(self._unregister)
        self._spans = []
        if addrs:
            for engine in self._engines():
                rc = engine.batch_unregister_memory(addrs)
                if rc != 0:
                    log.warning("TransferEngine.batch_unregister_memory returned %d", rc)
        self._readers.clear()
        self._engine = None
