"""Transports by name: `create_transport("nixl" | "transfer_engine", name, **options)`.

A third transport is one new module with a `Transport` subclass plus one line in
`peerload.components.TRANSPORTS`. Modules are imported only when chosen, so a missing optional
package fails at configuration time with the pip extra to install, not at `import peerload`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from peerload.advertise import advertise_host
from peerload.components import TRANSPORTS, resolve
from peerload.errors import ConfigError
from peerload.settings import Settings
from peerload.transport._memory import populate_supported, prefault
from peerload.transport.base import EndpointInfo, ProgressCallback, ReadOp, Region, Transport, tensor_region


def transport_class(kind: str) -> type[Transport]:
    """The class for `kind`, importing its module.

    Raises:
        ConfigError: unknown kind.
        MissingExtraError: its package is not installed.
    """
    return resolve(TRANSPORTS, kind, "transport")


def create_transport(kind: str, name: str, **options: Any) -> Transport:
    """Create an endpoint of transport `kind` named `name` (options: see each class).

    Raises:
        ConfigError: unknown kind or option.
        MissingExtraError: the transport's package is not installed.
        TransportError: the data plane failed to start.
    """
    # Each subclass takes (name, **its own options); the base class declares no constructor.
    cls: Callable[..., Transport] = transport_class(kind)
    try:
        return cls(name, **options)
    except TypeError as e:
        if "unexpected keyword argument" in str(e):
            raise ConfigError(f"invalid option for transport {kind!r}: {e}") from e
        raise


def make_transport(settings: Settings, name: str) -> Transport:
    """The configured transport endpoint, reachable at the host peers are told to use.

    A NIXL endpoint runs its listen thread (on `settings.metadata_port`, 0 = a free one), which
    ModelExpress readers of a seed and reads from ModelExpress P2P seeds both need.
    """
    options: dict[str, object] = {"chunk_bytes": settings.chunk_bytes}
    if settings.transport == "transfer_engine":
        options["host"] = advertise_host(settings)
    if settings.transport == "nixl":
        options["listen_port"] = settings.metadata_port
        options["push"] = settings.nixl_push
    return create_transport(settings.transport, name=name, **options)


__all__ = [
    "EndpointInfo",
    "ProgressCallback",
    "ReadOp",
    "Region",
    "Transport",
    "create_transport",
    "make_transport",
    "populate_supported",
    "prefault",
    "tensor_region",
    "transport_class",
]
