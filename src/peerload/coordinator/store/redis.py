"""Redis store: several coordinators share one registry, and a restart loses nothing.

Layout under a key prefix P: hash `P:w:<sid>:<wid>` per worker, set `P:workers` of "<sid>:<wid>",
set `P:src:<sid>` of worker ids, and counter `P:rev` that gives every write its revision. Every
write is one Lua script (atomic in Redis): a heartbeat or re-publish racing the reaper of another
coordinator is never lost, and a record two reapers race over is deleted once, never written back.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, TypeVar

from peerload.coordinator.store.base import Beat, Heartbeat, Store, WorkerEntry, due
from peerload.errors import MissingExtraError, StoreUnavailable
from peerload.settings import parse_sentinel_url
from peerload.wire import SourceStatus

try:
    import redis
    from redis.backoff import NoBackoff
    from redis.retry import Retry
except ImportError:  # pragma: no cover - depends on the environment
    redis = None  # type: ignore[assignment]

if TYPE_CHECKING:
    from peerload.settings import Settings

logger = logging.getLogger(__name__)
T = TypeVar("T")

# KEYS: worker hash, all-workers set, per-source set, revision counter, beats index.
# ARGV: member "<sid>:<wid>", wid, updated_at_ms, then the hash's field/value pairs.
_PUT = """
local rev = redis.call('INCR', KEYS[4])
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], 'rev', rev, unpack(ARGV, 4))
redis.call('SADD', KEYS[2], ARGV[1])
redis.call('SADD', KEYS[3], ARGV[2])
redis.call('ZADD', KEYS[5], ARGV[3], ARGV[1])
return rev
"""
# KEYS: worker hash, revision counter, beats index.
# ARGV: rank, status, updated_at_ms, source_load ("" = none), member "<sid>:<wid>", instance ("" =
# none). Returns 1 ok, 0 missing, -1 another rank, -2 another instance's record.
_HEARTBEAT = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
if redis.call('HGET', KEYS[1], 'worker_rank') ~= ARGV[1] then return -1 end
local instance = redis.call('HGET', KEYS[1], 'instance')
if ARGV[6] ~= '' and instance and instance ~= '' and instance ~= ARGV[6] then return -2 end
redis.call('HSET', KEYS[1], 'status', ARGV[2], 'updated_at_ms', ARGV[3], 'source_load', ARGV[4],
           'rev', redis.call('INCR', KEYS[2]))
redis.call('ZADD', KEYS[3], ARGV[3], ARGV[5])
return 1
"""
# Shared head of the conditional writes. ARGV[1], ARGV[2]: the revision and updated_at_ms read.
# updated_at is compared too, for records written by a peerload that kept no revision.
_UNCHANGED = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
local seen = redis.call('HMGET', KEYS[1], 'rev', 'updated_at_ms')
if (seen[1] or '0') ~= ARGV[1] or seen[2] ~= ARGV[2] then return 0 end
"""
# KEYS: worker hash, revision counter. ARGV: revision, updated_at_ms, status.
_CAS_STATUS = (
    _UNCHANGED
    + """
redis.call('HSET', KEYS[1], 'status', ARGV[3], 'rev', redis.call('INCR', KEYS[2]))
return 1
"""
)
# KEYS: worker hash, all-workers set, per-source set, beats index.
# ARGV: revision, updated_at_ms, member, wid.
_CAS_DELETE = (
    _UNCHANGED
    + """
redis.call('DEL', KEYS[1])
redis.call('SREM', KEYS[2], ARGV[3])
redis.call('SREM', KEYS[3], ARGV[4])
redis.call('ZREM', KEYS[4], ARGV[3])
return 1
"""
)
# What the reaper and the metrics read: every field but the payload.
_INDEX_FIELDS = (
    "mx_source_id",
    "worker_id",
    "worker_rank",
    "model_name",
    "status",
    "updated_at_ms",
    "source_load",
    "rev",
)
# KEYS: beats index. ARGV: key prefix of worker hashes ("P:w:"), now_ms, heartbeat timeout ms,
# GC timeout ms, the READY status as stored. The records a reaper pass may change, each as
# _INDEX_FIELDS' values (flat): only those silent for longer than the shorter timeout are read,
# so a pass over thousands of beating workers reads nothing. A member whose record is gone, or
# whose score is not its record's time (a peerload that kept no index wrote it), is put right.
_DUE = """
local now, hb, gc, ready = tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4]), ARGV[5]
local before = '(' .. tostring(now - math.min(hb, gc))
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', before, 'WITHSCORES')
local out = {}
for i = 1, #due, 2 do
  local member = due[i]
  local row = redis.call('HMGET', ARGV[1] .. member, 'mx_source_id', 'worker_id', 'worker_rank', 'model_name',
                         'status', 'updated_at_ms', 'source_load', 'rev')
  if not row[5] or not row[6] then
    redis.call('ZREM', KEYS[1], member)
  else
    local updated = tonumber(row[6])
    if updated ~= tonumber(due[i + 1]) then redis.call('ZADD', KEYS[1], updated, member) end
    local limit = gc
    if row[5] == ready then limit = hb end
    if now - updated > limit then
      for j = 1, 8 do out[#out + 1] = row[j] end
    end
  end
end
return out
"""
# How often a reaper pass also reads every record (and indexes those missing from the beats
# index: written by a peerload that kept none); the first pass of a coordinator always does.
_FULL_SCAN_S = 600.0
# KEYS: per-source set. ARGV: the key prefix of its workers' hashes ("P:w:<sid>:").
# Per worker, flat: wid, then _LISTED_FIELDS, then its payload where it has no listing (a record
# of a peerload that kept none), else false. One round trip, whatever the number of workers.
_LISTED = """
local out = {}
for _, wid in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  local key = ARGV[1] .. wid
  local row = redis.call('HMGET', key, 'worker_rank', 'model_name', 'status', 'updated_at_ms', 'source_load',
                         'rev', 'listing')
  if row[1] then
    out[#out + 1] = wid
    for i = 1, 7 do out[#out + 1] = row[i] end
    out[#out + 1] = (not row[7]) and (redis.call('HGET', key, 'payload') or '') or false
  end
end
return out
"""
_LISTED_FIELDS = ("worker_rank", "model_name", "status", "updated_at_ms", "source_load", "rev", "listing")
_LISTED_ROW = 2 + len(_LISTED_FIELDS)


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
        # One immediate retry on a dropped connection (a pooled one to a Redis that restarted),
        # then fail fast: the RPC answers UNAVAILABLE and the client tries another replica.
        retry = Retry(NoBackoff(), 1, supported_errors=(redis.ConnectionError,))
        self._client = _connect(url, timeout_s, retry)
        self._put = self._client.register_script(_PUT)
        self._heartbeat = self._client.register_script(_HEARTBEAT)
        self._cas_status = self._client.register_script(_CAS_STATUS)
        self._cas_delete = self._client.register_script(_CAS_DELETE)
        self._listed = self._client.register_script(_LISTED)
        self._due = self._client.register_script(_DUE)
        self._last_full_scan: float | None = None  # time.monotonic() of the last full reaper scan

    # -- keys ---------------------------------------------------------------------------------
    def _key(self, sid: str, wid: str) -> str:
        return f"{self._prefix}:w:{sid}:{wid}"

    def _all(self) -> str:
        return f"{self._prefix}:workers"

    def _src(self, sid: str) -> str:
        return f"{self._prefix}:src:{sid}"

    def _rev(self) -> str:
        return f"{self._prefix}:rev"

    def _beats(self) -> str:
        return f"{self._prefix}:beats"

    def _call(self, what: str, fn: Callable[[], T]) -> T:
        try:
            return fn()
        except redis.RedisError as exc:
            raise StoreUnavailable(f"redis store at {self.url}: {what} failed: {exc}") from exc

    # -- Store --------------------------------------------------------------------------------
    def put(self, entry: WorkerEntry) -> None:
        sid, wid = entry.mx_source_id, entry.worker_id
        fields = [x for pair in _encode(entry).items() for x in pair]
        self._call(
            "put",
            lambda: self._put(
                keys=[self._key(sid, wid), self._all(), self._src(sid), self._rev(), self._beats()],
                args=[f"{sid}:{wid}", wid, entry.updated_at_ms, *fields],
            ),
        )

    def get(self, mx_source_id: str, worker_id: str) -> WorkerEntry | None:
        raw = self._call("get", lambda: self._client.hgetall(self._key(mx_source_id, worker_id)))
        return _decode(raw) if raw else None

    def entries(self, mx_source_id: str | None = None, *, payload: bool = True) -> list[WorkerEntry]:
        def run() -> list[Any]:
            if mx_source_id is None:
                members = [_text(m) for m in self._client.smembers(self._all())]
                keys = [f"{self._prefix}:w:{m}" for m in members]
            else:
                keys = [self._key(mx_source_id, _text(w)) for w in self._client.smembers(self._src(mx_source_id))]
            pipe = self._client.pipeline(transaction=False)
            for key in keys:
                if payload:
                    pipe.hgetall(key)
                else:
                    pipe.hmget(key, _INDEX_FIELDS)
            return pipe.execute()

        rows = self._call("list", run)
        if not payload:
            names = [f.encode() for f in _INDEX_FIELDS]
            rows = [dict(zip(names, row, strict=True)) if row[0] is not None else {} for row in rows]
        # A hash deleted between SMEMBERS and reading it comes back empty: skip it.
        return [_decode(raw) for raw in rows if raw]

    def listed(self, mx_source_id: str) -> list[WorkerEntry]:
        flat = self._call(
            "list", lambda: self._listed(keys=[self._src(mx_source_id)], args=[self._key(mx_source_id, "")])
        )
        out = []
        for i in range(0, len(flat), _LISTED_ROW):
            wid, rank, model, status, updated, load, rev, listing, payload = flat[i : i + _LISTED_ROW]
            out.append(  # positional: the fields in WorkerEntry's order (cheapest)
                WorkerEntry(
                    mx_source_id,
                    wid.decode(),
                    int(rank),
                    model.decode(),
                    int(status),
                    int(updated),
                    float(load) if load else None,
                    payload or b"",
                    int(rev or 0),
                    listing or b"",
                )
            )
        return out

    def reap_candidates(self, now_ms: int, heartbeat_timeout_ms: int, gc_timeout_ms: int) -> list[WorkerEntry]:
        """Read from the beats index (sorted by time); every `_FULL_SCAN_S`, and on the first
        call, from every record, indexing those a peerload that kept no index wrote."""
        if self._last_full_scan is None or time.monotonic() - self._last_full_scan >= _FULL_SCAN_S:
            self._last_full_scan = time.monotonic()
            return self._full_scan(now_ms, heartbeat_timeout_ms, gc_timeout_ms)
        args: list[str | int] = [
            f"{self._prefix}:w:",
            now_ms,
            heartbeat_timeout_ms,
            gc_timeout_ms,
            int(SourceStatus.READY),
        ]
        flat = self._call("list", lambda: self._due(keys=[self._beats()], args=args))
        names = [f.encode() for f in _INDEX_FIELDS]
        width = len(_INDEX_FIELDS)
        return [_decode(dict(zip(names, flat[i : i + width], strict=True))) for i in range(0, len(flat), width)]

    def _full_scan(self, now_ms: int, heartbeat_timeout_ms: int, gc_timeout_ms: int) -> list[WorkerEntry]:
        entries = self.entries(payload=False)

        def index() -> None:
            pipe = self._client.pipeline(transaction=False)
            for e in entries:  # NX: never move a member back in time past a beat since the read
                pipe.zadd(self._beats(), {f"{e.mx_source_id}:{e.worker_id}": e.updated_at_ms}, nx=True)
            pipe.execute()

        self._call("index", index)
        return due(entries, now_ms, heartbeat_timeout_ms, gc_timeout_ms)

    def count(self, mx_source_id: str) -> int:
        return int(self._call("count", lambda: self._client.scard(self._src(mx_source_id))))

    def heartbeat(self, beat: Beat) -> Heartbeat:
        load = "" if beat.source_load is None else repr(float(beat.source_load))
        result = self._call(
            "heartbeat",
            lambda: self._heartbeat(
                keys=[self._key(beat.mx_source_id, beat.worker_id), self._rev(), self._beats()],
                args=[
                    str(beat.worker_rank),
                    str(beat.status),
                    str(beat.updated_at_ms),
                    load,
                    f"{beat.mx_source_id}:{beat.worker_id}",
                    beat.instance,
                ],
            ),
        )
        outcomes = {1: Heartbeat.OK, 0: Heartbeat.MISSING, -2: Heartbeat.SUPERSEDED}
        return outcomes.get(int(result), Heartbeat.RANK_MISMATCH)

    def compare_and_set_status(self, seen: WorkerEntry, status: int) -> bool:
        result = self._call(
            "set status",
            lambda: self._cas_status(
                keys=[self._key(seen.mx_source_id, seen.worker_id), self._rev()],
                args=[str(seen.revision), str(seen.updated_at_ms), str(status)],
            ),
        )
        return bool(result)

    def compare_and_delete(self, seen: WorkerEntry) -> bool:
        sid, wid = seen.mx_source_id, seen.worker_id
        result = self._call(
            "delete",
            lambda: self._cas_delete(
                keys=[self._key(sid, wid), self._all(), self._src(sid), self._beats()],
                args=[str(seen.revision), str(seen.updated_at_ms), f"{sid}:{wid}", wid],
            ),
        )
        return bool(result)

    def ping(self) -> None:
        self._call("ping", self._client.ping)

    def close(self) -> None:
        self._client.close()


def _connect(url: str, timeout_s: float, retry: Retry) -> redis.Redis:
    """A client of the Redis at `url`; for `redis+sentinel://`, of the primary its Sentinels name.

    Through Sentinel, every new connection asks the Sentinels where the primary is, and one to
    a primary that was demoted fails (and is retried once), so a failover needs no restart here.
    """
    options: dict[str, Any] = {"socket_timeout": timeout_s, "socket_connect_timeout": timeout_s}
    sentinel = parse_sentinel_url(url)
    if sentinel is None:
        return redis.Redis.from_url(url, retry=retry, **options)
    from redis.sentinel import Sentinel

    hosts, service, db = sentinel
    return Sentinel(hosts, sentinel_kwargs=options, **options).master_for(service, db=db, retry=retry)


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
        "listing": entry.listing,
        "instance": entry.instance,
    }


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _decode(raw: Mapping[Any, Any]) -> WorkerEntry:
    text = {k.decode(): v for k, v in raw.items()}
    load = (text.get("source_load") or b"").decode()
    return WorkerEntry(
        mx_source_id=text["mx_source_id"].decode(),
        worker_id=text["worker_id"].decode(),
        worker_rank=int(text["worker_rank"]),
        model_name=text["model_name"].decode(),
        status=int(text["status"]),
        updated_at_ms=int(text["updated_at_ms"]),
        source_load=float(load) if load else None,
        payload=text.get("payload") or b"",
        revision=int(text.get("rev") or 0),  # 0: written by a peerload that kept no revision
        listing=text.get("listing") or b"",
        instance=(text.get("instance") or b"").decode(),  # "": written by a peerload that kept none
    )
