"""Known errors -> one actionable hint (the CLI's edge; tracebacks only with PEERLOAD_DEBUG=1)."""

from __future__ import annotations

from collections.abc import Callable

from peerload.errors import (
    ChecksumMismatch,
    ConfigError,
    CoordinatorError,
    CoordinatorUnavailable,
    DestinationAbandoned,
    LayoutMismatch,
    LoadFailed,
    MissingExtraError,
    PeerloadError,
    SeedServiceError,
    TransportError,
)

# Most specific class first wins (looked up along the exception's MRO).
_HINTS: dict[type[PeerloadError], Callable[[PeerloadError], str]] = {
    CoordinatorUnavailable: lambda e: (
        f"is `peerload serve` running at {getattr(e, 'address', '') or 'that address'}? "
        "See --coordinator (or PEERLOAD_COORDINATOR)."
    ),
    CoordinatorError: lambda e: "the coordinator refused the request; the message above names the field.",
    SeedServiceError: lambda e: "that seed is unreachable or is not a peerload seed; `peerload sources` lists seeds.",
    MissingExtraError: lambda e: f"install the extra: pip install 'peerload[{getattr(e, 'extra', '')}]'.",
    LayoutMismatch: lambda e: (
        "the seed's tensors differ from this model's: use the same checkpoint and the same "
        "--quantize / --tp-size as the seed."
    ),
    ChecksumMismatch: lambda e: "the bytes read differ from what the seed published; the load was rolled back.",
    TransportError: lambda e: "the data plane failed; check that seed and target can reach each other.",
    DestinationAbandoned: lambda e: (
        "a stalled seed may still write into the destination; start a fresh process to load again."
    ),
    LoadFailed: lambda e: "every way to load failed; each attempt is listed above.",
    ConfigError: lambda e: "see `peerload COMMAND --help` for the options and their values.",
}


def hint_for(error: PeerloadError) -> str:
    """The hint for the most specific known class of `error` ("" if none applies)."""
    for kind in type(error).__mro__:
        if kind in _HINTS:
            return _HINTS[kind](error)
    return ""
