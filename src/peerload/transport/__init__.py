"""Transports by name: `create_transport("nixl" | "transfer_engine", name, **options)`.

A third transport is one new module with a `Transport` subclass plus one `_REGISTRY` line.
Modules are imported only when chosen, so a missing optional package fails at configuration
time with the pip extra to install, not at `import peerload`.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any

from peerload.errors import ConfigError, MissingExtraError
from peerload.transport._memory import Prefault, populate_supported, prefault, prefault_async
from peerload.transport.base import EndpointInfo, ProgressCallback, ReadOp, Region, Transport, tensor_region


@dataclass(frozen=True)
class TransportSpec:
    """Where a transport lives and what to pip-install when its package is missing."""

    module: str
    cls: str
    package: str
    extra: str


_REGISTRY: dict[str, TransportSpec] = {
    "nixl": TransportSpec("peerload.transport.nixl", "NixlTransport", "nixl-cu12", "nixl"),
    "transfer_engine": TransportSpec(
        "peerload.transport.mooncake", "MooncakeTransport", "mooncake-transfer-engine-non-cuda", "mooncake"
    ),
}


def available_transports() -> list[str]:
    """Every registered transport kind (installed or not)."""
    return sorted(_REGISTRY)


def register_transport(kind: str, spec: TransportSpec) -> None:
    """Add or replace a transport kind (plugins, tests)."""
    _REGISTRY[kind] = spec


def transport_class(kind: str) -> type[Transport]:
    """The class for `kind`, importing its module.

    Raises:
        ConfigError: unknown kind.
        MissingExtraError: its package is not installed.
    """
    spec = _REGISTRY.get(kind)
    if spec is None:
        raise ConfigError(f"transport {kind!r} is not supported; choose one of {available_transports()}")
    try:
        module = importlib.import_module(spec.module)
    except MissingExtraError:
        raise
    except ImportError as e:
        raise MissingExtraError(f"the {kind} transport", spec.package, spec.extra) from e
    return getattr(module, spec.cls)


def create_transport(kind: str, name: str, **options: Any) -> Transport:
    """Create an endpoint of transport `kind` named `name` (options: see each class).

    Raises:
        ConfigError: unknown kind or option.
        MissingExtraError: the transport's package is not installed.
        TransportError: the data plane failed to start.
    """
    cls = transport_class(kind)
    try:
        return cls(name, **options)
    except TypeError as e:
        if "unexpected keyword argument" in str(e):
            raise ConfigError(f"invalid option for transport {kind!r}: {e}") from e
        raise


__all__ = [
    "EndpointInfo",
    "Prefault",
    "ProgressCallback",
    "ReadOp",
    "Region",
    "Transport",
    "TransportSpec",
    "available_transports",
    "create_transport",
    "populate_supported",
    "prefault",
    "prefault_async",
    "register_transport",
    "tensor_region",
]
