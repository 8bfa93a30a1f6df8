"""The data-plane interface every transport implements (one module per transport)."""

from __future__ import annotations

import threading
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import torch

ProgressCallback = Callable[[int], None]  # called with the bytes completed since the last call


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
    """What a peer needs to reach this endpoint: exactly one of the two is set (the protocol oneof)."""

    agent_name: str
    nixl_metadata: bytes | None = None
    transfer_engine_session_id: str | None = None

    @property
    def transport(self) -> str:
        return "nixl" if self.nixl_metadata is not None else "transfer_engine"


@dataclass(frozen=True)
class ReadOp:
    """Copy `size` bytes from the peer's `remote_addr` into our `local_addr`."""

    remote_addr: int
    local_addr: int
    size: int
    remote_device: int = 0
    local_device: int = 0


class Transport(ABC):
    """One endpoint of a data plane: registers local memory, serves it, and READs from peers.

    A seed registers its tensors and exports `EndpointInfo`; serving needs no further calls.
    A target registers its destination tensors and calls `read` with (remote -> local) ranges.
    """

    kind: str  # "nixl" | "transfer_engine"

    @abstractmethod
    def register(self, tensors: Mapping[str, torch.Tensor]) -> list[Region]:
        """Register contiguous tensors (refuses non-contiguous ones); returns one Region each."""

    @abstractmethod
    def endpoint_info(self) -> EndpointInfo:
        """Metadata peers need to connect to this endpoint."""

    @abstractmethod
    def read(
        self,
        peer: EndpointInfo,
        ops: Sequence[ReadOp],
        *,
        timeout_s: float,
        progress: ProgressCallback | None = None,
        cancel: threading.Event | None = None,
    ) -> None:
        """READ every op from `peer` (batched); raises TransportError/TransferTimeout/TransferCancelled."""

    @abstractmethod
    def close(self) -> None:
        """Deregister everything and release the endpoint; idempotent."""

    def __enter__(self) -> Transport:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
