"""Which implementations exist, by name: transports and registry stores (a leaf module).

Settings validate names against these tables, and `peerload.transport` / the coordinator's
store package import the chosen module only when it is used, so a missing optional package
fails at configuration time with the pip extra to install.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass

from peerload.errors import ConfigError, MissingExtraError


@dataclass(frozen=True)
class ComponentSpec:
    """Where an implementation lives and what to pip-install when its package is missing."""

    module: str
    cls: str
    package: str  # the third-party distribution it needs ("" = none)
    extra: str  # the peerload extra that installs it ("" = core)


TRANSPORTS: dict[str, ComponentSpec] = {
    "nixl": ComponentSpec("peerload.transport.nixl", "NixlTransport", "nixl", "nixl"),
    "transfer_engine": ComponentSpec(
        "peerload.transport.mooncake", "MooncakeTransport", "mooncake-transfer-engine-non-cuda", "mooncake"
    ),
}


def transport_of(nixl_metadata: bytes | None, transfer_engine_session_id: str | None, metadata_endpoint: str) -> str:
    """Which transport a published endpoint speaks: "nixl" (an agent's metadata blob, or the
    HOST:PORT of its listen thread, as official ModelExpress seeds publish in P2P mode),
    "transfer_engine" (a Mooncake session), or "" when it published neither."""
    if nixl_metadata is not None or metadata_endpoint:
        return "nixl"
    if transfer_engine_session_id is not None:
        return "transfer_engine"
    return ""


STORES: dict[str, ComponentSpec] = {
    "memory": ComponentSpec("peerload.coordinator.store.memory", "MemoryStore", "", ""),
    "redis": ComponentSpec("peerload.coordinator.store.redis", "RedisStore", "redis", "redis"),
}


def choices(table: dict[str, ComponentSpec]) -> str:
    """The names of a table, for error messages ("a, b")."""
    return ", ".join(sorted(table))


def resolve(table: dict[str, ComponentSpec], name: str, what: str) -> type:
    """The class registered as `name`, importing its module.

    Raises:
        ConfigError: unknown name (the message lists the choices).
        MissingExtraError: its package is not installed.
    """
    spec = table.get(name)
    if spec is None:
        raise ConfigError(f"{what} {name!r} is not supported; choose one of {choices(table)}")
    try:
        module = importlib.import_module(spec.module)
    except MissingExtraError:
        raise
    except ImportError as e:
        raise MissingExtraError(f"the {name} {what}", spec.package, spec.extra) from e
    return getattr(module, spec.cls)
