"""Known errors -> one actionable hint (the CLI's edge; tracebacks only with PEERLOAD_DEBUG=1)."""

from __future__ import annotations

from collections.abc import Callable

from peerload.errors import (
    CheckpointError,
    CheckpointMismatch,
    ChecksumMismatch,
    ConfigError,
    CoordinatorError,
    CoordinatorUnavailable,
    DestinationAbandoned,
    FleetUnavailable,
    LayoutMismatch,
    LeaseRefused,
    LoadFailed,
    MissingExtraError,
    PeerloadError,
    SeedServiceError,
    ServiceError,
    TransportError,
    TransportMismatch,
    WorkerSuperseded,
)

_TLS_FAILED = ("handshake", "ssl", "tls", "socket closed")


def _security_hint(error: ServiceError) -> str:
    """What to fix when a service refused our credentials or TLS failed ("" otherwise)."""
    if error.code == "UNAUTHENTICATED":
        return (
            f"the {error.service} requires a bearer token: set PEERLOAD_AUTH_TOKEN_FILE (or MX_AUTH_TOKEN_PATH) "
            "to a file holding one it accepts."
        )
    if error.code == "PERMISSION_DENIED":
        return f"this token may only read; publishing needs one of the {error.service}'s write tokens."
    if error.code in ("UNAVAILABLE", "UNKNOWN") and any(word in error.details.lower() for word in _TLS_FAILED):
        return (
            "if the server uses TLS, set PEERLOAD_TLS_CA to the CA that signed its certificate (and "
            "PEERLOAD_TLS_SERVER_NAME if the certificate names another host); see docs/security.md."
        )
    return ""


def _unavailable(error: PeerloadError) -> str:
    assert isinstance(error, ServiceError)
    where = error.address or "that address"
    return (
        _security_hint(error) or f"is `peerload serve` running at {where}? See --coordinator (or PEERLOAD_COORDINATOR)."
    )


def _refused(error: PeerloadError) -> str:
    assert isinstance(error, ServiceError)
    return _security_hint(error) or "the coordinator refused the request; the message above names the field."


def _seed_failed(error: PeerloadError) -> str:
    assert isinstance(error, ServiceError)
    return (
        _security_hint(error) or "that seed is unreachable or is not a peerload seed; `peerload sources` lists seeds."
    )


# Most specific class first wins (looked up along the exception's MRO).
_HINTS: dict[type[PeerloadError], Callable[[PeerloadError], str]] = {
    CoordinatorUnavailable: _unavailable,
    CoordinatorError: _refused,
    SeedServiceError: _seed_failed,
    CheckpointError: lambda e: (
        "PATH is a .safetensors file or a Hugging Face model directory (config.json and *.safetensors, "
        "plus model.safetensors.index.json when sharded)."
    ),
    MissingExtraError: lambda e: f"install the extra: pip install 'peerload[{getattr(e, 'extra', '')}]'.",
    LayoutMismatch: lambda e: (
        "the seed's tensors differ from this model's: use the same checkpoint and the same "
        "--quantize / --tp-size as the seed."
    ),
    ChecksumMismatch: lambda e: "the bytes read differ from what the seed published; the load was rolled back.",
    TransportError: lambda e: "the data plane failed; check that seed and target can reach each other.",
    TransportMismatch: lambda e: (
        "start the load with the seed's transport (--transport), or seed the model over this load's transport too."
    ),
    CheckpointMismatch: lambda e: (
        "build the class the checkpoint was saved from (--model-class NAME), or accept the difference: "
        "--allow-missing (the model initialises those tensors itself) / --allow-unused (they are ignored)."
    ),
    DestinationAbandoned: lambda e: (
        "a stalled seed may still write into the destination; start a fresh process to load again."
    ),
    LoadFailed: lambda e: getattr(e, "hint", "") or "every way to load failed; each attempt is listed above.",
    LeaseRefused: lambda e: (
        "that seed serves its maximum of readers (PEERLOAD_SEED_MAX_READERS); try again or add seeds."
    ),
    FleetUnavailable: lambda e: (
        "emulated hosts need root and iproute2 (ip, tc); run as root, or without demo's --hosts "
        "(bench fleet and bench fanout always need them)."
    ),
    WorkerSuperseded: lambda e: (
        "two live processes had one --worker-id; this one stopped. Give each its own (or none: a unique "
        "one is generated); a restarted process may reuse its id."
    ),
    ConfigError: lambda e: "see `peerload COMMAND --help` for the options and their values.",
}


def hint_for(error: PeerloadError) -> str:
    """The hint for the most specific known class of `error` ("" if none applies)."""
    for kind in type(error).__mro__:
        if kind in _HINTS:
            return _HINTS[kind](error)
    return ""
