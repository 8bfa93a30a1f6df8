"""Redis store: several coordinators share one registry, and a restart loses nothing.

Layout under a key prefix P: hash `P:w:<sid>:<wid>` per worker, set `P:workers` of "<sid>:<wid>"
and set `P:src:<sid>` of worker ids. Conditional updates run as Lua scripts so that a heartbeat
racing the reaper on another coordinator is never lost.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

from peerload.coordinator.store.base import Beat, Heartbeat, Store, WorkerEntry
from peerload.errors import MissingExtraError, StoreUnavailable

try:
    import redis
except ImportError:  # pragma: no cover - depends on the environment
    redis = None  # type: ignore[assignment]

if TYPE_CHECKING:
    from peerload.settings import Settings

logger = logging.getLogger(__name__)
T = TypeVar("T")

# KEYS: worker hash. ARGV: rank, status, updated_at_ms, source_load ("" = none).
_HEARTBEAT = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
if redis.call('HGET', KEYS[1], 'worker_rank') ~= ARGV[1] then return -1 end
redis.call('HSET', KEYS[1], 'status', ARGV[2], 'updated_at_ms', ARGV[3], 'source_load', ARGV[4])
return 1
"""
# KEYS: worker hash. ARGV: expected updated_at_ms, status.
_CAS_STATUS = """
if redis.call('HGET', KEYS[1], 'updated_at_ms') ~= ARGV[1] then return 0 end
redis.call('HSET', KEYS[1], 'status', ARGV[2])
return 1
"""
# KEYS: worker hash, all-workers set, per-source set. ARGV: expected updated_at_ms, member, wid.
_CAS_DELETE = """
if redis.call('HGET', KEYS[1], 'updated_at_ms') ~= ARGV[1] then return 0 end
redis.call('DEL', KEYS[1])
redis.call('SREM', KEYS[2], ARGV[2])
redis.call('SREM', KEYS[3], ARGV[3])
return 1
"""


class RedisStore(Store):
    """Entries as Redis hashes; `url` like redis://127.0.0.1:6379/0."""

    @classmethod
    def from_settings(cls, settings: Settings) -> RedisStore:
        return cls(settings.redis_url)

    def __init__(self, url: str, prefix: str = "peerload", timeout_s: float = 5.0) -> None:
        if redis is None:
            raise MissingExtraError("Redis store", "redis", "redis")
        self.url = url
        self._prefix = prefix
        self._client = redis.Redis.from_url(url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s)
        self._heartbeat = self._client.register_script(_HEARTBEAT)
        self._cas_status = self._client.register_script(_CAS_STATUS)
        self._cas_delete = self._client.register_script(_CAS_DELETE)

    # -- keys ---------------------------------------------------------------------------------
    def _key(self, sid: str, wid: str) -> str:
        return f"{self._prefix}:w:{sid}:{wid}"

    def _all(self) -> str:
        return f"{self._prefix}:workers"

    def _src(self, sid: str) -> str:
        return f"{self._prefix}:src:{sid}"

    def _call(self, what: str, fn: Callable[[], T]) -> T:
        try:
            return fn()
        except redis.RedisError as exc:
            raise StoreUnavailable(f"redis store at {self.url}: {what} failed: {exc}") from exc

    # -- Store --------------------------------------------------------------------------------
    def put(self, entry: WorkerEntry) -> None:
        key = self._key(entry.mx_source_id, entry.worker_id)

        def run() -> None:
            pipe = self._client.pipeline(transaction=True)  # MULTI/EXEC: all or nothing
            pipe.delete(key)
            pipe.hset(key, mapping=_encode(entry))
            pipe.sadd(self._all(), f"{entry.mx_source_id}:{entry.worker_id}")
            pipe.sadd(self._src(entry.mx_source_id), entry.worker_id)
            pipe.execute()

        self._call("put", run)

    def get(self, mx_source_id: str, worker_id: str) -> WorkerEntry | None:
        raw = self._call("get", lambda: self._client.hgetall(self._key(mx_source_id, worker_id)))
        return _decode(raw) if raw else None

    def entries(self, mx_source_id: str | None = None) -> list[WorkerEntry]:
        def run() -> list[Any]:
            if mx_source_id is None:
                members = [m.decode() for m in self._client.smembers(self._all())]
                keys = [f"{self._prefix}:w:{m}" for m in members]
            else:
                keys = [self._key(mx_source_id, w.decode()) for w in self._client.smembers(self._src(mx_source_id))]
            pipe = self._client.pipeline(transaction=False)
            for key in keys:
                pipe.hgetall(key)
            return pipe.execute()

        # A hash deleted between SMEMBERS and HGETALL comes back empty: skip it.
        return [_decode(raw) for raw in self._call("list", run) if raw]

    def count(self, mx_source_id: str) -> int:
        return int(self._call("count", lambda: self._client.scard(self._src(mx_source_id))))

    def heartbeat(self, beat: Beat) -> Heartbeat:
        load = "" if beat.source_load is None else repr(float(beat.source_load))
        result = self._call(
            "heartbeat",
            lambda: self._heartbeat(
                keys=[self._key(beat.mx_source_id, beat.worker_id)],
                args=[str(beat.worker_rank), str(beat.status), str(beat.updated_at_ms), load],
            ),
        )
        return {1: Heartbeat.OK, 0: Heartbeat.MISSING}.get(int(result), Heartbeat.RANK_MISMATCH)

    def compare_and_set_status(
        self, mx_source_id: str, worker_id: str, expected_updated_at_ms: int, status: int
    ) -> bool:
        result = self._call(
            "set status",
            lambda: self._cas_status(
                keys=[self._key(mx_source_id, worker_id)], args=[str(expected_updated_at_ms), str(status)]
            ),
        )
        return bool(result)

    def compare_and_delete(self, mx_source_id: str, worker_id: str, expected_updated_at_ms: int) -> bool:
        result = self._call(
            "delete",
            lambda: self._cas_delete(
                keys=[self._key(mx_source_id, worker_id), self._all(), self._src(mx_source_id)],
                args=[str(expected_updated_at_ms), f"{mx_source_id}:{worker_id}", worker_id],
            ),
        )
        return bool(result)

    def ping(self) -> None:
        self._call("ping", self._client.ping)

    def close(self) -> None:
        self._client.close()


def _encode(entry: WorkerEntry) -> dict[str, bytes | str]:
    return {
        "mx_source_id": entry.mx_source_id,
        "worker_id": entry.worker_id,
        "worker_rank": str(entry.worker_rank),
        "model_name": entry.model_name,
        "status": str(entry.status),
        "updated_at_ms": str(entry.updated_at_ms),
        "source_load": "" if entry.source_load is None else repr(float(entry.source_load)),
        "payload": entry.payload,
    }


def _decode(raw: dict[bytes, bytes]) -> WorkerEntry:
    text = {k.decode(): v for k, v in raw.items()}
    load = text["source_load"].decode()
    return WorkerEntry(
        mx_source_id=text["mx_source_id"].decode(),
        worker_id=text["worker_id"].decode(),
        worker_rank=int(text["worker_rank"]),
        model_name=text["model_name"].decode(),
        status=int(text["status"]),
        updated_at_ms=int(text["updated_at_ms"]),
        source_load=float(load) if load else None,
        payload=text["payload"],
    )
