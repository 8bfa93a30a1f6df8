"""peerload: load model weights peer-to-peer from running inference instances.

Public API: `publish` (seed side), `load_into` (target side), `Settings`, `SourceIdentity`,
`ArtifactSource` / `fetch_artifact` (compile caches as artifact sources), and the exceptions in
`peerload.errors`. Heavy modules (torch, transports) load on first use.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from peerload.errors import (
    ArtifactRejected,
    ChecksumMismatch,
    ConfigError,
    CoordinatorError,
    CoordinatorUnavailable,
    LayoutMismatch,
    LoadFailed,
    MissingExtraError,
    NoSourceAvailable,
    PeerloadError,
    TransportError,
)
from peerload.identity import BackendFramework, SourceIdentity, worker_rank
from peerload.settings import Settings

__version__ = "0.1.0"

_LAZY = {
    "publish": "peerload.seed.publisher",
    "Publisher": "peerload.seed.publisher",
    "load_into": "peerload.loader",
    "LoadResult": "peerload.loader",
    "CoordinatorClient": "peerload.client",
    "ArtifactSource": "peerload.artifacts",
    "artifact_identity": "peerload.artifacts",
    "fetch_artifact": "peerload.artifacts",
}

if TYPE_CHECKING:
    from peerload.artifacts import ArtifactSource, artifact_identity, fetch_artifact
    from peerload.client import CoordinatorClient
    from peerload.loader import LoadResult, load_into
    from peerload.seed.publisher import Publisher, publish


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'peerload' has no attribute {name!r}")


__all__ = [
    "ArtifactRejected",
    "ArtifactSource",
    "BackendFramework",
    "ChecksumMismatch",
    "ConfigError",
    "CoordinatorClient",
    "CoordinatorError",
    "CoordinatorUnavailable",
    "LayoutMismatch",
    "LoadFailed",
    "LoadResult",
    "MissingExtraError",
    "NoSourceAvailable",
    "PeerloadError",
    "Publisher",
    "Settings",
    "SourceIdentity",
    "TransportError",
    "artifact_identity",
    "fetch_artifact",
    "load_into",
    "publish",
    "worker_rank",
]
