"""The coordinator's status page: what the fleet holds, as JSON (/status.json) and a live page (/).

Built from the registry at each request: models, the workers of each source identity (status,
rank, kind, transport, readers, parts held while loading, age) and the recent loads that targets
reported when they published themselves (`LOAD_SUMMARY_KEY`). The page is one static HTML file
with its script inline (no build step) that fetches /status.json every `REFRESH_S` seconds.
"""

from __future__ import annotations

import hmac
import json
import time
from collections.abc import Callable, Sequence
from importlib import resources
from typing import Any

import grpc
from google.protobuf.message import DecodeError

from peerload._gen.model_express import p2p_pb2 as pb
from peerload._gen.peerload.v1 import seed_pb2, seed_pb2_grpc
from peerload._grpc import ChannelSecurity, open_channel
from peerload.coordinator.registry import Registry
from peerload.credentials import TokenFile
from peerload.errors import StoreUnavailable
from peerload.identity import BackendFramework
from peerload.limits import SEED_MAX_REQUEST_BYTES
from peerload.wire import LOAD_SUMMARY_KEY, PEERLOAD_MANIFEST_KEY, identity_from_proto, seed_kind, status_name

REFRESH_S = 2.0
RECENT_LOADS = 20
# A loading worker is asked for its parts with this deadline, so one slow seed cannot stall the page.
HOLDINGS_TIMEOUT_S = 1.0


def _transport(worker: pb.WorkerMetadata) -> str:
    backend = worker.WhichOneof("backend_metadata")
    return {"nixl_metadata": "nixl", "transfer_engine_session_id": "transfer_engine"}.get(backend or "", "")


def _held_parts(endpoint: str, worker_id: str, security: ChannelSecurity) -> str:
    """ "held/total" verified parts of a loading peerload worker, "?" when it does not answer."""
    try:
        channel = open_channel(endpoint, SEED_MAX_REQUEST_BYTES, security)
    except Exception:  # a bad endpoint in one record must not break the page
        return "?"
    try:
        stub = seed_pb2_grpc.SeedServiceStub(channel)
        reply = stub.GetAvailability(seed_pb2.GetAvailabilityRequest(worker_id=worker_id), timeout=HOLDINGS_TIMEOUT_S)
    except grpc.RpcError:
        return "?"
    finally:
        channel.close()
    held = reply.part_count if reply.complete else sum(bin(b).count("1") for b in reply.bitmap)
    return f"{held}/{reply.part_count}"


def collect(registry: Registry, security: ChannelSecurity, now: Callable[[], float] = time.time) -> dict[str, Any]:
    """The page's data: {"generated_at", "store", "models", "sources", "loads"} (see docs/coordinator.md)."""
    generated = now()
    try:
        entries = registry.store.entries()
    except StoreUnavailable as exc:
        return {"generated_at": generated, "store": f"unavailable: {exc}", "models": [], "sources": [], "loads": []}
    now_ms = registry.now_ms()
    sources: dict[str, dict[str, Any]] = {}
    models: dict[str, dict[str, int]] = {}
    loads = []
    for entry in entries:
        published = pb.PublishMetadataRequest()
        try:
            published.ParseFromString(entry.payload)
        except DecodeError:
            continue
        worker = published.worker
        status = status_name(registry.effective_status(entry, now_ms))
        topology = dict(worker.topology)
        kind = seed_kind(topology)
        source = sources.setdefault(
            entry.mx_source_id,
            {"mx_source_id": entry.mx_source_id, "identity": _identity(published.identity), "workers": []},
        )
        parts = None
        if status == "INITIALIZING" and kind == "peerload" and topology.get(PEERLOAD_MANIFEST_KEY):
            parts = _held_parts(topology[PEERLOAD_MANIFEST_KEY], entry.worker_id, security)
        source["workers"].append(
            {
                "worker_id": entry.worker_id,
                "status": status,
                "rank": entry.worker_rank,
                "kind": kind,
                "transport": _transport(worker),
                "readers": entry.source_load,
                "parts": parts,
                "age_s": round(max(0, now_ms - entry.updated_at_ms) / 1000, 1),
            }
        )
        counts = models.setdefault(published.identity.model_name, {})
        counts[status] = counts.get(status, 0) + 1
        summary = _load_summary(topology.get(LOAD_SUMMARY_KEY, ""))
        if summary is not None:
            loads.append({"model": published.identity.model_name, "worker_id": entry.worker_id, **summary})
    for source in sources.values():
        source["workers"].sort(key=lambda w: (w["rank"], w["worker_id"]))
    loads.sort(key=lambda load: -float(load.get("finished_at", 0)))
    return {
        "generated_at": generated,
        "store": "ok",
        "models": [{"model": name, "workers": counts} for name, counts in sorted(models.items())],
        "sources": sorted(sources.values(), key=lambda s: (s["identity"].get("model_name", ""), s["mx_source_id"])),
        "loads": loads[:RECENT_LOADS],
    }


def _identity(message: pb.SourceIdentity) -> dict[str, Any]:
    try:
        identity = identity_from_proto(message)
    except Exception:  # a foreign writer's identity peerload does not accept: show its name only
        return {"model_name": message.model_name}
    shown = {
        "model_name": identity.model_name,
        "framework": _framework(identity.backend_framework),
        "dtype": identity.dtype,
        "quantization": identity.quantization,
        "tp": identity.tensor_parallel_size,
        "pp": identity.pipeline_parallel_size,
        "ep": identity.expert_parallel_size,
        "revision": identity.revision,
    }
    return {k: v for k, v in shown.items() if v not in ("", None)}


def _framework(value: int) -> str:
    try:
        return BackendFramework(value).name.lower()
    except ValueError:
        return str(value)


def _load_summary(text: str) -> dict[str, Any] | None:
    if not text:
        return None
    try:
        summary = json.loads(text)
    except ValueError:
        return None
    return summary if isinstance(summary, dict) else None


class StatusPages:
    """The routes `/`, `/status` and `/status.json`, guarded by the coordinator's read tokens when it has any.

    A browser cannot send a header on a page load, so the token may also come as `?token=...`;
    the page passes it on to its own /status.json requests.
    """

    def __init__(self, registry: Registry, security: ChannelSecurity, tokens: Sequence[TokenFile]) -> None:
        self._registry = registry
        self._security = security
        self._tokens = tuple(tokens)  # none: open (the port binds loopback unless told otherwise)

    def routes(self) -> dict[str, Any]:
        return {"/": self.page, "/status": self.page, "/status.json": self.data}

    def _refusal(self, query: dict[str, list[str]], headers: dict[str, str]) -> tuple[int, str, bytes] | None:
        if not self._tokens:
            return None
        scheme, _, token = headers.get("authorization", "").partition(" ")
        given = token.strip() if scheme.lower() == "bearer" else (query.get("token") or [""])[0]
        found = False
        for accepted in (t for tokens in self._tokens for t in tokens.tokens()):
            found |= hmac.compare_digest(given.encode(), accepted.encode())
        if given and found:
            return None
        body = b"this coordinator needs a token: open /?token=<token> or send Authorization: Bearer <token>\n"
        return 401, "text/plain; charset=utf-8", body

    def page(self, query: dict[str, list[str]], headers: dict[str, str]) -> tuple[int, str, bytes]:
        refused = self._refusal(query, headers)
        if refused is not None:
            return refused
        html = resources.files("peerload.coordinator").joinpath("status_page.html").read_text()
        return 200, "text/html; charset=utf-8", html.replace("{{REFRESH_MS}}", str(int(REFRESH_S * 1000))).encode()

    def data(self, query: dict[str, list[str]], headers: dict[str, str]) -> tuple[int, str, bytes]:
        refused = self._refusal(query, headers)
        if refused is not None:
            return refused
        body = json.dumps(collect(self._registry, self._security), indent=1).encode()
        return 200, "application/json", body
