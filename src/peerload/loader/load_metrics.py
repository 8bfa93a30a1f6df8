"""What a finished load adds to the process's metrics (`peerload.telemetry`), and its alarms.

Two alarms are raised here: `storage_fallback` (a load read bytes from storage) and `tcp_path`
(a peer's bytes took TCP where RDMA or shared memory was expected; `expect_tcp` turns it off).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

from peerload import telemetry
from peerload.loader.network import data_path, tcp_fix

if TYPE_CHECKING:
    from peerload.loader.load import LoadResult

log = logging.getLogger(__name__)


def origin_of(peer_bytes: int, storage_bytes: int) -> str:
    """peer, storage, or mixed (storage filled what peers did not deliver)."""
    if storage_bytes and peer_bytes:
        return "mixed"
    return "storage" if storage_bytes else "peer"


def record_load(result: LoadResult, model: str, rank: int, expect_tcp: bool) -> None:
    """Phases, bytes by origin, sources used and the data path of each, and the tcp_path alarm."""
    peer_bytes = sum(s.bytes for s in result.sources)
    origin = origin_of(peer_bytes, result.storage_bytes)
    for phase, seconds in result.seconds.items():
        if phase != "total":
            telemetry.LOAD_PHASE_SECONDS.labels(phase).observe(seconds)
    telemetry.LOAD_SECONDS.labels(origin).observe(result.seconds.get("total", 0.0))
    telemetry.LOADS.labels(origin).inc()
    telemetry.LOAD_BYTES.labels("peer").inc(peer_bytes)
    telemetry.LOAD_BYTES.labels("storage").inc(result.storage_bytes)
    for source in result.sources:
        kind = "peerload" if source.parts or not source.bytes else "modelexpress"
        telemetry.LOAD_SOURCES_USED.labels(kind).inc()
        if source.error:
            telemetry.LOAD_SOURCE_DROPS.labels(source.error.split(":", 1)[0]).inc()
        if not source.bytes:
            continue
        path = data_path(source.transport, source.network)
        telemetry.LOAD_PEER_BYTES.labels(source.transport, path).inc(source.bytes)
        if path == "tcp" and not expect_tcp:
            where = source.network.get("peer_host", "") or "?"
            telemetry.alarm(
                telemetry.TCP_PATH,
                f"{model} rank {rank}: {source.bytes} bytes from source {source.worker_id} ({where}) crossed over "
                f"TCP ({source.transport}, {_knobs(source.network)}) where RDMA or shared memory was expected",
                tcp_fix(source.transport, source.network),
                logger=log,
            )


_NO_SOURCE_FIX = (
    "start (or wait for) a READY seed of the same identity and rank; `peerload sources --explain` shows what "
    "the coordinator holds and what differs"
)
# Where the usual fix (a seed, `peerload sources --explain`) cannot help: nothing answered to ask.
_FIXES = {
    "coordinator_unreachable": (
        "start the coordinator (`peerload serve`) or point coordinator / PEERLOAD_COORDINATOR at a running "
        "one; a worker that serves publishes itself once it answers"
    ),
}


def record_fallback(reason: str, model: str, rank: int, attempts: Sequence[str], hint: str) -> None:
    """A load is about to read from storage: count it by reason and raise the storage_fallback alarm."""
    telemetry.LOAD_FALLBACKS.labels(reason).inc()
    why = attempts[-1] if attempts else reason
    fix = hint or _FIXES.get(reason, _NO_SOURCE_FIX)
    telemetry.alarm(
        telemetry.STORAGE_FALLBACK,
        f"{model} rank {rank} loads from storage ({reason}: {why})",
        fix,
        logger=log,
    )


def record_failure(seconds: Mapping[str, float]) -> None:
    """A load that raised: its phases so far, and a failed load."""
    for phase, value in seconds.items():
        if phase != "total":
            telemetry.LOAD_PHASE_SECONDS.labels(phase).observe(value)
    telemetry.LOADS.labels("failed").inc()


def _knobs(network: Mapping[str, str]) -> str:
    shown = {k: v for k, v in network.items() if k.startswith("UCX_") or k == "protocol"}
    return ", ".join(f"{k}={v}" for k, v in shown.items()) or "transport defaults"
