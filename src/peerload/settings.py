"""The one reader of peerload configuration: PEERLOAD_* env vars and ModelExpress-style config.

Precedence (highest first): explicit keyword overrides, a JSON config (ModelExpress style
`{"url", "transport", "source"}` or peerload keys), PEERLOAD_* variables, the ModelExpress
variables MODEL_EXPRESS_URL (else MX_SERVER_ADDRESS: the official client's order), MX_P2P_METADATA
and MX_AUTH_TOKEN_PATH (its default token file too, when present), then the defaults below.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any

from peerload._address import host_port, is_host, split_host_port
from peerload.components import STORES, TRANSPORTS, choices
from peerload.credentials import is_token
from peerload.errors import ConfigError

DEFAULT_COORDINATOR = "127.0.0.1:8001"
# advertise_host's default: the local address that routes to the coordinator (peerload.advertise).
AUTO_ADVERTISE_HOST = "auto"
# Where the official ModelExpress client looks for its bearer token when MX_AUTH_TOKEN_PATH is unset.
MX_DEFAULT_TOKEN_PATH = "/var/run/secrets/tokens/modelexpress"


@dataclass(frozen=True)
class Settings:
    """Validated peerload configuration; build with `Settings.load()`."""

    # Coordinator address (HOST:PORT) used by seeds, targets and the CLI; several replicas over one
    # Redis as a comma-separated list (clients fail over between them), or a DNS name of several.
    coordinator: str = DEFAULT_COORDINATOR
    # Data plane: "nixl" (UCX) or "transfer_engine" (Mooncake).
    transport: str = "nixl"
    # Deadline of one coordinator RPC, and how often UNAVAILABLE is retried.
    rpc_timeout_s: float = 30.0
    rpc_retries: int = 3
    # Seeds heartbeat READY this often; the coordinator stops listing them READY after the timeout.
    heartbeat_interval_s: float = 2.0
    heartbeat_timeout_s: float = 10.0
    # STALE workers are deleted this long after their last heartbeat.
    gc_timeout_s: float = 60.0
    # Coordinator server side.
    host: str = "127.0.0.1"
    port: int = 8001
    store: str = "memory"
    redis_url: str = "redis://127.0.0.1:6379/0"
    # Per-source limits of the coordinator: workers under one source id, descriptors per worker.
    max_workers_per_source: int = 4096
    max_tensors_per_worker: int = 262144
    # Target side.
    transfer_timeout_s: float = 300.0
    # After a transfer timed out, how long to wait for the transport to stop writing into the
    # destination before rolling back; past it the destination is given up, never returned.
    settle_timeout_s: float = 60.0
    max_source_attempts: int = 3
    verify_checksums: bool = True
    # What a seed checksums its parts with: "auto" (xxh3_64 for a part in host memory, the
    # on-device digest "wsum64" for a part with bytes in GPU memory), "xxh3_64" or "wsum64"
    # (e.g. a CPU seed of GPU targets, so they verify without copying to the host).
    checksum: str = "auto"
    storage_fallback: bool = True
    # Transfers over TCP are intended (e.g. hosts without RDMA): no tcp_path alarm (docs/metrics.md).
    expect_tcp: bool = False
    # Tensors larger than this are moved as several chunks (pipelines page faulting with transfer);
    # a seed also cuts its model into verified parts of about this size (the part plan).
    chunk_bytes: int = 64 << 20
    # Striping: sources one load reads from at once, and how long one part may take from one
    # source before that source counts as stalled (dropped; its parts go to the others).
    max_parallel_sources: int = 4
    part_timeout_s: float = 60.0
    # A target started before its seed: how long it waits for a matching source to become READY
    # (or start loading) before it falls back to storage (0 = not at all). `peerload load --wait`.
    wait_for_source_s: float = 0.0
    # Fan-out: a loading target serves the parts it has verified to other loading targets (listed
    # INITIALIZING until complete), and reads from such targets itself.
    serve_while_loading: bool = True
    # Host part a serving process (seed, serving target) binds and tells peers: its gRPC server,
    # NIXL listen thread and Mooncake. "auto": the local address of the route to the coordinator
    # (loopback when the coordinator is local), so multi-host fleets work without setting it.
    advertise_host: str = AUTO_ADVERTISE_HOST
    # Seed side: concurrent readers one seed serves (0 = no cap), how long a read lease lasts when
    # a reader never releases it (a reader that died), and how long a closing seed waits for open
    # leases before it deregisters its memory.
    seed_max_readers: int = 8
    lease_timeout_s: float = 600.0
    lease_close_wait_s: float = 10.0
    # How a seed publishes itself to ModelExpress readers: True = P2P metadata (its WorkerService
    # serves the descriptors, its NIXL listen thread the agent metadata), False = centralized (the
    # coordinator record carries NIXL metadata and descriptors), like MX_P2P_METADATA=1/0.
    mx_p2p_metadata: bool = True
    # Port of the NIXL agent's listen thread, which serves its metadata to peers (0 = a free port).
    metadata_port: int = 0
    # NIXL: read host memory from peerload peers as pushes (the peer WRITEs into our staging
    # slots), so no serving process is aborted by UCX for a reader that vanished (docs/transport.md).
    nixl_push: bool = True
    # Security (docs/security.md). Clients: TLS to the coordinator and seeds, trusting this CA
    # (PEM), optionally checking this name instead of the host; the bearer token to send, given
    # as is or as a file (its first token; re-read when it changes).
    tls_ca: str = ""
    tls_server_name: str = ""
    auth_token: str = field(default="", repr=False)
    auth_token_file: str = ""
    # Servers (the coordinator, a seed's gRPC server): TLS certificate and key (PEM); files of
    # bearer tokens accepted on every RPC, and of those that may also publish and update status.
    tls_cert: str = ""
    tls_key: str = ""
    accept_tokens_file: str = ""
    accept_write_tokens_file: str = ""

    def __post_init__(self) -> None:
        _validate(self)

    @property
    def coordinators(self) -> tuple[str, ...]:
        """The coordinator replicas' addresses, each HOST:PORT (`coordinator` split at commas)."""
        return coordinator_addresses(self.coordinator)

    @classmethod
    def load(
        cls,
        config: str | Mapping[str, Any] | None = None,
        env: Mapping[str, str] | None = None,
        **overrides: Any,
    ) -> Settings:
        """Build settings from env vars, an optional JSON config (string, path or dict) and overrides."""
        env = os.environ if env is None else env
        values: dict[str, Any] = {}
        values.update(_from_mx_env(env))
        values.update(_from_peerload_env(env))
        if config is None and env.get("PEERLOAD_CONFIG"):
            config = env["PEERLOAD_CONFIG"]
        if config is not None:
            values.update(_from_json_config(config))
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**_coerce_all(values))


_FIELDS = {f.name: f for f in fields(Settings)}
# ModelExpress-style JSON keys and what they mean here.
_MX_JSON_KEYS = {"url": "coordinator", "server_address": "coordinator"}


def coordinator_addresses(text: str) -> tuple[str, ...]:
    """Each HOST:PORT of a comma-separated list of coordinator addresses, as gRPC dials it.

    Raises:
        ConfigError: the list is empty, or an entry is not HOST:PORT (naming it).
    """
    addresses: list[str] = []
    for entry in text.split(","):
        if not entry.strip():
            continue
        host, port = split_host_port(_without_scheme(entry), what="coordinator")
        address = host_port(host, port)
        if address not in addresses:
            addresses.append(address)
    if not addresses:
        raise ConfigError(f"coordinator {text!r} names no HOST:PORT (for example 127.0.0.1:8001)")
    return tuple(addresses)


# Prefixes a coordinator address may carry: the official client drops http:// and https:// (and
# dials plaintext either way); grpc://, dns: and ipv4: are gRPC's own target forms.
_COORDINATOR_PREFIXES = ("http://", "https://", "grpc://", "dns:///", "dns:", "ipv4:")


def _without_scheme(entry: str) -> str:
    """One coordinator address without an accepted prefix; any other scheme is refused by name.

    Raises:
        ConfigError: `entry` starts with a scheme peerload does not dial (e.g. ftp://, unix://).
    """
    text = entry.strip()
    for prefix in _COORDINATOR_PREFIXES:
        if text.lower().startswith(prefix):
            return text[len(prefix) :]
    scheme, sep, _rest = text.partition("://")
    if sep:
        raise ConfigError(
            f"coordinator {entry.strip()!r}: scheme {scheme}:// is not one peerload dials; give HOST:PORT "
            "(a leading http:// or https:// is dropped, as the official ModelExpress client does; TLS comes "
            "from the tls_ca setting, not from the address)"
        )
    return text


def parse_bool(name: str, value: str | bool) -> bool:
    """The one boolean parser: 1/true/yes/on and 0/false/no/off, case-insensitive."""
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off", ""):
        return False
    raise ConfigError(f"{name}={value!r} is not a boolean: use true/false, 1/0, yes/no or on/off")


def debug_enabled(env: Mapping[str, str] | None = None) -> bool:
    """Whether PEERLOAD_DEBUG asks for tracebacks and debug logs (parsed like every boolean)."""
    value = (os.environ if env is None else env).get("PEERLOAD_DEBUG", "")
    try:
        return parse_bool("PEERLOAD_DEBUG", value)
    except ConfigError:
        return True  # a value we cannot read still asks for more output, not less


def _coerce(name: str, value: Any) -> Any:
    if name not in _FIELDS:
        known = ", ".join(sorted(_FIELDS))
        raise ConfigError(f"unknown setting {name!r}; known settings: {known}")
    kind = _FIELDS[name].type
    try:
        if kind == "bool":
            return parse_bool(name, value)
        if kind == "int":
            if isinstance(value, bool):
                raise ValueError
            return int(value)
        if kind == "float":
            return float(value)
        if kind == "str":
            return str(value)
    except (TypeError, ValueError):
        raise ConfigError(f"setting {name}={value!r} must be of type {kind}") from None
    return value


def _coerce_all(values: Mapping[str, Any]) -> dict[str, Any]:
    return {k: _coerce(k, v) for k, v in values.items()}


def _from_peerload_env(env: Mapping[str, str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name in _FIELDS:
        key = "PEERLOAD_" + name.upper()
        if key in env and env[key] != "":
            out[name] = env[key]
    return out


def _from_mx_env(env: Mapping[str, str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    # The official client's order: MODEL_EXPRESS_URL first (deprecated there, still preferred), then
    # MX_SERVER_ADDRESS (modelexpress.client._get_server_url).
    for key in ("MODEL_EXPRESS_URL", "MX_SERVER_ADDRESS"):
        if env.get(key):
            out["coordinator"] = env[key]
            break
    if env.get("MX_P2P_METADATA"):
        out["mx_p2p_metadata"] = parse_bool("MX_P2P_METADATA", env["MX_P2P_METADATA"])
    # The token file the official client sends from, read the same way (its default if present).
    if env.get("MX_AUTH_TOKEN_PATH"):
        out["auth_token_file"] = env["MX_AUTH_TOKEN_PATH"]
    elif os.path.isfile(MX_DEFAULT_TOKEN_PATH):
        out["auth_token_file"] = MX_DEFAULT_TOKEN_PATH
    return out


def _from_json_config(config: str | Mapping[str, Any]) -> dict[str, Any]:
    if isinstance(config, str):
        text = config.strip()
        if not text.startswith("{"):
            try:
                with open(text, encoding="utf-8") as fh:
                    text = fh.read()
            except OSError as exc:
                raise ConfigError(f"config {config!r} is neither JSON nor a readable file: {exc}") from None
        try:
            config = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"config is not valid JSON: {exc}") from None
    if not isinstance(config, Mapping):
        raise ConfigError('config must be a JSON object such as {"url": "host:8001", "transport": "nixl"}')
    out: dict[str, Any] = {}
    unknown: list[str] = []
    for key, value in config.items():
        name = _MX_JSON_KEYS.get(key, key)
        if key == "source":
            # ModelExpress' "source" names where weights come from when no peer has them; we
            # always fall back to the checkpoint path, so only "disk"/"storage" are meaningful.
            out["storage_fallback"] = str(value).lower() not in ("none", "p2p", "peer")
        elif name in _FIELDS:
            out[name] = value
        else:
            unknown.append(key)
    if unknown:
        allowed = sorted([*_MX_JSON_KEYS, "source", *_FIELDS])
        raise ConfigError(f"unknown config keys {sorted(unknown)}; allowed keys: {', '.join(allowed)}")
    return out


_TIMEOUTS = (
    "rpc_timeout_s",
    "heartbeat_interval_s",
    "heartbeat_timeout_s",
    "gc_timeout_s",
    "transfer_timeout_s",
    "part_timeout_s",
    "lease_timeout_s",
    "settle_timeout_s",
)
_FILES = ("tls_ca", "tls_cert", "tls_key", "auth_token_file", "accept_tokens_file", "accept_write_tokens_file")
_REDIS_SCHEMES = ("redis://", "rediss://", "unix://", "redis+sentinel://")
_SENTINEL_SCHEME = "redis+sentinel://"


def parse_sentinel_url(url: str) -> tuple[list[tuple[str, int]], str, int] | None:
    """`redis+sentinel://HOST:PORT[,HOST:PORT...]/SERVICE[/DB]` as (sentinels, service, db); None
    for any other URL.

    Raises:
        ConfigError: a Sentinel URL without a service name, with a bad address or database.
    """
    if not url.startswith(_SENTINEL_SCHEME):
        return None
    hosts, _, path = url[len(_SENTINEL_SCHEME) :].partition("/")
    service, _, db = path.strip("/").partition("/")
    example = "redis+sentinel://10.0.0.1:26379,10.0.0.2:26379/peerload/0"
    if not service or not hosts:
        raise ConfigError(f"redis_url {url!r} names no Sentinel or no service; for example {example}")
    if db and not db.isdigit():
        raise ConfigError(f"redis_url {url!r}: database {db!r} is not a number; for example {example}")
    sentinels = [split_host_port(h, what="Sentinel") for h in hosts.split(",") if h.strip()]
    return sentinels, service, int(db or 0)


_CHECKSUMS = ("auto", "xxh3_64", "wsum64")


def _validate(s: Settings) -> None:
    if s.transport not in TRANSPORTS:
        raise ConfigError(f"transport {s.transport!r} is not supported; choose one of {choices(TRANSPORTS)}")
    if s.store not in STORES:
        raise ConfigError(f"store {s.store!r} is not supported; choose one of {choices(STORES)}")
    coordinator_addresses(s.coordinator)
    for name in ("host", "advertise_host"):
        if not is_host(getattr(s, name)):
            raise ConfigError(f"{name} {getattr(s, name)!r} is not an IP address or host name (e.g. 127.0.0.1)")
    for name in _TIMEOUTS:
        value = getattr(s, name)
        if not (math.isfinite(value) and value > 0):
            raise ConfigError(f"{name} must be a number of seconds > 0, got {value}")
    if s.heartbeat_interval_s >= s.heartbeat_timeout_s:
        raise ConfigError(
            f"heartbeat_interval_s ({s.heartbeat_interval_s}) must be smaller than "
            f"heartbeat_timeout_s ({s.heartbeat_timeout_s}), or READY seeds would flap to STALE"
        )
    if s.rpc_retries < 0 or s.max_source_attempts < 1:
        raise ConfigError("rpc_retries must be >= 0 and max_source_attempts >= 1")
    if s.max_parallel_sources < 1:
        raise ConfigError(f"max_parallel_sources must be >= 1, got {s.max_parallel_sources}")
    for name in ("max_workers_per_source", "max_tensors_per_worker"):
        if getattr(s, name) < 1:
            raise ConfigError(f"{name} must be >= 1, got {getattr(s, name)}")
    if s.chunk_bytes < 4096:
        raise ConfigError(f"chunk_bytes must be >= 4096, got {s.chunk_bytes}")
    for name in ("port", "metadata_port"):
        if not 0 <= getattr(s, name) < 65536:
            raise ConfigError(f"{name} must be in 0..65535 (0 picks a free port), got {getattr(s, name)}")
    if s.seed_max_readers < 0:
        raise ConfigError(f"seed_max_readers must be >= 0 (0 = no cap), got {s.seed_max_readers}")
    if not (math.isfinite(s.wait_for_source_s) and s.wait_for_source_s >= 0):
        raise ConfigError(
            f"wait_for_source_s must be a number of seconds >= 0 (0 = no wait), got {s.wait_for_source_s}"
        )
    if not (math.isfinite(s.lease_close_wait_s) and s.lease_close_wait_s >= 0):
        raise ConfigError(f"lease_close_wait_s must be a number of seconds >= 0, got {s.lease_close_wait_s}")
    if s.checksum not in _CHECKSUMS:
        raise ConfigError(f"checksum {s.checksum!r} is not supported; choose one of {', '.join(_CHECKSUMS)}")
    if not s.redis_url.startswith(_REDIS_SCHEMES):
        raise ConfigError(f"redis_url {s.redis_url!r} must start with {', '.join(_REDIS_SCHEMES)}")
    parse_sentinel_url(s.redis_url)
    _validate_security(s)


def _validate_security(s: Settings) -> None:
    for name in _FILES:
        path = getattr(s, name)
        if path and not (os.path.isfile(path) and os.access(path, os.R_OK)):
            raise ConfigError(f"{name}: {path!r} is not a readable file")
    if bool(s.tls_cert) != bool(s.tls_key):
        raise ConfigError("tls_cert and tls_key go together: give both (PEM files) or neither")
    if s.auth_token and not is_token(s.auth_token):
        raise ConfigError("auth_token must be printable ASCII without spaces (it is sent as a gRPC header)")
    if s.tls_server_name and not is_host(s.tls_server_name):
        raise ConfigError(f"tls_server_name {s.tls_server_name!r} is not a host name")
