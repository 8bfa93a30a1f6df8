"""Registry stores: name -> class (`peerload.components.STORES`), built from Settings by `make_store`."""

from __future__ import annotations

from peerload.components import STORES, resolve
from peerload.coordinator.store.base import Beat, Heartbeat, Store, WorkerEntry
from peerload.coordinator.store.memory import MemoryStore
from peerload.settings import Settings

__all__ = ["Beat", "Heartbeat", "MemoryStore", "Store", "WorkerEntry", "make_store"]


def make_store(settings: Settings) -> Store:
    """The store named by `settings.store`; each store class takes the settings it needs."""
    store_class: type[Store] = resolve(STORES, settings.store, "store")
    return store_class.from_settings(settings)
