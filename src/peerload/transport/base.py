"""The data-plane interface every transport implements (one module per transport)."""

from __future__ import annotations

import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import torch

from peerload.components import transport_of
from peerload.devices import device_id_of
from peerload.errors import ConfigError, TransferCancelled, TransferTimeout

ProgressCallback = Callable[[int], None]  # called with the bytes completed since the last call


@dataclass(frozen=True)
class ReadLimits:
    """What bounds one `Transport.read`, and whom it tells: the implementations' view of its options."""

    timeout_s: float
    deadline: float  # time.monotonic() by which the read must be done
    progress: ProgressCallback | None = None
    cancel: threading.Event | None = None
    last: bool = True  # no further read from this peer follows soon

    def check(self, peer: str) -> None:
        """Raise if the caller cancelled or the deadline passed."""
        if self.cancel is not None and self.cancel.is_set():
            raise TransferCancelled("read cancelled", peer)
        if time.monotonic() >= self.deadline:
            raise TransferTimeout(f"read not done within {self.timeout_s:g} s", peer)


@dataclass(frozen=True)
class Region:
    """A registered contiguous byte range a peer may READ (becomes a TensorDescriptor)."""

    name: str
    addr: int
    size: int
    device_id: int
    dtype: str  # e.g. "torch.bfloat16"


@dataclass(frozen=True)
class EndpointInfo:
    """What a peer needs to reach an endpoint: its NIXL metadata (the blob, or the HOST:PORT of the
    agent's listen thread to fetch it from) or its TransferEngine session, never both kinds."""

    agent_name: str
    nixl_metadata: bytes | None = None
    transfer_engine_session_id: str | None = None
    metadata_endpoint: str | None = None  # NIXL listen thread (ModelExpress P2P metadata mode)

    @property
    def transport(self) -> str:
        """ "nixl", "transfer_engine" or "" (see `components.transport_of`)."""
        return transport_of(self.nixl_metadata, self.transfer_engine_session_id, self.metadata_endpoint or "")


@dataclass(frozen=True)
class ReadOp:
    """Copy `size` bytes from the peer's `remote_addr` into our `local_addr`."""

    remote_addr: int
    local_addr: int
    size: int
    remote_device: int = 0
    local_device: int = 0
    # "cpu" | "cuda": where the peer's bytes live (TensorDescriptor carries no memory kind)
    remote_memory: str = "cpu"


class Transport(ABC):
    """One endpoint of a data plane: registers local memory, serves it, and READs from peers.

    A seed registers its tensors and exports `EndpointInfo`; serving needs no further calls.
    A target registers its destination tensors and calls `read` with (remote -> local) ranges.
    """

    kind: str  # "nixl" | "transfer_engine"
    # Port of a listen thread that hands this endpoint's metadata to peers that ask (NIXL's, for
    # ModelExpress readers), or None.
    metadata_port: int | None = None

    @abstractmethod
    def register(self, tensors: Mapping[str, torch.Tensor]) -> list[Region]:
        """Register contiguous tensors (refuses non-contiguous ones); returns one Region each."""

    @abstractmethod
    def deregister(self, names: Sequence[str]) -> None:
        """Stop serving and release the named registrations (unknown names are ignored)."""

    @abstractmethod
    def endpoint_info(self) -> EndpointInfo:
        """Metadata peers need to connect to this endpoint; call again after (de)registering.

        On a seed this also starts serving (NIXL: a low-CPU polling thread) until `close()`.
        """

    def connect(self, peer: EndpointInfo) -> None:
        """Optionally connect to `peer` ahead of `read` (overlaps the handshake with other work).

        Raises:
            PeerMetadataError: the peer's metadata is corrupt or for another transport.
            TransportError: the peer cannot be reached.
        """

    def read(
        self,
        peer: EndpointInfo,
        ops: Sequence[ReadOp],
        *,
        timeout_s: float,
        progress: ProgressCallback | None = None,
        cancel: threading.Event | None = None,
        last: bool = True,
    ) -> None:
        """READ every op from `peer` in batches of about `chunk_bytes`; zero-byte ops are skipped.

        `progress` is called after each completed batch with its byte count. Local ranges must
        lie in memory registered on this endpoint. `last=False` says more reads from `peer` follow
        soon (a striped load reads part by part): the seed keeps serving it at full speed.

        Raises:
            PeerMetadataError: the peer's metadata is corrupt or for another transport.
            TransferTimeout: not done within `timeout_s` (the peer is forgotten).
            TransferCancelled: `cancel` was set (the peer is forgotten).
            TransportError: the transfer failed, e.g. the peer died; names the peer.
        """
        limits = ReadLimits(timeout_s, time.monotonic() + timeout_s, progress, cancel, last)
        self._read(peer, ops, limits)

    @abstractmethod
    def _read(self, peer: EndpointInfo, ops: Sequence[ReadOp], limits: ReadLimits) -> None:
        """`read`, with its options in one object."""

    def health(self) -> str | None:
        """Why this endpoint cannot serve peers now (e.g. its serving thread died), or None if it can.

        A seed heartbeats STALE instead of READY while this returns a reason.
        """
        return None

    def settle(self, timeout_s: float) -> bool:
        """Wait until no failed or timed-out `read` can still write into local memory.

        Returns False if one may still write after `timeout_s`: the destination must then be
        given up, never rolled back and reused.
        """
        return True

    @abstractmethod
    def close(self) -> None:
        """Deregister everything and release the endpoint; idempotent."""

    def __enter__(self) -> Transport:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def tensor_region(name: str, tensor: torch.Tensor) -> Region:
    """The Region covering a contiguous tensor's bytes; refuses non-contiguous tensors."""
    if not tensor.is_contiguous():
        raise ConfigError(
            f"tensor {name!r} is not contiguous (shape {tuple(tensor.shape)}, strides "
            f"{tensor.stride()}): register its contiguous storage, e.g. tensor.contiguous()"
        )
    return Region(name, tensor.data_ptr(), tensor.nbytes, device_id_of(tensor.device), str(tensor.dtype))
