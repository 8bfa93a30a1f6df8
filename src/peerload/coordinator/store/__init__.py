"""Registry stores: name -> class, built from Settings by `make_store`."""

from __future__ import annotations

from peerload.coordinator.store.base import Heartbeat, Store, StoreUnavailable, WorkerEntry
from peerload.coordinator.store.memory import MemoryStore
from peerload.errors import ConfigError
from peerload.settings import STORES, Settings

__all__ = ["Heartbeat", "MemoryStore", "Store", "StoreUnavailable", "WorkerEntry", "make_store"]


def make_store(settings: Settings) -> Store:
    """The store named by `settings.store` ("memory" or "redis")."""
    if settings.store == "memory":
        return MemoryStore()
    if settings.store == "redis":
        # Imported here so the redis client is only needed when chosen.
        from peerload.coordinator.store.redis import RedisStore

        return RedisStore(settings.redis_url)
    raise ConfigError(f"store {settings.store!r} is not supported; choose one of {', '.join(STORES)}")
