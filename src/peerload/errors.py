"""Every peerload exception. Each is also a stdlib kind so callers can catch by category."""

from __future__ import annotations

from collections.abc import Sequence


class PeerloadError(Exception):
    """Base of all peerload errors."""


# --- configuration -----------------------------------------------------------------------------


class ConfigError(PeerloadError, ValueError):
    """A setting, option or argument is invalid; the message names it and the fix."""


class CheckpointError(ConfigError):
    """A checkpoint file (safetensors, index or config.json) is missing or unreadable; names the file."""

    def __init__(self, path: object, problem: str) -> None:
        self.path = str(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")


class MissingExtraError(ConfigError, ImportError):
    """An optional component was chosen but its package is not installed."""

    def __init__(self, component: str, package: str, extra: str) -> None:
        self.component = component
        self.package = package
        self.extra = extra
        super().__init__(
            f"{component} needs the Python package '{package}', which is not installed: "
            f"run `pip install 'peerload[{extra}]'`"
        )


# --- coordinator (server side: mapped to gRPC status codes) -------------------------------------


class InvalidRequest(PeerloadError, ValueError):
    """A request to the coordinator is malformed; maps to INVALID_ARGUMENT."""

    def __init__(self, field: str, problem: str) -> None:
        self.field = field
        self.problem = problem
        super().__init__(f"{field}: {problem}")


class NotFound(PeerloadError, LookupError):
    """The requested record does not exist; maps to NOT_FOUND."""


class StoreUnavailable(PeerloadError, ConnectionError):
    """The coordinator's backing store cannot be reached; maps to UNAVAILABLE."""


class LimitExceeded(PeerloadError, OverflowError):
    """A request would take the coordinator past a configured limit; maps to RESOURCE_EXHAUSTED."""

    def __init__(self, setting: str, message: str) -> None:
        self.setting = setting
        super().__init__(f"{message} (limit: setting {setting})")


# --- seed (server side: mapped to gRPC status codes too) --------------------------------------


class Unsupported(PeerloadError, NotImplementedError):
    """The server does not implement what the request asks for; maps to UNIMPLEMENTED."""


class PreconditionFailed(PeerloadError, RuntimeError):
    """The server cannot serve this request as it is now (another source, a transport the reader
    lacks); maps to FAILED_PRECONDITION. The message says why."""


class WorkerSuperseded(PeerloadError, PermissionError):
    """A heartbeat from a process whose worker id another live process has published since (newest
    wins); maps to ALREADY_EXISTS. The message names the worker and where the record points now."""


class ServerClosing(PeerloadError, ConnectionError):
    """The server is shutting down and takes no new work; maps to UNAVAILABLE (try another)."""


# --- client side of peerload's gRPC services ---------------------------------------------------


class ServiceError(PeerloadError, ConnectionError):
    """An RPC failed; carries the RPC name, status code, details and the server's address."""

    service = "service"  # what the server is, for messages

    def __init__(self, rpc: str, code: str, details: str, address: str = "") -> None:
        self.rpc = rpc
        self.code = code
        self.details = details
        self.address = address
        where = f" at {address}" if address else ""
        super().__init__(f"{self.service}{where}: {rpc} failed with {code}: {details}")


class CoordinatorError(ServiceError):
    """An RPC to the coordinator failed."""

    service = "coordinator"


class CoordinatorUnavailable(CoordinatorError):
    """The coordinator cannot be reached (UNAVAILABLE / DEADLINE_EXCEEDED after retries)."""


class SeedServiceError(ServiceError):
    """An RPC to a seed's own service (its manifest) failed: that source is unusable."""

    service = "seed"


class InvalidManifest(SeedServiceError, ValueError):
    """A seed answered with a manifest that is not well-formed; names the first bad field."""

    def __init__(self, field: str, problem: str, address: str = "") -> None:
        self.field = field
        self.problem = problem
        super().__init__("GetManifest", "INVALID_MANIFEST", f"{field}: {problem}", address)


class ArtifactRejected(PeerloadError, ValueError):
    """An artifact failed a check before any of it reached a cache: a checksum, its manifest, an
    unsafe archive member or a size limit; names the artifact and what was wrong."""

    def __init__(self, artifact: str, problem: str) -> None:
        self.artifact = artifact
        self.problem = problem
        super().__init__(f"artifact {artifact}: {problem}")


# --- data plane ---------------------------------------------------------------------------------


class TransportError(PeerloadError, RuntimeError):
    """A transfer or transport operation failed; names the peer when there is one."""

    def __init__(self, message: str, peer: str | None = None) -> None:
        self.peer = peer
        super().__init__(f"{message} (peer {peer})" if peer else message)


class TransportMismatch(TransportError, ValueError):
    """A source serves over another transport than this load reads with (e.g. mooncake vs nixl)."""

    def __init__(self, source: str, source_transport: str, own_transport: str) -> None:
        self.source = source
        self.source_transport = source_transport
        self.own_transport = own_transport
        serves = f"serves over {source_transport}" if source_transport else "published no transport endpoint"
        super().__init__(
            f"transport mismatch: source {source} {serves}, this load reads over "
            f"{own_transport}; give seed and target the same transport (--transport or PEERLOAD_TRANSPORT: "
            "nixl or transfer_engine)"
        )


class TransferTimeout(TransportError, TimeoutError):
    """A transfer did not complete within its timeout."""


class TransferCancelled(TransportError):
    """A transfer was cancelled by the caller."""


class PeerMetadataError(TransportError, ValueError):
    """A peer's transport metadata is corrupt, foreign or for another transport."""


# --- loading ------------------------------------------------------------------------------------


def _some(items: Sequence[str], sep: str = ", ", show: int = 10) -> str:
    """The first `show` items joined by `sep`, and how many more there are."""
    more = f" (and {len(items) - show} more)" if len(items) > show else ""
    return sep.join(items[:show]) + more


class LayoutMismatch(PeerloadError, ValueError):
    """The source's tensors do not match the target's layout; lists what differs."""

    def __init__(self, problems: Sequence[str], source: str = "") -> None:
        self.problems = list(problems)
        self.source = source
        where = f" of source {source}" if source else ""
        super().__init__(f"layout mismatch{where}: {_some(self.problems, '; ')}")


class ChecksumMismatch(PeerloadError, ValueError):
    """Transferred bytes do not match the checksums the seed published."""

    def __init__(self, tensors: Sequence[str], source: str = "") -> None:
        self.tensors = list(tensors)
        self.source = source
        super().__init__(f"checksum mismatch from source {source or '?'} in: {_some(self.tensors, ', ')}")


class CheckpointMismatch(ConfigError):
    """A checkpoint and the model class built for it disagree on tensors (strict disk loading)."""

    def __init__(self, path: str, model_class: str, missing: Sequence[str], unused: Sequence[str]) -> None:
        self.path = path
        self.model_class = model_class
        self.missing = sorted(missing)  # model tensors the checkpoint lacks
        self.unused = sorted(unused)  # checkpoint tensors the model does not use
        parts = []
        if self.missing:
            parts.append(f"{len(self.missing)} tensor(s) of the model are not in it: {_some(self.missing)}")
        if self.unused:
            parts.append(f"{len(self.unused)} tensor(s) in it are not used by the model: {_some(self.unused)}")
        super().__init__(f"checkpoint {path} does not fit {model_class}: {'; '.join(parts)}")


class LeaseRefused(PeerloadError, RuntimeError):
    """A seed granted no read lease: it is at its reader cap or closing; read from another source."""

    def __init__(self, message: str, *, closing: bool) -> None:
        self.closing = closing
        super().__init__(message)


class NoSourceAvailable(PeerloadError, LookupError):
    """No READY peer of this identity and rank could provide the weights."""


class LoadFailed(PeerloadError, RuntimeError):
    """Neither a peer nor storage produced a verified model; the destination was rolled back.

    `hint` says what to change when a source almost matched (e.g. the same model name on both sides).
    """

    def __init__(self, message: str, attempts: Sequence[str] = (), *, hint: str = "") -> None:
        self.attempts = list(attempts)
        self.hint = hint
        detail = "".join(f"\n  - {a}" for a in self.attempts)
        super().__init__(message + detail)


class DestinationAbandoned(LoadFailed):
    """A timed-out transfer may still write into the destination: it was given up, not rolled back.

    Discard those tensors (allocate new ones to load again); they may change at any moment.
    """


# --- emulated hosts -----------------------------------------------------------------------------


class FleetUnavailable(PeerloadError, OSError):
    """Emulated hosts cannot be made here (not root, no `ip`, or namespaces refused); says why."""
